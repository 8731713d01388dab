"""Exact top-k nearest neighbours between a query set and a reference set, never the dense Q×M matrix.

Similarities:
- ``cosine``: dot product of L2-normalised rows;
- ``ncc``: normalised cross-correlation of flattened images = dot product of z-scored rows divided by d
  (population std; a constant row has NCC 0 with everything);
- ``dot``: raw inner product (for embeddings that are already normalised);
- ``l2``: negative squared Euclidean distance −|q − r|² (so that higher = more similar, like the others).

Exact search (`topk_similarity`) walks query chunks × reference chunks and keeps a running top-k per query, so
memory is O(chunk_queries × chunk_references) whatever Q and M are. The top-k of one block is computed by one of
two kernels, both exact:
- ``torch``: the block's similarity matrix and `torch.topk` (any device);
- ``faiss``: a flat (brute-force) faiss index of the reference chunk (`pip install synth-audit[faiss]`, CPU),
  whose fused matrix product + heap beat torch's top-k by 1.7x at 10^7–10^8 pairs (benchmarks/bench_scale.py);
- ``auto`` (the default): faiss on the CPU from `FAISS_MIN_PAIRS` query×reference pairs on, when faiss is
  installed; torch otherwise. Small searches — every test, every phantom run — stay on torch.
Results are deterministic: among equal scores the smaller reference index ranks first, independently of the chunk
sizes. The two kernels agree up to float rounding (they sum the products in different orders), so a near-tie
can swap, and among references tied *exactly at the k-th place* faiss may keep another one than torch.

Approximate search, for reference sets beyond exact search's patience, is chosen by name from `SEARCHES`
(`exact`, `ivf`, `hnsw`; faiss IVF-Flat / HNSW-Flat). An approximate search never reports blind: it measures its
recall@k against the exact search on a seeded sample of the run's own queries and returns it with the result
(`SearchResult.info["recall_at_k"]`, an `Estimate` with a bootstrap interval over the sampled queries), for the
caller to write into its JSON.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from audit.registry import Params, Registry, Runtime

METRICS = ("cosine", "ncc", "dot", "l2")
BACKENDS = ("auto", "torch", "faiss")
# From this many query×reference pairs on, `auto` uses the faiss kernel: above it faiss was faster at every measured
# size (bench_scale.py, d=128, k=10: 1.5–2.3x from 1.7·10^7 pairs on), below it the order flips between runs
# (0.7–2.6x at 4–8·10^6 pairs, ~0.1 s each) and torch keeps small searches free of the optional dependency.
FAISS_MIN_PAIRS = 2 ** 24
FAISS_HINT = "pip install 'synth-audit[faiss]'"


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


def choose_backend(backend: str, n_queries: int, n_refs: int, device: torch.device) -> str:
    """The kernel `backend` names; ``auto``: faiss on the CPU for large searches when it is installed."""
    if backend != "auto":
        return backend
    large = n_queries * n_refs >= FAISS_MIN_PAIRS
    return "faiss" if large and device.type == "cpu" and faiss_available() else "torch"


def import_faiss():
    """faiss, limited to torch's thread count (the suite's --threads), or an ImportError naming the extra."""
    try:
        import faiss
    except ImportError:
        raise ImportError(f"faiss is not installed: {FAISS_HINT}") from None
    faiss.omp_set_num_threads(torch.get_num_threads())
    return faiss


def faiss_block_topk(q: torch.Tensor, r: torch.Tensor, k: int, metric: str, offset: int):
    """Exact top-k of one block with a flat faiss index, ordered like `chunk_topk` (score desc, index asc)."""
    faiss = import_faiss()
    rows = np.ascontiguousarray(r.cpu().numpy())
    index = faiss.IndexFlatL2(rows.shape[1]) if metric == "l2" else faiss.IndexFlatIP(rows.shape[1])
    index.add(rows)
    scores, idx = index.search(np.ascontiguousarray(q.cpu().numpy()), min(k, len(rows)))
    if metric == "l2":
        scores = -scores  # faiss returns squared distances
    s, i = _order_by_score_then_index(torch.from_numpy(scores), torch.from_numpy(idx))
    return s.to(q.device), i.to(q.device) + offset


def torch_block_topk(q: torch.Tensor, r: torch.Tensor, k: int, metric: str, offset: int):
    sims = q @ r.T
    if metric == "l2":  # −|q − r|² = 2 q·r − |q|² − |r|², from the same product
        sims = 2 * sims - q.pow(2).sum(1, keepdim=True) - r.pow(2).sum(1).unsqueeze(0)
    return chunk_topk(sims, k, offset)


BLOCK_KERNELS = {"torch": torch_block_topk, "faiss": faiss_block_topk}


@torch.no_grad()
def topk_similarity(queries, references, k: int = 10, metric: str = "cosine", *, chunk_queries: int = 1024,
                    chunk_references: int = 16384, device: str | torch.device = "cpu",
                    backend: str = "auto", progress: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar references of every query (exact).

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
    device = torch.device(device)
    backend = choose_backend(backend, n_queries, n_refs, device)
    if backend == "faiss" and device.type != "cpu":
        raise ValueError("backend 'faiss' runs on the CPU (faiss-cpu): use backend 'torch' on other devices")
    block_topk = BLOCK_KERNELS[backend]
    if backend == "faiss":
        import_faiss()  # the missing extra is one error before any work

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
            s, i = block_topk(q, r, k, metric, m0)
            best_scores, best_index = merge_topk(best_scores, best_index, s, i, k)
        out_scores[q0:q0 + len(q)] = best_scores.cpu().numpy()
        out_index[q0:q0 + len(q)] = best_index.cpu().numpy()
        if bar is not None:
            bar.update(len(q))
    if bar is not None:
        bar.close()
    return out_scores, out_index


# --- search methods chosen by name: exact, or approximate with a measured recall ----------------------------------

@dataclass
class SearchResult:
    """Top-k of every query plus what the caller writes into its JSON: the method, its parameters, the kernel
    and, for approximate methods, the recall@k measured against exact search on the run's own queries."""

    scores: np.ndarray  # (Q, k) float32, score descending then index ascending
    index: np.ndarray  # (Q, k) int64; −1 (score −inf) where an approximate index found fewer than k
    info: dict[str, Any] = field(default_factory=dict)


SEARCHES: Registry = Registry("search")
SEARCHES.register("exact", "audit.search:ExactSearch", "exact top-k (chunked; torch, or faiss flat above "
                  "FAISS_MIN_PAIRS pairs)")
SEARCHES.register("ivf", "audit.search:IVFSearch", "faiss IVF-Flat (k-means cells, nprobe of them searched); "
                  "recall@k measured")
SEARCHES.register("hnsw", "audit.search:HNSWSearch", "faiss HNSW-Flat graph; recall@k measured")


def search_topk(queries, references, k: int = 10, metric: str = "cosine", method: str = "exact",
                options: dict | None = None, runtime: Runtime | None = None) -> SearchResult:
    """`SEARCHES.create(method, options, runtime).search(...)`: the entry point of a search chosen by name."""
    return SEARCHES.create(method, options, runtime).search(queries, references, k, metric)


class ExactSearch:
    class Params(Params):
        backend: Literal["auto", "torch", "faiss"] = "auto"
        chunk_queries: int = 1024
        chunk_references: int = 16384

    def __init__(self, params: "ExactSearch.Params", runtime: Runtime):
        self.params, self.runtime = params, runtime

    def search(self, queries, references, k: int, metric: str) -> SearchResult:
        device = torch.device(self.runtime.device)
        scores, index = topk_similarity(queries, references, k, metric, device=device, backend=self.params.backend,
                                        chunk_queries=self.params.chunk_queries,
                                        chunk_references=self.params.chunk_references)
        kernel = choose_backend(self.params.backend, len(queries), len(references), device)
        return SearchResult(scores, index, {"method": "exact", "kernel": kernel, "metric": metric,
                                            "k": int(index.shape[1]), "params": self.params.model_dump()})


class ApproximateSearch:
    """A faiss index over the prepared rows (the same normalisation as exact search), then recall@k against
    exact search on `recall_queries` queries drawn with the run's seed."""

    class Params(Params):
        recall_queries: int = 256  # queries whose exact top-k is computed to measure recall (0: all)

    def __init__(self, params, runtime: Runtime):
        self.params, self.runtime = params, runtime

    def build(self, faiss, rows: np.ndarray, metric_type: int):
        raise NotImplementedError

    def prepare_search(self, index, n_refs: int) -> None:
        """Set the search-time knobs (nprobe, efSearch)."""

    @torch.no_grad()
    def search(self, queries, references, k: int, metric: str) -> SearchResult:
        if metric not in METRICS:
            raise ValueError(f"unknown metric '{metric}' (known: {', '.join(METRICS)})")
        faiss = import_faiss()
        q = np.ascontiguousarray(normalise_rows(_as_tensor(queries, torch.device("cpu")), metric).numpy())
        r = np.ascontiguousarray(normalise_rows(_as_tensor(references, torch.device("cpu")), metric).numpy())
        if len(r) == 0:
            raise ValueError("the reference set is empty")
        if r.shape[1] != q.shape[1]:
            raise ValueError(f"queries have {q.shape[1]} features, references {r.shape[1]}")
        k = min(k, len(r))
        metric_type = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        index = self.build(faiss, r, metric_type)
        self.prepare_search(index, len(r))
        scores, idx = index.search(q, k)
        if metric == "l2":
            scores = -scores
        scores = np.where(idx < 0, -np.inf, scores).astype(np.float32)
        s, i = _order_by_score_then_index(torch.from_numpy(scores), torch.from_numpy(idx.astype(np.int64)))
        scores, idx = s.numpy(), i.numpy()
        info = {"method": self.name, "metric": metric, "k": k, "params": self.params.model_dump(),
                **self.index_facts(index, len(r)), **self.recall(queries, references, idx, k, metric)}
        return SearchResult(scores, idx, info)

    def index_facts(self, index, n_refs: int) -> dict[str, Any]:
        return {}

    def recall(self, queries, references, approximate: np.ndarray, k: int, metric: str) -> dict[str, Any]:
        """Share of the exact top-k found, per query, on a seeded sample of queries; mean with a bootstrap CI."""
        from audit.metrics.statistics import bootstrap_estimate

        n = len(approximate)
        size = n if self.params.recall_queries in (0, None) else min(n, self.params.recall_queries)
        rows = np.sort(np.random.default_rng(self.runtime.seed).choice(n, size=size, replace=False))
        _, exact = topk_similarity(np.asarray(queries)[rows], references, k, metric, backend="auto")
        per_query = np.array([len(np.intersect1d(a[a >= 0], e)) / k for a, e in zip(approximate[rows], exact)])
        estimate = bootstrap_estimate(np.mean, per_query, higher_is_better=True, seed=self.runtime.seed)
        return {"recall_at_k": estimate.to_dict(), "recall_worst_query": float(per_query.min()),
                "recall_queries": int(size)}


class IVFSearch(ApproximateSearch):
    """Inverted file: k-means cells of the references (faiss's seeded k-means), `nprobe` nearest cells searched."""

    name = "ivf"

    class Params(ApproximateSearch.Params):
        nlist: int | None = None  # cells; None: 4·sqrt(M), at most M/39 (faiss wants 39 points per centroid)
        nprobe: int = 16

    def cells(self, n_refs: int) -> int:
        return self.params.nlist or max(1, min(int(4 * np.sqrt(n_refs)), n_refs // 39))

    def build(self, faiss, rows, metric_type):
        nlist = self.cells(len(rows))
        if nlist > len(rows):
            raise ValueError(f"ivf: nlist={nlist} cells need at least as many references (got {len(rows)})")
        quantizer = (faiss.IndexFlatL2 if metric_type == faiss.METRIC_L2 else faiss.IndexFlatIP)(rows.shape[1])
        index = faiss.IndexIVFFlat(quantizer, rows.shape[1], nlist, metric_type)
        index.cp.seed = int(self.runtime.seed)
        index.train(rows)
        index.add(rows)
        return index

    def prepare_search(self, index, n_refs):
        index.nprobe = min(self.params.nprobe, index.nlist)

    def index_facts(self, index, n_refs):
        return {"nlist": int(index.nlist), "nprobe": int(index.nprobe)}


class HNSWSearch(ApproximateSearch):
    """Hierarchical navigable small-world graph. Built on one thread: faiss's parallel insertion makes the graph
    depend on scheduling, and a rerun must give the same neighbours."""

    name = "hnsw"

    class Params(ApproximateSearch.Params):
        neighbours: int = 32  # graph degree (faiss's M)
        ef_construction: int = 80
        ef_search: int = 64

    def build(self, faiss, rows, metric_type):
        index = faiss.IndexHNSWFlat(rows.shape[1], self.params.neighbours, metric_type)
        index.hnsw.efConstruction = self.params.ef_construction
        threads = torch.get_num_threads()
        faiss.omp_set_num_threads(1)
        try:
            index.add(rows)
        finally:
            faiss.omp_set_num_threads(threads)
        return index

    def prepare_search(self, index, n_refs):
        index.hnsw.efSearch = self.params.ef_search
