"""Exact top-k nearest neighbours between a query set and a reference set, never the dense Q×M matrix.

Similarities:
- ``cosine``: dot product of L2-normalised rows;
- ``ncc``: normalised cross-correlation of flattened images = dot product of z-scored rows divided by d
  (population std; a constant row has NCC 0 with everything);
- ``dot``: raw inner product (for embeddings that are already normalised);
- ``l2``: negative squared Euclidean distance −|q − r|² (so that higher = more similar, like the others).

The torch backend walks query chunks × reference chunks and keeps a running top-k per query, so memory is
O(chunk_queries × chunk_references) whatever Q and M are. Results are exact and deterministic: among equal
scores the smaller reference index ranks first, independently of the chunk sizes. The optional faiss backend
(`pip install synth-audit[faiss]`) uses an exact flat inner-product index.
"""

from __future__ import annotations

import numpy as np
import torch

METRICS = ("cosine", "ncc", "dot", "l2")
BACKENDS = ("torch", "faiss")


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def normalise_rows(x: torch.Tensor, metric: str) -> torch.Tensor:
    """Rows prepared so that the similarity is a plain dot product (float32)."""
    x = x.reshape(x.shape[0], -1).to(torch.float32)
    if metric in ("dot", "l2"):
        return x
    if metric == "ncc":
        from audit.metrics.similarity import zscore

        # dividing by sqrt(d) here makes the dot product equal to mean(z_q * z_r), i.e. NCC
        return zscore(x, 1, scale=float(np.sqrt(x.shape[1])))
    if metric == "cosine":
        norm = x.norm(dim=1, keepdim=True)
        return torch.where(norm > 0, x / norm.clamp_min(1e-30), torch.zeros_like(x))
    raise ValueError(f"unknown metric '{metric}' (known: {', '.join(METRICS)})")


def _order_by_score_then_index(scores: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by score descending, ties by index ascending (two stable sorts)."""
    by_index = torch.argsort(index, dim=1, stable=True)
    scores, index = scores.gather(1, by_index), index.gather(1, by_index)
    by_score = torch.argsort(scores, dim=1, descending=True, stable=True)
    return scores.gather(1, by_score), index.gather(1, by_score)


def chunk_topk(sims: torch.Tensor, k: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of one (cq, cm) block, ordered by (score desc, index asc); indices shifted by `offset`."""
    cq, cm = sims.shape
    if cm <= k:
        index = torch.arange(cm, device=sims.device).expand(cq, cm)
        scores, index = _order_by_score_then_index(sims, index)
        return scores, index + offset
    # topk's choice among values tied at the k-th place is unspecified; asking for k+1 tells which rows have
    # such a tie, and only those rows take the (slower) stable full sort.
    values, index = torch.topk(sims, k + 1, dim=1, largest=True, sorted=True)
    tied = values[:, k - 1] == values[:, k]
    values, index = values[:, :k].contiguous(), index[:, :k].contiguous()
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        order = torch.argsort(sims[rows], dim=1, descending=True, stable=True)[:, :k]
        index[rows] = order
        values[rows] = sims[rows].gather(1, order)
    values, index = _order_by_score_then_index(values, index)
    return values, index + offset


def merge_topk(best_scores: torch.Tensor | None, best_index: torch.Tensor | None,
               new_scores: torch.Tensor, new_index: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two per-row top lists, both ordered by (score desc, index asc), where every index of the running
    list is smaller than every new index: a stable sort of the concatenation keeps the tie order."""
    if best_scores is None:
        return new_scores[:, :k], new_index[:, :k]
    scores = torch.cat([best_scores, new_scores], dim=1)
    index = torch.cat([best_index, new_index], dim=1)
    order = torch.argsort(scores, dim=1, descending=True, stable=True)[:, :k]
    return scores.gather(1, order), index.gather(1, order)


def _as_tensor(x, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


@torch.no_grad()
def topk_similarity(queries, references, k: int = 10, metric: str = "cosine", *, chunk_queries: int = 1024,
                    chunk_references: int = 16384, device: str | torch.device = "cpu",
                    backend: str = "torch", progress: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar references of every query.

    queries (Q, ...) and references (M, ...) are flattened per row. Returns (scores (Q, k') float32,
    indices (Q, k') int64) with k' = min(k, M), each row ordered by score descending then index ascending.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}' (known: {', '.join(METRICS)})")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}' (known: {', '.join(BACKENDS)})")
    if k < 1 or chunk_queries < 1 or chunk_references < 1:
        raise ValueError("k and chunk sizes must be >= 1")
    n_queries, n_refs = len(queries), len(references)
    if n_refs == 0:
        raise ValueError("the reference set is empty")
    k = min(k, n_refs)
    if backend == "faiss":
        return _faiss_topk(queries, references, k, metric)

    device = torch.device(device)
    out_scores = np.empty((n_queries, k), dtype=np.float32)
    out_index = np.empty((n_queries, k), dtype=np.int64)
    bar = None
    if progress:
        from audit.progress import progress_bar

        bar = progress_bar(total=n_queries, desc=progress)
    for q0 in range(0, n_queries, chunk_queries):
        q = normalise_rows(_as_tensor(queries[q0:q0 + chunk_queries], device), metric)
        best_scores = best_index = None
        for m0 in range(0, n_refs, chunk_references):
            # normalising per chunk costs O(cm·d) against the O(cq·cm·d) product: negligible, and it keeps
            # memory bounded by the chunk even when the caller's references are a memory-mapped array
            r = normalise_rows(_as_tensor(references[m0:m0 + chunk_references], device), metric)
            if r.shape[1] != q.shape[1]:
                raise ValueError(f"queries have {q.shape[1]} features, references {r.shape[1]}")
            sims = q @ r.T
            if metric == "l2":  # −|q − r|² = 2 q·r − |q|² − |r|², from the same product
                sims = 2 * sims - q.pow(2).sum(1, keepdim=True) - r.pow(2).sum(1).unsqueeze(0)
            s, i = chunk_topk(sims, k, m0)
            best_scores, best_index = merge_topk(best_scores, best_index, s, i, k)
        out_scores[q0:q0 + len(q)] = best_scores.cpu().numpy()
        out_index[q0:q0 + len(q)] = best_index.cpu().numpy()
        if bar is not None:
            bar.update(len(q))
    if bar is not None:
        bar.close()
    return out_scores, out_index


def _faiss_topk(queries, references, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact search with a faiss flat index (inner product, or L2 for ``l2``) on rows prepared like the torch
    backend."""
    try:
        import faiss
    except ImportError:
        raise ImportError("backend 'faiss' needs faiss-cpu: pip install 'synth-audit[faiss]'") from None
    q = normalise_rows(torch.as_tensor(np.asarray(queries)), metric).numpy()
    r = normalise_rows(torch.as_tensor(np.asarray(references)), metric).numpy()
    index = faiss.IndexFlatL2(r.shape[1]) if metric == "l2" else faiss.IndexFlatIP(r.shape[1])
    index.add(np.ascontiguousarray(r))
    scores, idx = index.search(np.ascontiguousarray(q), k)
    if metric == "l2":
        scores = -scores  # faiss returns squared distances
    s, i = _order_by_score_then_index(torch.from_numpy(scores), torch.from_numpy(idx))
    return s.numpy(), i.numpy()
