"""The holdout leak screen: holdout images that are themselves (near-)copies of training images must not set the
threshold.

The threshold of every rule is a high quantile of the holdout→train scores, so it rests on the holdout's top few
images. When the split leaks — the same patient, scan or series on both sides, or near-duplicate tiles of one
photograph — those top images are copies, and the threshold lands at a copy's score: real copies are then missed
at a calibrated false-positive rate of ~0 (held-out seed 103: skimage-retina tiles at `ncc` 0.97–0.996 against
training tiles, clean maximum 0.89; every rule's TPR at its threshold fell to 0.00–0.17).

The screen is an outlier test on each scorer's holdout scores, on the scale t = −ln(1 − score) (`match_scale`),
label-free and with no domain constant: a generalised ESD (Rosner 1983) whose model is the suite's exponential tail (`TailModel`, the same model the
combination uses). For r = 1..R, the tail is fitted on the holdout without its r largest scores and the r-th largest
gets its upper-tail probability p_r under that fit (predictive: the tail scale's estimation error integrated out,
`predictive_tail_p`); the screened images are the r* largest, r* the largest r with
p_r < α / ((n − r + 1) · S) — Bonferroni over the n − r + 1 images that could have been the r-th largest and the S
scorers screened. So on a clean holdout (every image new, tails exponential) the chance that any image is screened
is about α; fitting without the top r (not leave-one-out) keeps several duplicates from masking each other.
Screened images are left out of the nulls and the threshold, listed in replicas.json and said as a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# family-wise rate of screening an image of a clean holdout (every image new): set a priori, 2026-12-01
LEAK_ALPHA = 0.05
# at most this share of the holdout can be screened per scorer (the ESD's R): a larger leak is not an outlier but
# a split that is not a holdout, and the run says so instead of calibrating on what is left
MAX_SCREENED_FRACTION = 0.1
# the tail fit needs this many images left below the candidates
MIN_FIT = 10
# replica scores are similarities <= 1; the screen works on the distance to a perfect match (see `match_scale`)
PERFECT_MATCH_EPS = 1e-6


def match_scale(scores: np.ndarray) -> np.ndarray:
    """t = −ln(1 − x): a similarity's upper tail on the scale of its distance to a perfect match. A maximum of
    similarities bounded by 1 has a bounded (Weibull-type) upper tail, which an exponential fitted on the raw scores
    makes far too heavy near 1 (seed 103's near-duplicates at ncc 0.97–0.996 were then within chance); on t it is
    exponential-like. Scores at or above 1 − 1e-6 all map to the same t."""
    x = np.minimum(np.asarray(scores, dtype=np.float64), 1.0 - PERFECT_MATCH_EPS)
    return -np.log1p(-x)


def tail_outliers(scores: np.ndarray, alpha: float, comparisons: int = 1,
                  max_fraction: float = MAX_SCREENED_FRACTION) -> np.ndarray:
    """(n,) bool: the scores that are upper outliers under the exponential tail of the rest (generalised ESD,
    module docstring); `comparisons` further divides α (the number of scorers screened)."""
    from attacks.replicas.combined import TailModel  # the combination's tail model; combined.py imports this module

    x = np.asarray(scores, dtype=np.float64)
    n = len(x)
    out = np.zeros(n, bool)
    max_r = min(int(np.floor(max_fraction * n)), n - MIN_FIT)
    if max_r < 1:
        return out
    order = np.argsort(x, kind="stable")
    ordered = x[order]
    screened = 0
    for r in range(1, max_r + 1):
        rest, candidate = ordered[: n - r], ordered[n - r]
        if candidate <= rest[-1]:  # a tie with the rest cannot be an outlier of it
            continue
        if predictive_tail_p(TailModel.fit(rest), len(rest), candidate) < alpha / ((n - r + 1) * comparisons):
            screened = r
    out[order[n - screened:]] = screened > 0
    return out


def predictive_tail_p(model, n_fitted: int, x: float) -> float:
    """Upper-tail probability of x above the fitted tail's threshold u, with the tail scale's estimation error
    integrated out: tail_mass · (1 + (x − u) / (m β))^−m, m the number of excesses β was fitted on (the exact
    F(2, 2m) test of an exponential excess against the mean of m others). The plug-in exp(−(x − u)/β) is
    anti-conservative when m is small (a clean 30-image holdout: m = 6, three images screened)."""
    m = max(1, int(round(model.tail_mass * (n_fitted + 1))))
    excess = max(float(x) - model.u, 0.0)
    return float(model.tail_mass * (1.0 + excess / (m * model.beta)) ** -m)


@dataclass
class LeakScreen:
    """The screen's outcome on one holdout: which images, found by which scorer."""

    alpha: float = LEAK_ALPHA
    screened: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    by_scorer: dict[str, np.ndarray] = field(default_factory=dict)

    def fit(self, holdout_scores: dict[str, np.ndarray]) -> "LeakScreen":
        names = list(holdout_scores)
        n = len(np.asarray(holdout_scores[names[0]])) if names else 0
        self.by_scorer = {s: tail_outliers(match_scale(holdout_scores[s]), self.alpha, comparisons=len(names))
                          for s in names}
        self.screened = np.any([*self.by_scorer.values()], axis=0) if names else np.zeros(n, bool)
        return self

    def describe(self) -> dict:
        return {"rule": "generalised ESD on each scorer's holdout scores, on the scale -ln(1 - score), under the "
                        "exponential tail of the rest: "
                        "an image whose score no new image should reach (p < alpha / (candidates x scorers)) is a "
                        "(near-)copy of a training image, left out of the nulls and the threshold",
                "alpha": self.alpha, "max_fraction": MAX_SCREENED_FRACTION,
                "n_screened": int(self.screened.sum()),
                "by_scorer": {s: int(v.sum()) for s, v in self.by_scorer.items()}}


def screen_holdout(holdout_scores: dict[str, np.ndarray], alpha: float | None = LEAK_ALPHA) -> np.ndarray:
    """(n,) bool: holdout images screened as (near-)copies of training images (none when alpha is None)."""
    n = len(np.asarray(next(iter(holdout_scores.values()))))
    if alpha is None:
        return np.zeros(n, bool)
    return LeakScreen(alpha).fit(holdout_scores).screened
