"""The replica-scorer contract shared by every level (voxel, feature, segmentation, DeepSSIM, combined).

A scorer is fitted on the training images, then scores query images (synthetic, or held-out real ones for
calibration): one similarity per query (higher = more similar to its nearest training image) and the index of
that nearest training image. Thresholds never live here: they come from `calibrate` or from gates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from audit.registry import NoParams, Params, Runtime

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
    # local scorers: the matched region, (Q, 2, ndim) = (start, stop) per axis, in the query and in `nearest`
    query_box: np.ndarray | None = None
    train_box: np.ndarray | None = None

    def take(self, rows: np.ndarray | slice) -> "ReplicaScores":
        """The scores of some queries (every per-query array sliced alike)."""
        def part(x):
            return None if x is None else x[rows]

        return ReplicaScores(self.scores[rows], self.nearest[rows], part(self.topk_scores), part(self.topk_index),
                             part(self.query_box), part(self.train_box))

    @staticmethod
    def concatenate(parts: list["ReplicaScores"]) -> "ReplicaScores":
        def cat(name):
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else np.concatenate(values)

        return ReplicaScores(*(cat(n) for n in ("scores", "nearest", "topk_scores", "topk_index", "query_box",
                                                 "train_box")))


@runtime_checkable
class ReplicaScorer(Protocol):
    name: str

    def fit(self, train: np.ndarray) -> "ReplicaScorer":
        """train: (N, H, W) or (N, D, H, W) float32 in [0, 1]."""
        ...

    def score(self, queries: np.ndarray) -> ReplicaScores:
        """queries: (Q, *train shape) float32 in [0, 1]."""
        ...

    def describe(self) -> dict: ...


class ScorerBase:
    """What every registered scorer shares: declared `Params` (validated by the registry before any work), the
    `Runtime` (device, batch size, seed — never a scorer parameter, so never silently dropped), and a
    `describe()` that records everything that decides a score (parameters and resolved components).

    Scorers whose fitted state is plain arrays implement `fitted_state()` / `restore(state)`, so that `audit run`
    caches it per training set (`attacks.replicas.stage`)."""

    name = "scorer"
    level = ""
    Params: type[Params] = NoParams

    def __init__(self, params: Params | None = None, runtime: Runtime | None = None):
        self.params = params if params is not None else self.Params()
        self.runtime = runtime or Runtime()

    def components(self) -> dict[str, Any]:
        """The resolved components (after `fit` where they depend on the data)."""
        return {"level": self.level} if self.level else {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params.model_dump(mode="json"), **self.components()}

    def unsupported(self, shape: tuple[int, ...]) -> str | None:
        """Why this scorer cannot score images of `shape` (None: it can). The audit then runs without it and says
        so (`skipped_scorers` in replicas.json) instead of failing part-way."""
        return None

    @property
    def cacheable(self) -> bool:
        return type(self).fitted_state is not ScorerBase.fitted_state

    def fitted_state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"{self.name}: fitted state is not cacheable")

    def restore(self, state: dict[str, np.ndarray]) -> "ScorerBase":
        raise NotImplementedError(f"{self.name}: fitted state is not cacheable")
