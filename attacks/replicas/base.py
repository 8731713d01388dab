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


def training_array(scorer: str, train) -> np.ndarray:
    """The training images as float32, refusing an empty set (every scorer's `fit` starts here)."""
    from audit.errors import AuditInputError

    train = np.asarray(train, dtype=np.float32)
    if len(train) == 0:
        raise AuditInputError(None, f"{scorer} scorer: the training set is empty")
    return train


def query_array(scorer: str, queries, train_shape: tuple[int, ...] | None) -> np.ndarray:
    """The queries as float32, after `fit` and of the training images' shape (every scorer's `score` starts here)."""
    from audit.errors import AuditInputError

    if train_shape is None:
        raise RuntimeError(f"{scorer} scorer: call fit(train) before score(queries)")
    queries = np.asarray(queries, dtype=np.float32)
    if tuple(queries.shape[1:]) != tuple(train_shape):
        raise AuditInputError(None, f"{scorer} scorer: query shape {queries.shape[1:]} differs from the training "
                                    f"shape {tuple(train_shape)}")
    return queries


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
