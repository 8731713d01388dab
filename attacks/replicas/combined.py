"""The combined replica decision score: one number from several scorers, calibrated like each of them.

The default rule is ``level_gate`` (`LocalGateCombiner` with the as-is level): levels, each its own gate, with
``tail_p`` below as the whole-image level. ``tail_p``: every scorer's score x is turned into an upper-tail probability under its own
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

from attacks.replicas.screen import LEAK_ALPHA, LeakScreen
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
PRIMARY_SCORERS = ("ncc_reg", "ncc_reg_coarse")
PRIMARY_WEIGHT = 0.5
# with both scales of the registration listed, each gets this weight (the others share the rest): chosen among
# 0.5/(1/6 each other), 0.35/0.15, 0.4/0.1 and equal weights on the held-out tuning split (seed 201, 2D)
MULTISCALE_WEIGHT = 0.4


def scorer_weights(names: list[str], primary_weight: float | None = PRIMARY_WEIGHT) -> dict[str, float]:
    """Weighted-Bonferroni weights (summing to 1): the first of PRIMARY_SCORERS present gets `primary_weight`,
    the others share the rest equally; when both registration scales (`ncc_reg`, `ncc_reg_coarse`) are listed,
    each gets MULTISCALE_WEIGHT instead. Without a primary scorer (or with one scorer, or primary_weight None)
    all weights are equal."""
    primaries = [p for p in PRIMARY_SCORERS if p in names] if primary_weight is not None else []
    if not primaries or len(names) == 1:
        return {n: 1.0 / len(names) for n in names}
    if len(primaries) == 1:
        chosen = {primaries[0]: primary_weight}
    else:
        each = MULTISCALE_WEIGHT if len(names) > len(primaries) else 1.0 / len(primaries)
        chosen = {p: each for p in primaries}
    others = [n for n in names if n not in chosen]
    rest = (1.0 - sum(chosen.values())) / len(others) if others else 0.0
    return {n: chosen.get(n, rest) for n in names}


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


# scorers that look at a region, not the whole image: the local gate below treats them as a level of their own
LOCAL_SCORERS = ("ncc_local",)
LOCAL_SHARE = 0.5
# a holdout image whose local score reaches this holds a region identical to a training region (detail NCC of a
# whole window: chance matches of new images stayed below 0.90 on the tuning data): it is not a new image, and
# calibrating on it would set the threshold at a perfect copy's score
OVERLAP_NCC = 0.999


@dataclass
class LocalGateCombiner:
    """Two levels, each its own gate: flag when the whole-image combination (``tail_p`` over the whole-image
    scorers) or the local scorer (``ncc_local``) is improbably high under its own holdout null.

    Each level's score is turned into −log10 p under that level's holdout distribution (the same tail model as one
    scorer's), plus log10(G · w_level) with G the number of levels and w the level's share of the false-positive
    budget (weighted Bonferroni: the local level gets `local_share`, the whole-image level the rest); the combined
    score is the maximum, thresholded like any score at the q-quantile of the holdout's own combined scores — so
    the budget split is Bonferroni-style and the overall rate is calibrated jointly on the holdout.

    Why: inside one weighted maximum over every scorer, the local scorer got 1/6 of the weight (ncc_reg 1/2) and
    a perfect partial copy (ncc_local = 1.000) stayed below the combined threshold (held-out seed 101: 1.85 <
    2.51); the partial copies it alone finds were lost. As its own level it competes with one whole-image
    statistic, not with each whole-image scorer's chance peaks. Without a local scorer (or with only local
    scorers) this is exactly ``tail_p``.

    ``level_gate`` (the default since 2026-12-01) adds the *as-is* levels: a whole-image scorer without any search
    (``ncc``) is also a level of its own when a registration scorer is in the whole-image level, every level with
    the same share. Why: the registration's pose search raises its null (a new image also aligns to some training
    image), and inside the whole-image level ``ncc`` had weight 0.1; a memorising generator's copies that are not
    moved but degraded (noise, blur) are seen by ``ncc`` and hardly by the registration, and were lost (memq-64:
    ``ncc`` alone 84 %, ``local_gate`` 44 %). Chosen on the tuning data (held-out seed 201, memq-64) by a criterion
    written down first (docs/replicas.md, the split log). Since session 5 ``ncc_fm`` (pose-estimating, 2D) is such a
    level too when listed (the default set): inside the whole-image level its finds on rotated, magnified and far
    shifted copies stayed below the threshold (seed 103: rotate_large TPR at the threshold 0.07 -> 0.88 as a level)."""

    name: str = "combined"
    primary_weight: float | None = PRIMARY_WEIGHT
    local_share: float | None = LOCAL_SHARE  # None: every level the same share
    local_scorers: tuple[str, ...] = LOCAL_SCORERS
    # whole-image scorers that are also a level of their own when a registration scorer is in the whole level
    # (`level_gate`); none for `local_gate`
    as_is_scorers: tuple[str, ...] = ()
    order: list[str] = field(default_factory=list)  # the fitted scorer order (decisive indices refer to it)
    whole: TailPCombiner | None = None
    whole_model: TailModel | None = None
    local_models: dict[str, TailModel] = field(default_factory=dict)
    as_is_models: dict[str, TailModel] = field(default_factory=dict)
    level_weights: dict[str, float] = field(default_factory=dict)
    overlap_ncc: float | None = OVERLAP_NCC
    holdout_kept: np.ndarray | None = None  # (H,) bool: holdout images the null and the threshold rest on
    # the leak screen (attacks/replicas/screen.py): holdout images that are outliers of some scorer's null, i.e.
    # (near-)copies of training images; None: off
    leak_alpha: float | None = LEAK_ALPHA
    screen: LeakScreen | None = None

    def fit(self, holdout_scores: dict[str, np.ndarray]) -> "LocalGateCombiner":
        if not holdout_scores:
            raise ValueError("the combination needs at least one scorer")
        self.order = list(holdout_scores)
        local = [s for s in self.order if s in self.local_scorers]
        whole = [s for s in self.order if s not in self.local_scorers]
        n = len(next(iter(holdout_scores.values())))
        self.holdout_kept = np.ones(n, bool)
        # holdout images sharing an identical region with a training image (the same scan in two files,
        # neighbouring frames of one series, a leak between the splits), or whose score on some scorer no new
        # image should reach (the leak screen), are not new images: left out of every null and of the
        # threshold, and reported
        self.screen = None if self.leak_alpha is None else LeakScreen(self.leak_alpha).fit(holdout_scores)
        left_out = self.overlaps_training(holdout_scores) | self.screened_rows(n)
        if left_out.sum() < n - 1:
            self.holdout_kept = ~left_out
        holdout_scores = {s: np.asarray(v)[self.holdout_kept] for s, v in holdout_scores.items()}
        registered = any(p in whole for p in PRIMARY_SCORERS)
        as_is = [s for s in whole if s in self.as_is_scorers] if registered else []
        if not (local or as_is) or not whole:  # one level only: the plain tail_p rule
            self.whole = TailPCombiner(primary_weight=self.primary_weight).fit(holdout_scores)
            self.whole_model, self.local_models, self.as_is_models, self.level_weights = None, {}, {}, {}
            return self
        self.whole = TailPCombiner(primary_weight=self.primary_weight).fit({s: holdout_scores[s] for s in whole})
        self.whole_model = TailModel.fit(self.whole.combine({s: holdout_scores[s] for s in whole})[0])
        self.as_is_models = {s: TailModel.fit(holdout_scores[s]) for s in as_is}
        self.local_models = {s: TailModel.fit(holdout_scores[s]) for s in local}
        self.level_weights = level_shares(["whole", *as_is], local, self.local_share)
        return self

    def overlaps_training(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        """(N,) bool: images whose local score reaches `overlap_ncc` — a region identical to a training image
        (none without a listed local scorer or with the rule off)."""
        n = len(next(iter(scores.values())))
        local = [s for s in scores if s in self.local_scorers]
        if self.overlap_ncc is None or not local:
            return np.zeros(n, bool)
        return np.any([np.asarray(scores[s]) >= self.overlap_ncc for s in local], axis=0)

    def screened_rows(self, n: int) -> np.ndarray:
        """(n,) bool: the fitted holdout's images the leak screen found (none with the screen off)."""
        return np.zeros(n, bool) if self.screen is None else np.asarray(self.screen.screened, bool)

    @property
    def gated(self) -> bool:
        return self.whole_model is not None

    def level_statistics(self, scores: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """({level: −log10 p + log10(G w)}, decisive scorer of the whole-image level as an index into `order`)."""
        missing = set(self.order) - set(scores)
        if missing:
            raise ValueError(f"scores lack the fitted scorer(s) {sorted(missing)}")
        whole_names = self.whole.scorers
        whole_score, whole_decisive = self.whole.combine({s: scores[s] for s in whole_names})
        whole_decisive = np.array([self.order.index(s) for s in whole_names])[whole_decisive]
        g = len(self.level_weights)
        stats = {"whole": self.whole_model.neg_log10_p(whole_score) + math.log10(g * self.level_weights["whole"])}
        for s, model in self.level_models().items():
            stats[s] = model.neg_log10_p(scores[s]) + math.log10(g * self.level_weights[s])
        return stats, whole_decisive

    def level_models(self) -> dict[str, TailModel]:
        """The levels of one scorer each (as-is, then local), by scorer name."""
        return {**self.as_is_models, **self.local_models}

    def combine(self, scores: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(combined score (Q,), index into the fitted scorer order of the scorer that decided (Q,)): the
        whole-image level's decisive scorer, or the local scorer when its level reaches the maximum."""
        if not self.gated:
            return self.whole.combine(scores)
        stats, whole_decisive = self.level_statistics(scores)
        levels = list(stats)
        stacked = np.stack([stats[level] for level in levels], axis=1)
        winner = np.argmax(stacked, axis=1)  # ties: the whole-image level
        level_scorer = np.array([-1] + [self.order.index(s) for s in levels[1:]])
        decisive = np.where(winner == 0, whole_decisive, level_scorer[winner])
        return stacked[np.arange(len(stacked)), winner], decisive

    def level_of(self, scorer: str) -> str:
        """The level a decisive scorer belongs to: 'local' or 'whole'."""
        return "local" if self.gated and scorer in self.local_models else "whole"

    def level_thresholds(self, threshold: float) -> dict[str, float]:
        """The combined threshold on each level's own scale: the whole-image tail_p score, and the local scorer's
        NCC, above which that level alone raises the flag (the −log10 p above u is the exponential tail, inverted
        exactly; at or below u the empirical p is a step function, and the smallest holdout value whose step
        exceeds the threshold is given)."""
        if not self.gated:
            return {}
        g = len(self.level_weights)
        out = {}
        for level, model in (("whole", self.whole_model), *self.level_models().items()):
            target = threshold - math.log10(g * self.level_weights[level])  # −log10 p must exceed this
            out[level] = invert_neg_log10_p(model, target)
        return out

    @property
    def scorers(self) -> list[str]:
        return list(self.order)

    def describe(self) -> dict:
        screen = self.screen.describe() if self.screen is not None else {"rule": "off"}
        if not self.gated:
            return {**self.whole.describe(), "holdout_leak_screen": screen,
                    "local_gate": "not applied (the local and whole-image levels are not both listed)"}
        overlap = {"rule": f"holdout images with a local score >= {self.overlap_ncc} hold a region identical to a "
                           "training image: left out of the nulls and the threshold",
                   "n_left_out": int((~self.holdout_kept).sum()) if self.holdout_kept is not None else 0}
        return {"combination": "level_gate" if self.as_is_models else "local_gate", "holdout_overlap": overlap,
                "holdout_leak_screen": screen,
                "definition": "max over levels of -log10 p + log10(G w): level 'whole' = the tail_p combination of "
                              "the whole-image scorers, p under the holdout's own tail_p scores; each as-is scorer "
                              "(listed with a registration scorer) and each local scorer a level of its own; w = "
                              "the level's share of the false-positive budget; threshold = q-quantile of the "
                              "holdout's combined scores (joint calibration)",
                "level_weights": dict(self.level_weights),
                "whole": self.whole.describe(),
                "as_is_levels": list(self.as_is_models),
                "tail": {level: {"u": m.u, "beta": m.beta, "tail_mass": m.tail_mass, "n": len(m.sorted_null)}
                         for level, m in (("whole", self.whole_model), *self.level_models().items())}}


def level_shares(whole_levels: list[str], local_levels: list[str], local_share: float | None) -> dict[str, float]:
    """Each level's share of the false-positive budget (summing to 1): the same for every level when
    `local_share` is None, else `local_share` split among the local levels and the rest among the others."""
    if local_share is None or not local_levels or not whole_levels:
        levels = [*whole_levels, *local_levels]
        return {level: 1.0 / len(levels) for level in levels}
    return {**{level: (1.0 - local_share) / len(whole_levels) for level in whole_levels},
            **{level: local_share / len(local_levels) for level in local_levels}}


def calibration_rows(combiner, n: int) -> np.ndarray:
    """(n,) bool: the holdout rows a fitted combiner's threshold rests on (all, unless it left some out)."""
    kept = getattr(combiner, "holdout_kept", None)
    return np.ones(n, bool) if kept is None else np.asarray(kept, bool)


def invert_neg_log10_p(model: TailModel, target: float) -> float:
    """The smallest score x (of the model's scale) with −log10 p(x) > target: in the exponential tail exactly,
    below it the first holdout value whose empirical −log10 p exceeds the target (+∞ when none does)."""
    # exponential part: tail_mass · exp(−(x − u)/β) = 10^−target
    x = model.u + model.beta * math.log(model.tail_mass * 10.0 ** target)
    if x > model.u:
        return float(x)
    values = model.neg_log10_p(model.sorted_null)
    above = np.flatnonzero(values > target)
    return float(model.sorted_null[above[0]]) if len(above) else math.inf


class LocalGateParams(Params):
    primary_weight: float | None = Field(PRIMARY_WEIGHT, gt=0, lt=1,
                                         description="ncc_reg's weight inside the whole-image level")
    local_share: float = Field(LOCAL_SHARE, gt=0, lt=1,
                               description="the local level's share of the false-positive budget")
    overlap_ncc: float | None = Field(OVERLAP_NCC, gt=0, le=1,
                                      description="holdout images whose local score reaches this are left out of "
                                                  "the calibration (None: keep every holdout image)")
    leak_alpha: float | None = Field(LEAK_ALPHA, gt=0, lt=1,
                                     description="the holdout leak screen's family-wise rate on a clean holdout "
                                                 "(None: no screen)")


def local_gate_combination(params: LocalGateParams, runtime: Runtime) -> LocalGateCombiner:
    return LocalGateCombiner(primary_weight=params.primary_weight, local_share=params.local_share,
                             overlap_ncc=params.overlap_ncc, leak_alpha=params.leak_alpha)


local_gate_combination.Params = LocalGateParams

# the whole-image scorers that are also levels of their own in `level_gate` (beside a registration scorer): `ncc`,
# the one without any search (its null is the lowest: the as-is level); `ncc_fm`, whose poses are estimated, not
# searched on a grid, so the copies it alone finds (rotations, magnifications, large shifts beyond the grid) are not
# diluted by the registration scorers' lifted nulls inside the whole-image level (session 5: chosen on held-out
# seeds 201 + 103 and memq-64 by the criterion in docs/replicas.md's split log)
AS_IS_SCORERS = ("ncc", "ncc_fm")


class LevelGateParams(LocalGateParams):
    """`local_gate`'s parameters, with the as-is levels and equal shares by default."""

    as_is: list[str] = Field(list(AS_IS_SCORERS),
                             description="whole-image scorers that are also a level of their own when a "
                                         "registration scorer is listed (those listed: the as-is ncc, the "
                                         "pose-estimating ncc_fm)")
    local_share: float | None = Field(None, gt=0, lt=1,
                                      description="the local level's share of the false-positive budget (None: "
                                                  "every level the same share)")


def level_gate_combination(params: LevelGateParams, runtime: Runtime) -> LocalGateCombiner:
    return LocalGateCombiner(primary_weight=params.primary_weight, local_share=params.local_share,
                             as_is_scorers=tuple(params.as_is), overlap_ncc=params.overlap_ncc,
                             leak_alpha=params.leak_alpha)


level_gate_combination.Params = LevelGateParams


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
COMBINATIONS.register("level_gate", level_gate_combination,
                      "the whole-image tail_p level, the as-is ncc and ncc_fm levels (beside a registration "
                      "scorer) and the local level, each its own gate, equal shares (the default)")
COMBINATIONS.register("local_gate", local_gate_combination,
                      "the whole-image tail_p level or the local level, each its own gate (the default of "
                      "2026-11-30 evening)")
COMBINATIONS.register("tail_p", tail_p_combination, "weighted max of -log10 tail p-values over every scorer")
COMBINATIONS.register("max_z", max_z_combination, "max of z-scores (the first definition, for comparison)")
DEFAULT_COMBINATION = "level_gate"


def make_combiner(name: str = DEFAULT_COMBINATION, options: dict | None = None):
    """A fresh, unfitted combiner of the rule `name`."""
    return COMBINATIONS.create(name, options)
