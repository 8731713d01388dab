"""The replica-scorer contract shared by every level (voxel, feature, segmentation, DeepSSIM, combined).

A scorer is fitted on the training images, then scores query images (synthetic, or held-out real ones for
calibration): one similarity per query (higher = more similar to its nearest training image) and the index of
that nearest training image. Thresholds never live here: they come from `calibrate` or from gates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

# A synthetic image is a replica when it beats this quantile of the held-out images' scores (their chance level).
DEFAULT_QUANTILE = 0.99


@dataclass
class ReplicaScores:
    scores: np.ndarray  # (Q,) float64, higher = more similar to the nearest training image
    nearest: np.ndarray  # (Q,) int64, index into the fitted training set
    topk_scores: np.ndarray | None = None  # (Q, k) when the scorer keeps a shortlist
    topk_index: np.ndarray | None = None  # (Q, k)


@runtime_checkable
class ReplicaScorer(Protocol):
    name: str

    def fit(self, train: np.ndarray) -> "ReplicaScorer":
        """train: (N, H, W) or (N, D, H, W) float32 in [0, 1]."""
        ...

    def score(self, queries: np.ndarray) -> ReplicaScores:
        """queries: (Q, *train shape) float32 in [0, 1]."""
        ...
