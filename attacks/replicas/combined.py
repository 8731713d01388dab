"""The combined replica decision score: one number from several scorers, calibrated like each of them.

Default definition (``tail_p``): every scorer's score x is turned into an upper-tail probability under its own
null — the holdout→train scores h_1..h_n — and the combined score is max_s [−log10 p_s(x) + log10(m w_s)], i.e.
the scorer that finds the image least compatible with "genuinely new" decides, with weighted-Bonferroni weights
w_s: equal (the plain maximum) unless the registration scorer ``ncc_reg`` is present, which then gets w = 0.5
(see `scorer_weights`). Its threshold is the q-quantile of the holdout
images' own combined scores, exactly as for a single scorer.

    p_s(x) = (1 + #{h ≥ x}) / (n + 1)                  for x ≤ u   (empirical, smoothed: never 0)
    p_s(x) = (m / (n + 1)) · exp(−(x − u) / β)          for x > u   (exponential tail)

with u the score above which the top m = max(5, 20%) holdout scores lie and β the mean of their excesses over u
(the maximum-likelihood exponential fit, "peaks over threshold"). Why:
- a replica score is a *maximum* of similarities over the training set, so its null's upper tail is Gumbel-like,
  i.e. exponential: the fit extrapolates beyond the holdout's largest value instead of saturating (a plain
  empirical p-value gives every clear replica the same p = 1/(n+1));
- the tail scale β is measured on the top of each null, not on its bulk: a scorer whose null has a long upper
  tail (e.g. SSIM on images with large flat backgrounds) gets a wide β and cannot dominate the maximum with its
  outliers. The first version of this module used z-scores (mean/std of the whole null) — ``max_z``, kept for
  comparison; on the benchmark its maximum was driven by such outliers and lost low-FPR sensitivity that the best
  single scorer had (benchmarks/bench_replicas.py reports both);
- the max keeps a copy that only one level detects (a sum would dilute it with the levels that miss it).
`nearest` of the combination is the nearest training image of the scorer that reached the max.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from pydantic import Field

from audit.registry import NoParams, Params, Registry, Runtime

# a null with (almost) no spread would turn any difference into an infinite statistic; floor the scale here
SCALE_FLOOR = 1e-6
TAIL_FRACTION = 0.2
MIN_TAIL = 5


@dataclass(frozen=True)
class TailModel:
    """One scorer's null: sorted holdout scores + the exponential model of their top."""

    sorted_null: np.ndarray
    u: float  # tail threshold
    beta: float  # mean excess of the tail over u
    tail_mass: float  # m / (n + 1)

    @classmethod
    def fit(cls, null_scores: np.ndarray) -> "TailModel":
        h = np.sort(np.asarray(null_scores, dtype=np.float64))
        n = len(h)
        if n == 0:
            raise ValueError("the null needs at least one holdout score")
        m = min(n, max(MIN_TAIL, int(math.ceil(TAIL_FRACTION * n))))
        # u: the largest value below the m largest ones (with a null of <= m values, its minimum)
        u = float(h[n - m - 1]) if n > m else float(h[0])
        excess = h[n - m:] - u
        beta = max(float(excess.mean()), SCALE_FLOOR)
        return cls(h, u, beta, m / (n + 1))

    def neg_log10_p(self, scores: np.ndarray) -> np.ndarray:
        x = np.asarray(scores, dtype=np.float64)
        n = len(self.sorted_null)
        at_least = n - np.searchsorted(self.sorted_null, x, side="left")  # #{h >= x}
        empirical = (1 + at_least) / (n + 1)
        tail = self.tail_mass * np.exp(-(np.maximum(x, self.u) - self.u) / self.beta)  # only used above u
        p = np.where(x > self.u, tail, empirical)
        return -np.log10(p)


# scorers whose search contains the others' (ncc_reg: rotations × scales × shifts, so plain, shift and zoom NCC
# are among its poses) get a fixed share of the weight in the weighted maximum below
PRIMARY_SCORERS = ("ncc_reg",)
PRIMARY_WEIGHT = 0.5


def scorer_weights(names: list[str], primary_weight: float | None = PRIMARY_WEIGHT) -> dict[str, float]:
    """Weighted-Bonferroni weights (summing to 1): the first of PRIMARY_SCORERS present gets `primary_weight`,
    the others share the rest equally; without a primary scorer (or with one scorer, or primary_weight None)
    all weights are equal."""
    primary = next((p for p in PRIMARY_SCORERS if p in names), None) if primary_weight is not None else None
    if primary is None or len(names) == 1:
        return {n: 1.0 / len(names) for n in names}
    rest = (1.0 - primary_weight) / (len(names) - 1)
    return {n: primary_weight if n == primary else rest for n in names}


@dataclass
class TailPCombiner:
    """Fit on the holdout scores of every scorer, then combine any scores of the same scorers.

    Weighted maximum (weighted Bonferroni): statistic_s = −log10 p_s + log10(m · w_s), combined = max_s. With
    equal weights w_s = 1/m this is the plain max of −log10 p_s; when `ncc_reg` is among the m scorers it gets
    w = 0.5 and the others (1 − 0.5)/(m − 1) each, so another level decides only when its p-value is
    (m − 1)× smaller than the registration scorer's. Weights are fixed in advance (chosen on a tuning split of the
    benchmark, seed 1, not on the reported one)."""

    models: dict[str, TailModel] = field(default_factory=dict)
    name: str = "combined"
    primary_weight: float | None = PRIMARY_WEIGHT  # None: equal weights (the plain maximum)
    weights: dict[str, float] = field(default_factory=dict)

    def fit(self, holdout_scores: dict[str, np.ndarray]) -> "TailPCombiner":
        if not holdout_scores:
            raise ValueError("the combination needs at least one scorer")
        self.models = {s: TailModel.fit(v) for s, v in holdout_scores.items()}
        self.weights = scorer_weights(list(self.models), self.primary_weight)
        return self

    def statistics(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = set(self.models) - set(scores)
        if missing:
            raise ValueError(f"scores lack the fitted scorer(s) {sorted(missing)}")
        m = len(self.models)
        return {s: model.neg_log10_p(scores[s]) + math.log10(m * self.weights[s])
                for s, model in self.models.items()}

    def combine(self, scores: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(combined score (Q,), index into the fitted scorer order of the scorer reaching the max (Q,))."""
        stats = self.statistics(scores)
        stacked = np.stack([stats[s] for s in self.models], axis=1)
        decisive = np.argmax(stacked, axis=1)  # first scorer wins ties: the order the user listed
        return stacked[np.arange(len(stacked)), decisive], decisive

    @property
    def scorers(self) -> list[str]:
        return list(self.models)

    def describe(self) -> dict:
        return {"combination": "tail_p",
                "definition": "max over scorers of -log10 p + log10(m w), p = upper-tail probability under the "
                              "scorer's holdout null (empirical, exponential tail above the top 20%), w the "
                              "scorer's weight (weighted Bonferroni)",
                "weights": dict(self.weights),
                "tail": {s: {"u": m.u, "beta": m.beta, "tail_mass": m.tail_mass, "n": len(m.sorted_null)}
                         for s, m in self.models.items()}}


@dataclass
class MaxZCombiner:
    """The first definition, kept for comparison: max over scorers of (score − holdout mean) / holdout std."""

    means: dict[str, float] = field(default_factory=dict)
    stds: dict[str, float] = field(default_factory=dict)
    name: str = "combined_max_z"

    def fit(self, holdout_scores: dict[str, np.ndarray]) -> "MaxZCombiner":
        if not holdout_scores:
            raise ValueError("the combination needs at least one scorer")
        for scorer, values in holdout_scores.items():
            values = np.asarray(values, dtype=np.float64)
            self.means[scorer] = float(values.mean())
            self.stds[scorer] = max(float(values.std()), SCALE_FLOOR)
        return self

    def combine(self, scores: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        missing = set(self.means) - set(scores)
        if missing:
            raise ValueError(f"scores lack the fitted scorer(s) {sorted(missing)}")
        stacked = np.stack([(np.asarray(scores[s], np.float64) - self.means[s]) / self.stds[s] for s in self.means],
                           axis=1)
        decisive = np.argmax(stacked, axis=1)
        return stacked[np.arange(len(stacked)), decisive], decisive

    @property
    def scorers(self) -> list[str]:
        return list(self.means)

    def describe(self) -> dict:
        return {"combination": "max_z", "definition": "max over scorers of (score - holdout mean) / holdout std",
                "holdout_mean": dict(self.means), "holdout_std": dict(self.stds)}


class TailPParams(Params):
    primary_weight: float | None = Field(PRIMARY_WEIGHT, gt=0, lt=1,
                                         description="ncc_reg's weight when listed (None: equal weights)")


def tail_p_combination(params: TailPParams, runtime: Runtime) -> TailPCombiner:
    return TailPCombiner(primary_weight=params.primary_weight)


def max_z_combination(params: NoParams, runtime: Runtime) -> MaxZCombiner:
    return MaxZCombiner()


tail_p_combination.Params = TailPParams
max_z_combination.Params = NoParams

# combination rules by name (the suite's one registry pattern)
COMBINATIONS: Registry = Registry("combination")
COMBINATIONS.register("tail_p", tail_p_combination, "weighted max of -log10 tail p-values (the default)")
COMBINATIONS.register("max_z", max_z_combination, "max of z-scores (the first definition, for comparison)")
DEFAULT_COMBINATION = "tail_p"


def make_combiner(name: str = DEFAULT_COMBINATION, options: dict | None = None):
    """A fresh, unfitted combiner of the rule `name`."""
    return COMBINATIONS.create(name, options)
