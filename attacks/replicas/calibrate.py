"""Calibration of replica scores without labels, and evaluation against expert labels when there are some.

Without labels: the holdout→train scores (held-out real images, never seen by the generator, searched against
the training set exactly like the synthetic ones) are the null distribution — the similarity a genuinely new
image reaches by chance. The threshold is that distribution's q-quantile (default 0.99, numpy's linear
interpolation); a synthetic image is a replica when its score exceeds it (`score > threshold`), so about 1 − q of
genuinely new images would be flagged. The flagged share is reported with a Wilson interval.

With labels (`file,is_replica` CSV, RELICT protocol): ROC AUC (bootstrap CI), balanced accuracy at the optimal
(oracle) threshold — RELICT's figure — and at the calibrated threshold, F1 at both — DeepSSIM's figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from attacks.replicas.base import DEFAULT_QUANTILE
from audit.data.csvio import read_csv_rows
from audit.errors import AuditInputError
from audit.metrics.statistics import (Estimate, auc_estimate, has_both_classes, optimal_threshold, rate_estimate,
                                      rates_at, tpr_at_fpr)

TRUE_WORDS = {"true", "1", "yes", "y", "replica"}
FALSE_WORDS = {"false", "0", "no", "n", "novel", ""}


def check_quantile(quantile: float) -> float:
    if not 0.0 < quantile < 1.0:
        raise AuditInputError(None, f"--quantile must be strictly between 0 and 1, got {quantile}")
    return float(quantile)


def calibrated_threshold(null_scores: np.ndarray, quantile: float = DEFAULT_QUANTILE) -> float:
    """The q-quantile of the null (holdout→train) scores."""
    null_scores = np.asarray(null_scores, dtype=np.float64)
    if null_scores.size == 0:
        raise AuditInputError(None, "calibration needs at least one holdout image")
    return float(np.quantile(null_scores, check_quantile(quantile)))


def flagged_share(scores: np.ndarray, threshold: float) -> Estimate:
    """Share of `scores > threshold`, Wilson CI (lower is better: fewer replicas)."""
    scores = np.asarray(scores, dtype=np.float64)
    return rate_estimate(int((scores > threshold).sum()), int(scores.size), higher_is_better=False)


@dataclass(frozen=True)
class Calibration:
    """One scorer's calibration: its null, threshold and the resulting flagged shares."""

    scorer: str
    quantile: float
    threshold: float
    null_n: int
    null_mean: float
    null_std: float
    null_max: float
    synthetic_flagged: Estimate
    holdout_flagged: Estimate  # in-sample, ≈ 1 − q by construction; a sanity check, not a result

    def to_dict(self) -> dict:
        return {"quantile": self.quantile, "threshold": self.threshold,
                "holdout_null": {"n": self.null_n, "mean": self.null_mean, "std": self.null_std,
                                 "max": self.null_max},
                "synthetic_flagged": self.synthetic_flagged.to_dict(),
                "holdout_flagged": self.holdout_flagged.to_dict()}


def calibrate(scorer: str, holdout_scores: np.ndarray, synthetic_scores: np.ndarray,
              quantile: float = DEFAULT_QUANTILE) -> Calibration:
    holdout_scores = np.asarray(holdout_scores, dtype=np.float64)
    threshold = calibrated_threshold(holdout_scores, quantile)
    return Calibration(scorer=scorer, quantile=quantile, threshold=threshold, null_n=int(holdout_scores.size),
                       null_mean=float(holdout_scores.mean()), null_std=float(holdout_scores.std()),
                       null_max=float(holdout_scores.max()),
                       synthetic_flagged=flagged_share(synthetic_scores, threshold),
                       holdout_flagged=flagged_share(holdout_scores, threshold))


def label_metrics(labels: np.ndarray, scores: np.ndarray, calibrated: float, n_boot: int = 1000,
                  seed: int = 0) -> dict:
    """RELICT / DeepSSIM figures of one score against expert labels (True = replica)."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    out: dict = {"n_labelled": int(labels.size), "n_replica": int(labels.sum())}
    at_calibrated = rates_at(labels, scores, calibrated)
    out["calibrated"] = {"threshold": calibrated, **at_calibrated}
    if not has_both_classes(labels):
        out["note"] = "labels hold one class only: AUC and the optimal threshold are undefined"
        return out
    thr, bal = optimal_threshold(labels, scores)
    out["auc"] = auc_estimate(labels, scores, n_boot=n_boot, seed=seed).to_dict()
    out["tpr_at_1pct_fpr"] = tpr_at_fpr(labels, scores, 0.01)
    out["optimal"] = {"threshold": thr, **rates_at(labels, scores, thr)}
    return out


def read_labels_csv(path: str | Path, known_files: list[str]) -> dict[str, bool]:
    """`file,is_replica` → {file: bool}. Files are names relative to the synthetic folder; unknown names,
    unreadable values and missing columns are input errors naming the CSV."""
    path = Path(path)
    rows = read_csv_rows(path, "labels CSV", required=("file", "is_replica"))
    known = set(known_files)
    labels: dict[str, bool] = {}
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        name, value = row["file"], row["is_replica"].lower()
        if name not in known:
            raise AuditInputError(path, f"line {line}: '{name}' is not an image of the synthetic folder")
        if value in TRUE_WORDS:
            labels[name] = True
        elif value in FALSE_WORDS:
            labels[name] = False
        else:
            raise AuditInputError(path, f"line {line}: is_replica must be true/false, got '{row['is_replica']}'")
    return labels
