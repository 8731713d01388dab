"""The combined replica decision score: one number from several scorers, calibrated like each of them.

Definition (`max_z`): every scorer's score is standardised against its own null — the holdout→train scores —
z_s = (score_s − mean_s) / std_s, and the combined score is max_s z_s. Its threshold is the q-quantile of the
holdout images' own combined scores, exactly as for a single scorer.

Why this choice:
- each z_s is a monotone map of its scorer, so the combination ranks an image high whenever *any* level finds it
  unusually similar compared with what genuinely new images reach — a flipped copy caught only by one level is
  not diluted by the levels that miss it, as it would be in a sum (Fisher-like) combination;
- the scorers live on different scales (NCC, SSIM, cosines); z puts them on one scale defined by the null, without
  labels, and does not saturate for scores beyond the holdout's maximum, as an empirical p-value with a few
  hundred holdout images would (all clear replicas would tie at p = 1/(n+1));
- the price of the max: the null of a max is higher than each scorer's, so the calibrated threshold rises a
  little; measured in benchmarks/bench_replicas.py, not assumed.
`nearest` of the combination is the nearest training image of the scorer that reached the max.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

COMBINATION = "max_z"
# a null with (almost) no spread would turn any difference into an infinite z; floor the std at this
STD_FLOOR = 1e-6


@dataclass
class MaxZCombiner:
    """Fit on the holdout scores of every scorer, then combine any scores of the same scorers."""

    means: dict[str, float] = field(default_factory=dict)
    stds: dict[str, float] = field(default_factory=dict)
    name: str = "combined"

    def fit(self, holdout_scores: dict[str, np.ndarray]) -> "MaxZCombiner":
        if not holdout_scores:
            raise ValueError("the combination needs at least one scorer")
        for scorer, values in holdout_scores.items():
            values = np.asarray(values, dtype=np.float64)
            self.means[scorer] = float(values.mean())
            self.stds[scorer] = max(float(values.std()), STD_FLOOR)
        return self

    def standardise(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = set(self.means) - set(scores)
        if missing:
            raise ValueError(f"scores lack the fitted scorer(s) {sorted(missing)}")
        return {s: (np.asarray(scores[s], dtype=np.float64) - self.means[s]) / self.stds[s] for s in self.means}

    def combine(self, scores: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(combined score (Q,), index into the fitted scorer order of the scorer reaching the max (Q,))."""
        z = self.standardise(scores)
        stacked = np.stack([z[s] for s in self.means], axis=1)
        decisive = np.argmax(stacked, axis=1)  # first scorer wins ties: the order the user listed
        return stacked[np.arange(len(stacked)), decisive], decisive

    @property
    def scorers(self) -> list[str]:
        return list(self.means)

    def describe(self) -> dict:
        return {"combination": COMBINATION, "definition": "max over scorers of (score - holdout mean) / holdout std",
                "holdout_mean": dict(self.means), "holdout_std": dict(self.stds)}
