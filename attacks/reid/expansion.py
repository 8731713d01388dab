"""Retrieval post-processing of the re-identification attacker: database-side augmentation and average query
expansion (pure functions on L2-normalised embeddings).

An adversary with a gallery of patients' images does not compare raw embeddings only: the standard retrieval
trick is to replace each vector by the normalised mean of itself and its nearest neighbours — in the gallery
("database-side augmentation", Arandjelović & Zisserman 2012) and for the query against the gallery ("average
query expansion", Chum et al. 2007). It helps exactly the partners a patient-recognition network finds two hops
away: an image whose CC↔MLO partner is ranked low, but whose same-view partner (the other breast) is ranked first
and is itself close to that partner, is pulled toward the whole patient.

    gallery = database_augmentation(train_emb, k)                 # each gallery row: mean of itself + k neighbours
    queries = query_expansion(synthetic_emb, gallery, k)          # each query: mean of itself + k gallery matches

With k = 0 both are the identity. Every neighbour search is the exact chunked top-k of `audit.search`, never an
N × M table. Ties are broken by index, so the result is deterministic.
"""

from __future__ import annotations

import numpy as np

from audit.search import topk_similarity


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def query_expansion(queries: np.ndarray, gallery: np.ndarray, k: int, exclude_self: bool = False,
                    alpha: float = 1.0) -> np.ndarray:
    """Each query row → normalise(q + Σ_i max(s_i, 0)^alpha · g_i) over its k most similar gallery rows g_i
    (cosine s_i; α-weighted query expansion, Radenović et al. 2018 — alpha = 0 is Chum's plain average).
    Weights below 1 keep two mutual neighbours apart (a plain average makes them one vector, and ties make
    rankings arbitrary). `exclude_self`: the gallery starts with the queries themselves (row i of both is one
    image), which is then not its own neighbour."""
    queries = np.asarray(queries, dtype=np.float32)
    gallery = np.asarray(gallery, dtype=np.float32)
    if k <= 0 or len(queries) == 0 or len(gallery) == 0:
        return queries.copy()
    extra = 1 if exclude_self else 0
    k_search = min(k + extra, len(gallery))
    scores, index = topk_similarity(queries, gallery, k=k_search, metric="cosine")
    if exclude_self:
        keep = index != np.arange(len(queries))[:, None]
        keep[keep.all(axis=1), -1] = False  # itself was not among the k + 1: drop the last instead
        index = index[keep].reshape(len(queries), k_search - 1)
        scores = scores[keep].reshape(len(queries), k_search - 1)
    index, scores = index[:, :k], scores[:, :k].astype(np.float64)
    weights = np.maximum(scores, 0.0) ** alpha if alpha > 0 else np.ones_like(scores)
    return _normalise(queries + (weights[:, :, None] * gallery[index]).sum(axis=1))


def database_augmentation(gallery: np.ndarray, k: int, alpha: float = 1.0) -> np.ndarray:
    """Each gallery row → normalise(row + Σ of its k most similar *other* gallery rows, weighted as above)."""
    return query_expansion(gallery, gallery, k, exclude_self=True, alpha=alpha)
