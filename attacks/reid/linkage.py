"""The re-identification rate: how many synthetic images an attacker links to a training patient, against the
same rate for real images of patients who were *not* in training (the control), and the risk normalised as
Anonymeter does. Pure functions on best-match scores.

**The threshold is calibrated for 1:N identification, not for 1:1 verification.** An image is linked when its
best match among the N training images exceeds a threshold. A threshold set at a *pairwise* 1 % false-match rate
(1 % of different-patient pairs above it) is exceeded by the best of N different-patient pairs with probability
about 1 − 0.99^N — ≈ 92 % for N = 256 — so nearly every image, synthetic or real, would be "linked", the control
too, and the figure would say nothing. Instead the threshold is the (1 − fpr)-quantile of the *best-match scores
of held-out real images* against the training references (none of them is a training patient): at most a share
fpr of genuinely unseen patients is linked by it — a 1:N false-link rate. The pairwise threshold is kept as a
detail to show the difference.

**The control is never measured on its own calibration set.** Every held-out patient's images are judged against
the threshold calibrated on the *other* held-out patients (leave one patient out); a held-out image exceeds a
quantile of a set that contains it less often than a new image would, so in-sample the control would be
optimistic by construction. Synthetic images are judged against the threshold calibrated on all held-out images
(they were never part of it). With n calibration images the smallest false-link rate that can be resolved is
about 1/n: below that the quantile is the largest score seen, and the reported `n` says so.

risk = (rate − control) / (1 − control): the share of the non-control headroom the synthetic images use; 0 = no
more linkage than unseen real patients get, 1 = every image linked. Its interval is a percentile bootstrap that
resamples synthetic images and held-out *patients* independently (images of one patient are not independent).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attacks.replicas.calibrate import calibrated_threshold
from audit.metrics.statistics import Estimate, rate_estimate
from audit.search import topk_similarity


@dataclass(frozen=True)
class BestMatches:
    score: np.ndarray  # (N,) cosine to the most similar training image
    index: np.ndarray  # (N,) that image's index in the training references


def best_matches(embeddings: np.ndarray, train_embeddings: np.ndarray) -> BestMatches:
    """Best training match of every row (exact chunked search, never the full N × M table)."""
    if len(embeddings) == 0:
        return BestMatches(np.zeros(0), np.zeros(0, np.int64))
    scores, index = topk_similarity(embeddings, train_embeddings, k=1, metric="cosine")
    return BestMatches(scores[:, 0].astype(np.float64), index[:, 0].astype(np.int64))


def identification_threshold(null_scores: np.ndarray, fpr: float) -> float:
    """The (1 − fpr)-quantile of held-out best-match scores (numpy's linear interpolation, as the replica
    audit's calibration): at most a share fpr of unseen patients' images exceed it."""
    return calibrated_threshold(null_scores, 1.0 - fpr)


def leave_one_patient_out_exceeds(null_scores: np.ndarray, null_patients: np.ndarray, fpr: float) -> np.ndarray:
    """For every held-out image: does it exceed the threshold calibrated on the other patients' images?"""
    null_scores = np.asarray(null_scores, dtype=np.float64)
    null_patients = np.asarray(null_patients)
    exceeds = np.zeros(len(null_scores), dtype=bool)
    patients = np.unique(null_patients)
    if len(patients) < 2:
        raise ValueError("the control needs held-out images of at least 2 patients")
    for patient in patients:
        own = null_patients == patient
        exceeds[own] = null_scores[own] > identification_threshold(null_scores[~own], fpr)
    return exceeds


def anonymeter_risk(rate: float, control: float) -> float:
    """(rate − control) / (1 − control); nan when the control is 1 (no headroom to measure against)."""
    return (rate - control) / (1.0 - control) if control < 1.0 else float("nan")


def risk_estimate(linked: np.ndarray, control_exceeds: np.ndarray, control_patients: np.ndarray,
                  n_boot: int = 1000, seed: int = 0) -> Estimate:
    """The normalised risk with a percentile bootstrap CI: synthetic images resampled, held-out patients
    resampled as clusters, independently."""
    linked = np.asarray(linked, dtype=bool)
    control_exceeds = np.asarray(control_exceeds, dtype=bool)
    if len(linked) == 0 or len(control_exceeds) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), len(linked), False, "undefined: empty set")
    value = anonymeter_risk(linked.mean(), control_exceeds.mean())
    patients, cluster = np.unique(np.asarray(control_patients), return_inverse=True)
    per_patient_hits = np.bincount(cluster, weights=control_exceeds.astype(float), minlength=len(patients))
    per_patient_n = np.bincount(cluster, minlength=len(patients)).astype(float)
    rng = np.random.default_rng(seed)
    draws = np.empty(n_boot)
    for b in range(n_boot):
        rate = linked[rng.integers(0, len(linked), len(linked))].mean()
        chosen = rng.integers(0, len(patients), len(patients))
        control = per_patient_hits[chosen].sum() / per_patient_n[chosen].sum()
        draws[b] = anonymeter_risk(rate, control)
    draws = draws[np.isfinite(draws)]
    lo, hi = (float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))) if len(draws) else (np.nan,) * 2
    return Estimate(float(value), lo, hi, len(linked), False,
                    f"(rate - control) / (1 - control), Anonymeter; bootstrap 95% ({n_boot}; synthetic images and "
                    f"held-out patients resampled)")


@dataclass(frozen=True)
class LinkageAtFpr:
    fpr: float
    threshold: float  # calibrated on all held-out images: decides which synthetic images are linked
    linked: np.ndarray  # (S,) bool, synthetic score > threshold
    control_exceeds: np.ndarray  # (H,) bool, held-out score > its leave-one-patient-out threshold
    rate: Estimate
    control: Estimate
    risk: Estimate
    n_calibration: int

    def details(self) -> dict:
        return {"fpr": self.fpr, "threshold": self.threshold, "n_calibration": self.n_calibration,
                "resolvable_fpr": 1.0 / max(self.n_calibration, 1),
                "n_linked": int(self.linked.sum()), "n_control_exceeding": int(self.control_exceeds.sum())}


def linkage_at(synthetic_scores: np.ndarray, holdout_scores: np.ndarray, holdout_patients: np.ndarray, fpr: float,
               n_boot: int = 1000, seed: int = 0) -> LinkageAtFpr:
    """Rate, control and risk at the 1:N false-link rate `fpr` (see the module docstring)."""
    synthetic_scores = np.asarray(synthetic_scores, dtype=np.float64)
    holdout_scores = np.asarray(holdout_scores, dtype=np.float64)
    threshold = identification_threshold(holdout_scores, fpr)
    linked = synthetic_scores > threshold
    control_exceeds = leave_one_patient_out_exceeds(holdout_scores, holdout_patients, fpr)
    rate = rate_estimate(int(linked.sum()), len(linked), higher_is_better=False)
    control = rate_estimate(int(control_exceeds.sum()), len(control_exceeds), higher_is_better=False)
    control = Estimate(control.value, control.ci_low, control.ci_high, control.n, False,
                       control.method + "; leave-one-patient-out calibration")
    risk = risk_estimate(linked, control_exceeds, holdout_patients, n_boot=n_boot, seed=seed)
    return LinkageAtFpr(fpr=fpr, threshold=threshold, linked=linked, control_exceeds=control_exceeds, rate=rate,
                        control=control, risk=risk, n_calibration=len(holdout_scores))


def pairwise_threshold(negative_pair_scores: np.ndarray, fpr: float) -> float:
    """The (1 − fpr)-quantile of different-patient pair scores: a 1:1 verification threshold (detail only)."""
    return calibrated_threshold(negative_pair_scores, 1.0 - fpr)
