"""Reported figures with their uncertainty, and ROC helpers (pure functions on top of scikit-learn).

Every figure the suite reports is an `Estimate`: rates carry a Wilson interval, AUC-like statistics a
stratified percentile bootstrap. Threshold convention everywhere: a sample is called positive when its score is
strictly greater than the threshold (`score > threshold`), "exceeds" in DESIGN.md's words.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from scipy.stats import norm, rankdata
from sklearn.metrics import roc_curve


@dataclass(frozen=True)
class Estimate:
    value: float
    ci_low: float
    ci_high: float
    n: int
    higher_is_better: bool
    method: str  # how the interval was made, e.g. "wilson 95%", "bootstrap 95% (1000, stratified)"

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


# --------------------------------------------------------------------------------------------- intervals


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (nan, nan) when n == 0."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside [0, n={n}]")
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # k = 0 and k = n give exactly 0 and 1 analytically; do not leave the rounding noise there
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def rate_estimate(successes: int, n: int, higher_is_better: bool = False, confidence: float = 0.95) -> Estimate:
    lo, hi = wilson_interval(int(successes), int(n), confidence)
    value = successes / n if n > 0 else float("nan")
    return Estimate(float(value), lo, hi, int(n), higher_is_better, f"wilson {confidence:.0%}")


def bootstrap_ci(statistic: Callable[..., float], *arrays: np.ndarray, n_boot: int = 1000,
                 confidence: float = 0.95, seed: int = 0, strata: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(*arrays)`, resampling rows jointly.

    `strata` (e.g. the binary labels for an AUC) keeps each stratum's size fixed in every resample, so that a
    resample never lacks a class. Resamples where the statistic is undefined (nan) are dropped.
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [np.flatnonzero(strata == s) for s in np.unique(strata)]
    values = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        values[b] = statistic(*(a[idx] for a in arrays))
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def cluster_resamples(clusters: np.ndarray, n_boot: int = 1000, seed: int = 0,
                      strata: np.ndarray | None = None) -> list[np.ndarray]:
    """Row indices of `n_boot` cluster-bootstrap resamples: clusters (e.g. patients) are drawn with replacement and
    every row of a drawn cluster enters the resample, as often as the cluster was drawn.

    `strata` is per row; a cluster's stratum is the largest value among its rows (binary labels: whether the
    patient has any positive image), and each stratum keeps its number of clusters in every resample. The same
    (clusters, seed, strata) give the same resamples, so statistics computed on them are paired."""
    clusters = np.asarray(clusters)
    if len(clusters) == 0:
        return []
    _, inverse = np.unique(clusters, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    members = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)
    if strata is None:
        groups = [np.arange(len(members))]
    else:
        strata = np.asarray(strata)
        cluster_stratum = np.array([strata[rows].max() for rows in members])
        groups = [np.flatnonzero(cluster_stratum == s) for s in np.unique(cluster_stratum)]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_boot):
        chosen = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        out.append(np.concatenate([members[c] for c in chosen]))
    return out


def percentile_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The central `confidence` interval of bootstrap values; undefined (nan) resamples are dropped."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def cluster_bootstrap_ci(statistic: Callable[..., float], *arrays: np.ndarray, clusters: np.ndarray,
                         n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
                         strata: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic(*arrays)` resampling whole clusters (`cluster_resamples`).

    Why: images of one patient are not independent (same anatomy, same labels), so resampling images pretends
    to more evidence than there is; the interval must come from resampling patients. With one row per cluster
    this is `bootstrap_ci` exactly (same draws)."""
    arrays = tuple(np.asarray(a) for a in arrays)
    resamples = cluster_resamples(clusters, n_boot, seed, strata)
    if not resamples:
        return float("nan"), float("nan")
    values = np.array([statistic(*(a[idx] for a in arrays)) for idx in resamples], dtype=np.float64)
    return percentile_interval(values, confidence)


# --------------------------------------------------------------------------------------------- ROC helpers


def _check_binary(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be equal 1-D shapes")
    return labels, scores


def has_both_classes(labels) -> bool:
    labels = np.asarray(labels).astype(bool)
    return bool(labels.any() and (~labels).any())


def roc_auc(labels, scores) -> float:
    """ROC AUC (ties count half); nan when only one class is present.

    Computed as the Mann-Whitney statistic from mid-ranks — equal to scikit-learn's `roc_auc_score` (tested) but
    without its input validation, which dominates the cost inside a 1000-resample bootstrap."""
    labels, scores = _check_binary(labels, scores)
    if not has_both_classes(labels):
        return float("nan")
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    ranks = rankdata(scores)  # average ranks: a tie between a positive and a negative counts half
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def tpr_at_fpr(labels, scores, max_fpr: float = 0.01) -> float:
    """Highest TPR reachable by a threshold whose FPR is <= max_fpr (no interpolation between ROC points,
    so the figure is attainable, as in Carlini et al.'s low-FPR reporting)."""
    labels, scores = _check_binary(labels, scores)
    if not has_both_classes(labels):
        return float("nan")
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    ok = fpr <= max_fpr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def confusion_at(labels, scores, threshold: float) -> dict[str, int]:
    labels, scores = _check_binary(labels, scores)
    pred = scores > threshold
    return {"tp": int((pred & labels).sum()), "fp": int((pred & ~labels).sum()),
            "tn": int((~pred & ~labels).sum()), "fn": int((~pred & labels).sum())}


def rates_at(labels, scores, threshold: float) -> dict[str, float]:
    """TPR, FPR, balanced accuracy, precision and F1 of the rule `score > threshold`."""
    c = confusion_at(labels, scores, threshold)
    pos, neg = c["tp"] + c["fn"], c["tn"] + c["fp"]
    tpr = c["tp"] / pos if pos else float("nan")
    fpr = c["fp"] / neg if neg else float("nan")
    tnr = 1 - fpr if neg else float("nan")
    precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
    f1 = 2 * c["tp"] / (2 * c["tp"] + c["fp"] + c["fn"]) if (2 * c["tp"] + c["fp"] + c["fn"]) else 0.0
    return {"tpr": tpr, "fpr": fpr, "balanced_accuracy": (tpr + tnr) / 2, "precision": precision, "f1": f1}


def balanced_accuracy_at(labels, scores, threshold: float) -> float:
    return rates_at(labels, scores, threshold)["balanced_accuracy"]


def f1_at(labels, scores, threshold: float) -> float:
    return rates_at(labels, scores, threshold)["f1"]


def optimal_threshold(labels, scores) -> tuple[float, float]:
    """(threshold, balanced accuracy) maximising balanced accuracy over all `score > t` rules — the oracle
    threshold RELICT reports. Candidates are midpoints between consecutive distinct scores (and one below the
    minimum), so the rule does not depend on how ties at the threshold are broken; the smallest best
    threshold wins."""
    labels, scores = _check_binary(labels, scores)
    if not has_both_classes(labels):
        return float("nan"), float("nan")
    distinct = np.unique(scores)
    candidates = np.concatenate([[distinct[0] - 1.0], (distinct[:-1] + distinct[1:]) / 2, [distinct[-1] + 1.0]])
    # counts of positives / negatives with score > t, for every candidate t, from sorted scores
    pos_sorted, neg_sorted = np.sort(scores[labels]), np.sort(scores[~labels])
    tp = len(pos_sorted) - np.searchsorted(pos_sorted, candidates, side="right")
    fp = len(neg_sorted) - np.searchsorted(neg_sorted, candidates, side="right")
    bal = (tp / len(pos_sorted) + 1 - fp / len(neg_sorted)) / 2
    best = int(np.argmax(bal))
    return float(candidates[best]), float(bal[best])


def auc_estimate(labels, scores, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    labels, scores = _check_binary(labels, scores)
    value = roc_auc(labels, scores)
    if np.isnan(value):
        return Estimate(value, value, value, len(labels), True, "undefined: one class only")
    lo, hi = bootstrap_ci(roc_auc, labels, scores, n_boot=n_boot, confidence=confidence, seed=seed, strata=labels)
    return Estimate(value, lo, hi, len(labels), True, f"bootstrap {confidence:.0%} ({n_boot}, stratified)")


def bootstrap_estimate(statistic: Callable[..., float], *arrays: np.ndarray, higher_is_better: bool,
                       n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
                       strata: np.ndarray | None = None) -> Estimate:
    """Any statistic of paired arrays with a percentile bootstrap CI (e.g. TPR at 1% FPR, mAP)."""
    value = float(statistic(*arrays))
    lo, hi = bootstrap_ci(statistic, *arrays, n_boot=n_boot, confidence=confidence, seed=seed, strata=strata)
    tag = ", stratified" if strata is not None else ""
    return Estimate(value, lo, hi, len(np.asarray(arrays[0])), higher_is_better,
                    f"bootstrap {confidence:.0%} ({n_boot}{tag})")
