"""Every figure of the re-identification stage, from embeddings (no images, no files: the testable core).

Inputs: the attacker's embeddings of the training references (with patients), of held-out real images (with
patients none of which is a training patient) and of the synthetic images (each with the patient of its
`source_id`, or None). Figures (names fixed, gates refer to them as ``reid/<name>``):

- sanity — does the attacker recognise patients it never saw? On the held-out images, queries = references
  (`ref_includes_query`): ``sanity/map_at_r``, ``sanity/precision_at_1``, ``sanity/verification_auc``;
- (a) ``map_at_r``: synthetic queries against the training references, labelled with their source patient;
  ``map_at_r_chance``: the same with the query labels permuted (value = permutation mean, CI = its central 95 %);
- (b) ``rate_at_fpr_1pct`` / ``rate_at_fpr_0.1pct``: share of synthetic images linked at a 1:N false-link rate of
  1 % / 0.1 %; ``control/rate_at_fpr_*``: the same for held-out real images (leave-one-patient-out calibration);
  ``risk_at_fpr_*``: (rate − control)/(1 − control). See `attacks.reid.linkage` for the calibration.

The retrieval figures (sanity mAP@R / precision@1 and (a)) use the attacker's retrieval post-processing
(`attacks.reid.expansion`: database-side augmentation of the gallery, average query expansion of the queries;
`EvaluationParams.database_augmentation` / `query_expansion`); the sanity mAP@R without it is kept in the
details. The verification AUC (1:1 pairs) and the rate (b) use the plain cosine: on the tuning split query
expansion pulled unseen patients' queries toward the gallery as much as a returning patient's, and lost most of
the open-set identification power the 1:N threshold needs (see docs/reid.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from pydantic import Field

from attacks.reid.expansion import database_augmentation, query_expansion
from attacks.reid.linkage import BestMatches, LinkageAtFpr, best_matches, linkage_at, pairwise_threshold
from attacks.reid.retrieval import (chance_estimate, mean_estimate, permutation_chance, pml_retrieval, retrieval,
                                    verification_auc)
from audit.errors import AuditInputError
from audit.metrics.statistics import Estimate, rate_estimate
from audit.registry import Params

# 1:N false-link rates of the figures and their name suffixes (fixed: gates refer to them)
FPRS = {0.01: "1pct", 0.001: "0.1pct"}
LINK_FPR = 0.01  # the rate at which `is_linked` / flagged_ids are decided


class EvaluationParams(Params):
    n_permutations: int = Field(1000, ge=10)  # label permutations of the chance level
    n_boot: int = Field(1000, ge=10)  # bootstrap resamples of every CI
    max_negative_pairs: int = Field(200_000, ge=100)  # different-patient pairs of the verification AUC
    gallery_pairs: int = Field(8, ge=1)  # linked pairs shown in the gallery
    # retrieval post-processing of the mAP@R figures (0 = off): each gallery image averaged with its k nearest
    # gallery images, then each query with its k nearest (expanded) gallery images
    database_augmentation: int = Field(2, ge=0)
    query_expansion: int = Field(1, ge=0)
    expansion_alpha: float = Field(1.0, ge=0)  # neighbour weight = cosine^alpha (0: plain average, ties)
    # below this held-out sanity mAP@R the result carries a warning: the attacker is weak on this data, so its
    # privacy figures are a lower bound (the target for a working attacker is 0.9; docs/reid.md)
    weak_attacker_map_at_r: float = Field(0.9, ge=0, le=1)


@dataclass
class ReidEvaluation:
    figures: dict[str, Estimate]
    details: dict[str, Any]
    synthetic_best: BestMatches  # per synthetic image: best training match (score, index)
    holdout_best: BestMatches
    linkage: dict[float, LinkageAtFpr]
    pair_scores: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    pair_same: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, bool))

    @property
    def linked(self) -> np.ndarray:
        """(S,) synthetic images linked to a training patient at the 1 % threshold."""
        return self.linkage[LINK_FPR].linked

    @property
    def threshold(self) -> float:
        return self.linkage[LINK_FPR].threshold


def label_codes(*label_lists: Sequence[str | None]) -> list[np.ndarray]:
    """Patient names → integer codes shared across the lists (PML needs numbers); None → -1."""
    index: dict[str, int] = {}
    out = []
    for labels in label_lists:
        out.append(np.array([-1 if p is None else index.setdefault(p, len(index)) for p in labels], dtype=np.int64))
    return out


def check_disjoint_patients(train_patients: Sequence[str], holdout_patients: Sequence[str], where: str = "holdout"
                            ) -> None:
    shared = set(train_patients) & set(holdout_patients)
    if shared:
        raise AuditInputError(where, f"{len(shared)} held-out patient(s) are also training patients; the held-out "
                                     f"set must hold other patients (the control and the calibration assume it)")


def expansion_depths(gallery_labels: np.ndarray, params: EvaluationParams) -> tuple[int, int]:
    """(database-side k, query k), each at most the typical number of *other* images a patient has in the
    gallery (median images per patient − 1): with two scans per patient (3D) a second neighbour is always
    another patient. An adversary knows how many images per patient their gallery holds."""
    _, counts = np.unique(np.asarray(gallery_labels), return_counts=True)
    partners = max(int(np.median(counts)) - 1, 0) if len(counts) else 0
    return min(params.database_augmentation, partners), min(params.query_expansion, partners)


def expanded_retrieval_sets(query_emb: np.ndarray, gallery_emb: np.ndarray, gallery_labels: np.ndarray,
                            params: EvaluationParams, queries_are_gallery: bool = False
                            ) -> tuple[np.ndarray, np.ndarray]:
    """(queries, gallery) after the attacker's post-processing: the gallery augmented with its own neighbours,
    the queries expanded with theirs in that gallery (depths from `expansion_depths`). When the queries *are*
    the gallery (the sanity set), every image is expanded with its neighbours among the others and the expanded
    set serves as both (PML's `ref_includes_query` needs queries = references). With both k = 0: the
    embeddings as they are."""
    alpha = params.expansion_alpha
    k_database, k_query = expansion_depths(gallery_labels, params)
    gallery = database_augmentation(gallery_emb, k_database, alpha)
    if queries_are_gallery:
        expanded = query_expansion(gallery, gallery, k_query, exclude_self=True, alpha=alpha)
        return expanded, expanded
    return query_expansion(query_emb, gallery, k_query, alpha=alpha), gallery


def expansion_note(gallery_labels: np.ndarray, params: EvaluationParams) -> str:
    k_database, k_query = expansion_depths(gallery_labels, params)
    if k_database == 0 and k_query == 0:
        return "plain cosine"
    return (f"database-side augmentation k={k_database}, query expansion k={k_query}, neighbour weights "
            f"cosine^{params.expansion_alpha:g}")


def sanity_figures(holdout_emb: np.ndarray, holdout_codes: np.ndarray, params: EvaluationParams, seed: int,
                   ) -> tuple[dict[str, Estimate], dict[str, Any], np.ndarray, np.ndarray]:
    query, gallery = expanded_retrieval_sets(holdout_emb, holdout_emb, holdout_codes, params,
                                             queries_are_gallery=True)
    pml = pml_retrieval(query, holdout_codes, gallery, holdout_codes, ref_includes_query=True)
    own = retrieval(query, holdout_codes, gallery, holdout_codes, ref_includes_query=True)
    plain = retrieval(holdout_emb, holdout_codes, holdout_emb, holdout_codes, ref_includes_query=True)
    method = (f"PML AccuracyCalculator mAP@R, held-out patients (queries = references; "
              f"{expansion_note(holdout_codes, params)})")
    map_r = mean_estimate(own.ap_at_r, method, n_boot=params.n_boot, seed=seed)
    p1 = rate_estimate(int(own.hit_at_1.sum()), len(own.hit_at_1), higher_is_better=True)
    auc, pair_scores, pair_same = verification_auc(holdout_emb, holdout_codes, params.max_negative_pairs,
                                                   n_boot=params.n_boot, seed=seed)
    figures = {
        "sanity/map_at_r": _with_value(map_r, pml["mean_average_precision_at_r"]),
        "sanity/precision_at_1": _with_value(p1, pml["precision_at_1"]),
        "sanity/verification_auc": auc,
    }
    details = {"n_images": len(holdout_codes), "n_patients": int(len(np.unique(holdout_codes))),
               "n_lone_queries": own.n_lone, "n_same_patient_pairs": int(pair_same.sum()),
               "n_different_patient_pairs": int((~pair_same).sum()),
               "pml_vs_own_map_at_r": [pml["mean_average_precision_at_r"], own.map_at_r],
               "retrieval": expansion_note(holdout_codes, params),
               "map_at_r_plain_cosine": plain.map_at_r,
               "precision_at_1_plain_cosine": float(plain.hit_at_1.mean()) if len(plain.hit_at_1) else float("nan")}
    return figures, details, pair_scores, pair_same


def attacker_warnings(sanity_map_at_r: float, level: float) -> list[str]:
    """The plain-language warnings a result carries about its attacker (empty when it is strong enough): a weak
    attacker links few synthetic images whatever the generator did, so low rates then say little."""
    if np.isfinite(sanity_map_at_r) and sanity_map_at_r >= level:
        return []
    shown = f"{sanity_map_at_r:.3f}" if np.isfinite(sanity_map_at_r) else "not measurable"
    return [f"the attacker is weak on this data (held-out sanity mAP@R {shown} < {level:g}): its privacy "
            f"figures are a lower bound — a stronger attacker (more training patients, longer training, "
            f"attacker.weights) may link more synthetic images"]


def _with_value(estimate: Estimate, value: float) -> Estimate:
    """The PML value as the figure, with the interval computed from our per-query values. Both means agree
    (tested) except where similarities tie to float precision — an untrained network, or expanded embeddings of
    near-duplicates — which PML's search and ours may order differently; the difference is then stated in the
    method, never hidden."""
    method = estimate.method
    if np.isfinite(estimate.value) and abs(estimate.value - value) > 1e-6:
        method += (f"; the interval's per-query mean {estimate.value:.4f} differs from PML's value: tied "
                   f"similarities ordered differently")
    return Estimate(float(value), estimate.ci_low, estimate.ci_high, estimate.n, estimate.higher_is_better, method)


def synthetic_map_figures(synthetic_emb: np.ndarray, synthetic_codes: np.ndarray, train_emb: np.ndarray,
                          train_codes: np.ndarray, params: EvaluationParams, seed: int
                          ) -> tuple[dict[str, Estimate], dict[str, Any]]:
    labelled = synthetic_codes >= 0
    details: dict[str, Any] = {"n_queries": len(synthetic_codes), "n_without_label": int((~labelled).sum())}
    undefined = Estimate(float("nan"), float("nan"), float("nan"), 0, False,
                         "undefined: no synthetic image carries the source_id of a training record")
    if not labelled.any():
        details["n_lone_queries"] = 0
        return {"map_at_r": undefined, "map_at_r_chance": undefined}, details
    query, train_emb = expanded_retrieval_sets(synthetic_emb[labelled], train_emb, train_codes, params)
    codes = synthetic_codes[labelled]
    details["retrieval"] = expansion_note(train_codes, params)
    own = retrieval(query, codes, train_emb, train_codes, ref_includes_query=False)
    details["n_lone_queries"] = own.n_lone
    details["n_used"] = len(own.ap_at_r)
    if len(own.ap_at_r) == 0:
        return {"map_at_r": undefined, "map_at_r_chance": undefined}, details
    pml = pml_retrieval(query, codes, train_emb, train_codes, ref_includes_query=False)
    method = (f"PML AccuracyCalculator mAP@R, synthetic queries labelled with their source patient vs training "
              f"({expansion_note(train_codes, params)})")
    observed = mean_estimate(own.ap_at_r, method, n_boot=params.n_boot, seed=seed)
    observed = _with_value(Estimate(observed.value, observed.ci_low, observed.ci_high, observed.n, False,
                                    observed.method), pml["mean_average_precision_at_r"])
    chance, p_value = chance_estimate(permutation_chance(own, params.n_permutations, seed), observed.value)
    details["p_value_above_chance"] = p_value
    details["precision_at_1"] = pml["precision_at_1"]
    return {"map_at_r": observed, "map_at_r_chance": chance}, details


def evaluate_embeddings(train_emb: np.ndarray, train_patients: Sequence[str], holdout_emb: np.ndarray,
                        holdout_patients: Sequence[str], synthetic_emb: np.ndarray,
                        synthetic_patients: Sequence[str | None], params: EvaluationParams | None = None,
                        seed: int = 0) -> ReidEvaluation:
    """All figures of the stage. `synthetic_patients[i]` is the training patient of synthetic image i's
    source_id, or None when it has none (counted, never dropped silently)."""
    params = params or EvaluationParams()
    check_disjoint_patients(train_patients, holdout_patients)
    if len(holdout_emb) == 0 or len(synthetic_emb) == 0 or len(train_emb) == 0:
        raise AuditInputError(None, "re-identification needs training, held-out and synthetic images")
    train_codes, holdout_codes, synthetic_codes = label_codes(train_patients, holdout_patients, synthetic_patients)

    figures, sanity_details, pair_scores, pair_same = sanity_figures(holdout_emb, holdout_codes, params, seed)
    map_figures, map_details = synthetic_map_figures(synthetic_emb, synthetic_codes, train_emb, train_codes,
                                                     params, seed)
    figures.update(map_figures)

    synthetic_best = best_matches(synthetic_emb, train_emb)
    holdout_best = best_matches(holdout_emb, train_emb)
    linkage: dict[float, LinkageAtFpr] = {}
    rate_details: dict[str, Any] = {}
    negatives = pair_scores[~pair_same]
    for fpr, suffix in FPRS.items():
        result = linkage_at(synthetic_best.score, holdout_best.score, holdout_codes, fpr, n_boot=params.n_boot,
                            seed=seed)
        linkage[fpr] = result
        figures[f"rate_at_fpr_{suffix}"] = result.rate
        figures[f"control/rate_at_fpr_{suffix}"] = result.control
        figures[f"risk_at_fpr_{suffix}"] = result.risk
        rate_details[suffix] = result.details()
        if len(negatives):
            # the pitfall, shown: a pairwise (1:1) threshold applied to the best of N training matches
            pair_thr = pairwise_threshold(negatives, fpr)
            rate_details[suffix]["pairwise_threshold"] = {
                "threshold": pair_thr,
                "synthetic_rate": float((synthetic_best.score > pair_thr).mean()),
                "control_rate": float((holdout_best.score > pair_thr).mean()),
                "note": "threshold at a pairwise false-match rate, applied to the best of N training images: "
                        "exceeded by about 1 - (1 - fpr)^N of unseen patients; not used for the figures"}
    if np.isfinite(figures["map_at_r"].value):
        # how often the best match is the source patient (linked or not): the identification view of (a)
        labelled = synthetic_codes >= 0
        nearest_codes = train_codes[synthetic_best.index]
        map_details["best_match_is_source_patient"] = float((nearest_codes[labelled] == synthetic_codes[labelled])
                                                            .mean())
    warnings = attacker_warnings(figures["sanity/map_at_r"].value, params.weak_attacker_map_at_r)
    sanity_details["weak_attacker"] = bool(warnings)
    sanity_details["weak_attacker_below"] = params.weak_attacker_map_at_r
    details = {
        "warnings": warnings,
        "sanity": sanity_details, "synthetic_map": map_details, "linkage": rate_details,
        "n_train_images": len(train_codes), "n_train_patients": int(len(np.unique(train_codes))),
        "n_holdout_images": len(holdout_codes), "n_synthetic_images": len(synthetic_codes),
        "best_match_scores": {
            "synthetic": _summary(synthetic_best.score), "holdout": _summary(holdout_best.score)},
        "parameters": params.model_dump(mode="json"),
    }
    return ReidEvaluation(figures=figures, details=details, synthetic_best=synthetic_best, holdout_best=holdout_best,
                          linkage=linkage, pair_scores=pair_scores, pair_same=pair_same)


def _summary(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return {"n": 0}
    return {"n": len(values), "mean": float(values.mean()), "median": float(np.median(values)),
            "min": float(values.min()), "max": float(values.max())}
