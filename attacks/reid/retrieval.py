"""Retrieval and verification figures of patient re-identification, on embeddings (pure functions).

- **mAP@R** (Musgrave et al.): for a query whose patient has R references, AP@R = (1/R)·Σ_{i≤R} P(i)·rel(i) over
  its R nearest references. The reported value comes from pytorch-metric-learning's `AccuracyCalculator` (v2
  argument order: query, query_labels, reference, reference_labels, ref_includes_query); with
  ``k="max_bin_count"`` it searches exactly as many neighbours as the largest patient holds, which gives the
  same exact mAP@R and precision@1 as ``k=None`` (tested) without a query × reference table. Queries whose patient
  has no reference ("lone") are left out by PML; callers count them and say so.
- **Per-query AP@R** (our own, from a chunked exact top-k search): the same numbers one per query, for the
  bootstrap interval and the permutation baseline; its mean equals PML's value (tested).
- **Permutation chance level**: the same queries with their patient labels shuffled among themselves, many times:
  what mAP@R a linkage-free generator would get with these queries, references and label frequencies.
- **Verification ROC AUC**: cosine of image pairs, same patient vs different patients (Packhäuser et al.'s
  verification task), from all same-patient pairs and all (or a seeded sample of) different-patient pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from audit.metrics.statistics import Estimate, auc_estimate, bootstrap_ci
from audit.search import topk_similarity

PML_METRICS = ("mean_average_precision_at_r", "precision_at_1")


def pml_retrieval(query: np.ndarray, query_labels: np.ndarray, reference: np.ndarray,
                  reference_labels: np.ndarray, ref_includes_query: bool, batch_size: int = 1024) -> dict[str, float]:
    """{mean_average_precision_at_r, precision_at_1} from PML (cosine kNN in pure torch, memory-bounded)."""
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    calculator = AccuracyCalculator(include=PML_METRICS, k="max_bin_count",
                                    knn_func=CustomKNN(CosineSimilarity(), batch_size=batch_size))
    result = calculator.get_accuracy(np.asarray(query, np.float32), np.asarray(query_labels),
                                     np.asarray(reference, np.float32), np.asarray(reference_labels),
                                     ref_includes_query)
    return {k: float(result[k]) for k in PML_METRICS}


# --------------------------------------------------------------------------------------------- per query


def neighbour_labels(query: np.ndarray, reference: np.ndarray, reference_labels: np.ndarray, k: int,
                     ref_includes_query: bool) -> np.ndarray:
    """(Q, k) labels of each query's k most similar references (cosine, ties by reference index), excluding
    the query itself when the references start with the queries (`ref_includes_query`)."""
    reference_labels = np.asarray(reference_labels)
    extra = 1 if ref_includes_query else 0
    k_search = min(k + extra, len(reference))
    _, index = topk_similarity(query, reference, k=k_search, metric="cosine")
    if ref_includes_query:
        own = np.arange(len(query))[:, None]
        keep = index != own
        # each row drops its own index once (or its last column when it was not among the k + 1)
        drop_last = keep.all(axis=1)
        keep[drop_last, -1] = False
        index = index[keep].reshape(len(query), k_search - 1)
    return reference_labels[index[:, :k]]


def ap_at_r_from_neighbours(knn_labels: np.ndarray, query_labels: np.ndarray, relevant_counts: np.ndarray
                            ) -> np.ndarray:
    """AP@R per query from its neighbours' labels (Q, K) and its R (= relevant_counts, Q); nan where R = 0
    (a lone query). K must be ≥ max R."""
    knn_labels = np.asarray(knn_labels)
    r = np.asarray(relevant_counts, dtype=np.int64)
    q, k = knn_labels.shape
    if q and r.max(initial=0) > k:
        raise ValueError(f"AP@R needs at least R = {r.max()} neighbours per query, got {k}")
    ranks = np.arange(1, k + 1)
    within_r = ranks[None, :] <= r[:, None]
    relevant = (knn_labels == np.asarray(query_labels)[:, None]) & within_r
    precision = np.cumsum(relevant, axis=1) / ranks[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = (precision * relevant).sum(axis=1) / r
    return np.where(r > 0, ap, np.nan)


def relevant_counts(query_labels: np.ndarray, reference_labels: np.ndarray, ref_includes_query: bool) -> np.ndarray:
    """R of every query: references sharing its label (minus itself when the references include the queries)."""
    labels, counts = np.unique(np.asarray(reference_labels), return_counts=True)
    lookup = dict(zip(labels.tolist(), counts.tolist()))
    r = np.array([lookup.get(label, 0) for label in np.asarray(query_labels).tolist()], dtype=np.int64)
    return np.maximum(r - int(ref_includes_query), 0)


@dataclass
class RetrievalResult:
    """Per-query AP@R and hit@1 of the labelled, non-lone queries, with the search kept for permutations."""

    ap_at_r: np.ndarray  # (n_used,)
    hit_at_1: np.ndarray  # (n_used,) bool
    knn_labels: np.ndarray  # (n_used, K) labels of the K nearest references, K = the largest class
    query_labels: np.ndarray  # (n_used,)
    reference_labels: np.ndarray
    ref_includes_query: bool
    n_lone: int  # labelled queries whose label has no reference

    @property
    def map_at_r(self) -> float:
        return float(self.ap_at_r.mean()) if len(self.ap_at_r) else float("nan")


def retrieval(query: np.ndarray, query_labels: np.ndarray, reference: np.ndarray, reference_labels: np.ndarray,
              ref_includes_query: bool) -> RetrievalResult:
    query_labels = np.asarray(query_labels)
    reference_labels = np.asarray(reference_labels)
    r = relevant_counts(query_labels, reference_labels, ref_includes_query)
    used = r > 0
    _, class_sizes = np.unique(reference_labels, return_counts=True)
    k = max(1, int(class_sizes.max()) - int(ref_includes_query))
    if ref_includes_query:
        # the self-exclusion needs the query's own index: search with every query, keep the used ones after
        knn = neighbour_labels(query, reference, reference_labels, k, True)[used]
    else:
        knn = neighbour_labels(np.asarray(query)[used], reference, reference_labels, k, False)
    ap = ap_at_r_from_neighbours(knn, query_labels[used], r[used])
    return RetrievalResult(ap_at_r=ap, hit_at_1=knn[:, 0] == query_labels[used] if len(knn) else np.zeros(0, bool),
                           knn_labels=knn, query_labels=query_labels[used], reference_labels=reference_labels,
                           ref_includes_query=ref_includes_query, n_lone=int((~used).sum()))


def mean_estimate(values: np.ndarray, method_name: str, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Mean of per-query values with a percentile bootstrap CI over queries."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, True, "undefined: no usable query")
    lo, hi = bootstrap_ci(np.mean, values, n_boot=n_boot, seed=seed)
    return Estimate(float(values.mean()), lo, hi, len(values), True, f"{method_name}; bootstrap 95% over queries "
                                                                     f"({n_boot})")


# --------------------------------------------------------------------------------------------- permutation chance


def permutation_chance(result: RetrievalResult, n_permutations: int = 1000, seed: int = 0) -> np.ndarray:
    """mAP@R of the same queries and neighbours with the query labels permuted among the queries, once per
    permutation (n_permutations,). R follows the permuted label, so it is exact AP@R every time (the neighbour
    lists reach the largest class)."""
    rng = np.random.default_rng(seed)
    labels = result.query_labels
    if len(labels) == 0:
        return np.full(n_permutations, np.nan)
    values = np.empty(n_permutations)
    for b in range(n_permutations):
        permuted = labels[rng.permutation(len(labels))]
        r = relevant_counts(permuted, result.reference_labels, result.ref_includes_query)
        values[b] = np.nanmean(ap_at_r_from_neighbours(result.knn_labels, permuted, r))
    return values


def chance_estimate(values: np.ndarray, observed: float) -> tuple[Estimate, float]:
    """(mean with the central 95% of the permutation values, one-sided p of observing `observed` or more)."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = (float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))) if len(values) else (np.nan,) * 2
    p = float((1 + np.sum(values >= observed - 1e-12)) / (1 + len(values))) if np.isfinite(observed) else float("nan")
    return Estimate(float(np.mean(values)), lo, hi, len(values), False,
                    f"permutation of query patient labels ({len(values)}): mean, central 95%"), p


# --------------------------------------------------------------------------------------------- verification


def verification_pairs(embeddings: np.ndarray, labels: np.ndarray, max_negative_pairs: int = 200_000,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(cosine, same_patient) of every same-patient pair and of every (or a seeded uniform sample of
    `max_negative_pairs`) different-patient pair of distinct images."""
    x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    x = torch.nn.functional.normalize(x, dim=1)
    labels = np.asarray(labels)
    n = len(labels)
    # same-patient pairs: few (Σ n_p²/2), enumerated per patient
    pos_i, pos_j = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        i, j = np.triu_indices(len(members), k=1)
        pos_i.append(members[i])
        pos_j.append(members[j])
    pos_i, pos_j = np.concatenate(pos_i), np.concatenate(pos_j)
    n_negative = n * (n - 1) // 2 - len(pos_i)
    if n_negative <= max_negative_pairs:
        i, j = np.triu_indices(n, k=1)
        different = labels[i] != labels[j]
        neg_i, neg_j = i[different], j[different]
    else:
        rng = np.random.default_rng(seed)
        neg_i, neg_j = np.empty(0, np.int64), np.empty(0, np.int64)
        while len(neg_i) < max_negative_pairs:
            i, j = rng.integers(0, n, max_negative_pairs), rng.integers(0, n, max_negative_pairs)
            ok = labels[i] != labels[j]
            neg_i, neg_j = np.concatenate([neg_i, i[ok]]), np.concatenate([neg_j, j[ok]])
        neg_i, neg_j = neg_i[:max_negative_pairs], neg_j[:max_negative_pairs]
    i = torch.from_numpy(np.concatenate([pos_i, neg_i]))
    j = torch.from_numpy(np.concatenate([pos_j, neg_j]))
    scores = (x[i] * x[j]).sum(dim=1).numpy().astype(np.float64)
    same = np.concatenate([np.ones(len(pos_i), bool), np.zeros(len(neg_i), bool)])
    return scores, same


def verification_auc(embeddings: np.ndarray, labels: np.ndarray, max_negative_pairs: int = 200_000,
                     n_boot: int = 1000, seed: int = 0) -> tuple[Estimate, np.ndarray, np.ndarray]:
    """ROC AUC of same- vs different-patient pairs (stratified bootstrap over pairs), and the pairs."""
    scores, same = verification_pairs(embeddings, labels, max_negative_pairs, seed)
    return auc_estimate(same, scores, n_boot=n_boot, seed=seed), scores, same
