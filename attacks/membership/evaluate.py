"""One evaluation for every membership attack, and its control run.

Figures (each an `Estimate` with a stratified percentile bootstrap over members and non-members):
- `auc`: ROC AUC (ties count half);
- `tpr_at_fpr_1pct`, `tpr_at_fpr_0.1pct`: the highest TPR of a threshold whose FPR on the non-members is at most
  1 % / 0.1 % (attainable points, Carlini et al. 2022). With n non-members the smallest non-zero FPR is 1/n, so
  below 1/n these are the share of members scored above every non-member;
- `balanced_accuracy`: at the best threshold for these very labels (an oracle, as SecMI/PIA/SimA report it; the
  bootstrap re-optimises it per resample) — optimistic by construction;
- `control_auc`: the same scores on two disjoint random halves of the non-members, one half posing as members.
  Nothing separates them but chance, so its interval must cover 0.5 (the "data split bias" check: an attack whose
  control is off 0.5 is measuring something else than membership).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from audit.metrics.statistics import Estimate, auc_estimate, bootstrap_estimate, optimal_threshold, roc_auc
from sklearn.metrics import roc_curve

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


def control_halves(n: int, seed: int) -> np.ndarray:
    """A random half of n non-members (seeded) posing as members: boolean mask with floor(n/2) True."""
    mask = np.zeros(n, bool)
    mask[np.random.default_rng([int(seed) % (1 << 63), 23]).permutation(n)[: n // 2]] = True
    return mask


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


def control_estimate(nonmember_scores, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """AUC of one random half of the non-members (posing as members) against the other half."""
    nonmember_scores = np.asarray(nonmember_scores, np.float64)
    control = auc_estimate(control_halves(len(nonmember_scores), seed), nonmember_scores, n_boot=n_boot, seed=seed)
    return Estimate(control.value, control.ci_low, control.ci_high, control.n, False,
                    control.method + "; two halves of the non-members")


def evaluate_attack(is_member, scores, n_boot: int = 1000, seed: int = 0) -> AttackEvaluation:
    labels = np.asarray(is_member, bool)
    scores = np.asarray(scores, np.float64)
    if not np.all(np.isfinite(scores)):
        raise ValueError("attack scores must be finite")
    figures = {"auc": auc_estimate(labels, scores, n_boot=n_boot, seed=seed)}
    for name, fpr in LOW_FPRS.items():
        figures[name] = bootstrap_estimate(lambda l, s, f=fpr: tpr_at_fpr_sorted(l, s, f), labels, scores,
                                           higher_is_better=True, n_boot=n_boot, seed=seed, strata=labels)
    threshold, _ = optimal_threshold(labels, scores)
    figures["balanced_accuracy"] = bootstrap_estimate(lambda l, s: optimal_threshold(l, s)[1], labels, scores,
                                                      higher_is_better=True, n_boot=n_boot, seed=seed,
                                                      strata=labels)
    nonmember_scores = scores[~labels]
    posing = control_halves(len(nonmember_scores), seed)
    figures["control_auc"] = control = control_estimate(nonmember_scores, n_boot, seed)
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


__all__ = ["AttackEvaluation", "evaluate_attack", "best_attack", "control_halves", "roc_auc"]
