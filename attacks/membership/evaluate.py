"""One evaluation for every membership attack, and its control run.

Figures (each an `Estimate` with a percentile bootstrap 95 % CI that resamples *patients* within members and
within non-members — several views or scans of one patient have correlated scores, so resampling images would
give intervals too narrow; without patient ids every image is its own patient and this is the usual stratified
bootstrap):
- `auc`: ROC AUC (ties count half);
- `tpr_at_fpr_1pct`, `tpr_at_fpr_0.1pct`: the highest TPR of a threshold whose FPR on the non-members is at most
  1 % / 0.1 % (attainable points, Carlini et al. 2022). With n non-members the smallest non-zero FPR is 1/n, so
  below 1/n these are the share of members scored above every non-member;
- `balanced_accuracy`: at the best threshold for these very labels (an oracle, as SecMI/PIA/SimA report it; the
  bootstrap re-optimises it per resample) — optimistic by construction;
- `control_auc`: the same scores on two disjoint random halves of the non-members (split by patient), one half
  posing as members. Nothing separates them but chance, so its interval must cover 0.5 (the "data split bias"
  check: an attack whose control is off 0.5 is measuring something else than membership).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sklearn.metrics import roc_curve

from audit.metrics.statistics import Estimate, optimal_threshold, roc_auc

LOW_FPRS = {"tpr_at_fpr_1pct": 0.01, "tpr_at_fpr_0.1pct": 0.001}


@dataclass
class AttackEvaluation:
    figures: dict[str, Estimate]  # auc, tpr_at_fpr_1pct, tpr_at_fpr_0.1pct, balanced_accuracy, control_auc
    roc: tuple[np.ndarray, np.ndarray]  # (fpr, tpr) of the attack
    control_roc: tuple[np.ndarray, np.ndarray]
    threshold: float  # the oracle threshold of the balanced accuracy
    control_covers_half: bool

    def to_dict(self) -> dict:
        return {"figures": {k: v.to_dict() for k, v in self.figures.items()},
                "oracle_threshold": self.threshold, "control_covers_0.5": self.control_covers_half}


def tpr_at_fpr_sorted(labels, scores, max_fpr: float) -> float:
    """`audit.metrics.statistics.tpr_at_fpr` without building the ROC (it runs inside a 1000-resample bootstrap):
    the lowest admissible threshold is the (k+1)-th highest non-member score, k = ⌊max_fpr·n_neg⌋ false
    positives allowed; the rule is `score > threshold`. Equal to the ROC form (tested against scikit-learn)."""
    labels = np.asarray(labels, bool)
    scores = np.asarray(scores, np.float64)
    negatives = np.sort(scores[~labels])[::-1]
    positives = scores[labels]
    if len(negatives) == 0 or len(positives) == 0:
        return float("nan")
    allowed = int(np.floor(max_fpr * len(negatives) + 1e-12))
    if allowed >= len(negatives):
        return 1.0
    return float((positives > negatives[allowed]).mean())


def _group_indices(labels: np.ndarray, groups: np.ndarray) -> list[list[np.ndarray]]:
    """Per class (members, non-members), the sample indices of each patient."""
    out = []
    for cls in (True, False):
        idx = np.flatnonzero(labels == cls)
        _, inverse = np.unique(groups[idx], return_inverse=True)
        out.append([idx[inverse == g] for g in range(inverse.max() + 1)] if len(idx) else [])
    return out


def cluster_bootstrap(statistic: Callable[[np.ndarray, np.ndarray], float], labels, scores, groups=None,
                      n_boot: int = 1000, seed: int = 0, higher_is_better: bool = True,
                      confidence: float = 0.95) -> Estimate:
    """statistic(labels, scores) with a percentile interval from resampling patients (with replacement) within
    each class; `groups` None = every sample its own patient (= the stratified bootstrap)."""
    labels = np.asarray(labels, bool)
    scores = np.asarray(scores, np.float64)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    value = float(statistic(labels, scores))
    per_class = _group_indices(labels, groups)
    rng = np.random.default_rng([int(seed) % (1 << 63), 31])
    values = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([np.concatenate([clusters[i] for i in rng.integers(0, len(clusters), len(clusters))])
                              for clusters in per_class if clusters])
        values[b] = statistic(labels[idx], scores[idx])
    values = values[np.isfinite(values)]
    alpha = (1 - confidence) / 2
    lo, hi = (float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))) if len(values) else \
        (float("nan"), float("nan"))
    unit = "patients" if len(np.unique(groups)) < len(groups) else "samples"
    return Estimate(value, lo, hi, len(labels), higher_is_better,
                    f"bootstrap {confidence:.0%} ({n_boot}, {unit} resampled within members / non-members)")


def control_halves(n: int, seed: int, groups=None) -> np.ndarray:
    """A random half of n non-members (seeded) posing as members; whole patients go to one side."""
    groups = np.arange(n) if groups is None else np.asarray(groups)
    patients = np.unique(groups)
    order = np.random.default_rng([int(seed) % (1 << 63), 23]).permutation(len(patients))
    mask = np.zeros(n, bool)
    for p in patients[order]:
        if mask.sum() >= n // 2:
            break
        mask[groups == p] = True
    return mask


def control_estimate(nonmember_scores, n_boot: int = 1000, seed: int = 0, groups=None) -> Estimate:
    """AUC of one random half of the non-members (posing as members) against the other half."""
    nonmember_scores = np.asarray(nonmember_scores, np.float64)
    posing = control_halves(len(nonmember_scores), seed, groups)
    est = cluster_bootstrap(roc_auc, posing, nonmember_scores, groups, n_boot, seed)
    return Estimate(est.value, est.ci_low, est.ci_high, est.n, False, est.method + "; two halves of the non-members")


def evaluate_attack(is_member, scores, n_boot: int = 1000, seed: int = 0, groups=None) -> AttackEvaluation:
    """Every figure of one attack. `groups`: the patient of each sample (None: each sample its own)."""
    labels = np.asarray(is_member, bool)
    scores = np.asarray(scores, np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError("attack scores must be finite")
    groups = None if groups is None else np.asarray([str(g) for g in groups])
    # figures are read as privacy risks (in reports, gates and `audit compare`): a higher AUC is worse for the
    # model's members, so higher_is_better is False, as for the replica share and the re-id rate
    risk = dict(higher_is_better=False)
    figures = {"auc": cluster_bootstrap(roc_auc, labels, scores, groups, n_boot, seed, **risk)}
    for name, fpr in LOW_FPRS.items():
        figures[name] = cluster_bootstrap(lambda l, s, f=fpr: tpr_at_fpr_sorted(l, s, f), labels, scores, groups,
                                          n_boot, seed, **risk)
    threshold, _ = optimal_threshold(labels, scores)
    figures["balanced_accuracy"] = cluster_bootstrap(lambda l, s: optimal_threshold(l, s)[1], labels, scores, groups,
                                                     n_boot, seed, **risk)
    nonmember_scores = scores[~labels]
    nonmember_groups = None if groups is None else groups[~labels]
    figures["control_auc"] = control = control_estimate(nonmember_scores, n_boot, seed, nonmember_groups)
    posing = control_halves(len(nonmember_scores), seed, nonmember_groups)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    if posing.any() and (~posing).any():
        cfpr, ctpr, _ = roc_curve(posing, nonmember_scores, drop_intermediate=False)
    else:
        cfpr = ctpr = np.array([0.0, 1.0])
    covers = bool(control.ci_low <= 0.5 <= control.ci_high) if np.isfinite(control.ci_low) else False
    return AttackEvaluation(figures, (fpr, tpr), (cfpr, ctpr), float(threshold), covers)


def best_attack(evaluations: dict[str, AttackEvaluation]) -> str | None:
    """The attack with the highest AUC point value (ties: the first in order). Choosing the best of several
    after seeing their results is optimistic; the report says so."""
    best, best_auc = None, -np.inf
    for name, ev in evaluations.items():
        value = ev.figures["auc"].value
        if np.isfinite(value) and value > best_auc:
            best, best_auc = name, value
    return best
