"""Re-identification figures on hand-made embeddings and planted scores (no network): mAP@R against
pytorch-metric-learning, the permutation chance level against its closed form, the 1:N calibration, the
leave-one-patient-out control and the Anonymeter risk."""

from __future__ import annotations

import numpy as np
import pytest
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from attacks.reid.evaluate import FPRS, evaluate_embeddings
from attacks.reid.linkage import (anonymeter_risk, identification_threshold, leave_one_patient_out_exceeds,
                                  linkage_at, pairwise_threshold)
from attacks.reid.retrieval import (ap_at_r_from_neighbours, permutation_chance, pml_retrieval, retrieval,
                                    verification_auc)
from audit.errors import AuditInputError

METRICS = ("mean_average_precision_at_r", "precision_at_1")


def clustered(n_patients: int, sizes, dim: int = 8, spread: float = 0.8, seed: int = 0):
    """Unit embeddings around one centre per patient (varying images per patient)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_patients, dim))
    labels = np.repeat(np.arange(n_patients), sizes)
    x = centres[labels] + spread * rng.normal(size=(len(labels), dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def pml_exact(query, query_labels, reference, reference_labels, ref_includes_query):
    """PML with k=None (every reference ranked): exact by definition."""
    calc = AccuracyCalculator(include=METRICS, k=None)
    return calc.get_accuracy(query, query_labels, reference, reference_labels, ref_includes_query)


def test_map_at_r_equals_pml_queries_are_references():
    x, y = clustered(12, np.random.default_rng(1).integers(2, 7, 12))
    expected = pml_exact(x, y, x, y, True)
    ours = pml_retrieval(x, y, x, y, True)  # k="max_bin_count", CustomKNN
    own = retrieval(x, y, x, y, True)
    assert 0.2 < expected["mean_average_precision_at_r"] < 0.95  # neither trivial nor hopeless
    assert ours["mean_average_precision_at_r"] == pytest.approx(expected["mean_average_precision_at_r"], abs=1e-9)
    assert ours["precision_at_1"] == pytest.approx(expected["precision_at_1"], abs=1e-9)
    assert own.map_at_r == pytest.approx(expected["mean_average_precision_at_r"], abs=1e-9)
    assert own.hit_at_1.mean() == pytest.approx(expected["precision_at_1"], abs=1e-9)


def test_map_at_r_with_lone_queries_equals_pml():
    reference, reference_labels = clustered(8, 4, seed=2)
    rng = np.random.default_rng(3)
    query = reference[::3] + 0.3 * rng.normal(size=reference[::3].shape).astype(np.float32)
    query_labels = reference_labels[::3].copy()
    query_labels[:4] = 100 + np.arange(4)  # four queries of patients that have no reference: "lone"
    expected = pml_exact(query, query_labels, reference, reference_labels, False)
    own = retrieval(query, query_labels, reference, reference_labels, False)
    assert own.n_lone == 4 and len(own.ap_at_r) == len(query) - 4
    assert own.map_at_r == pytest.approx(expected["mean_average_precision_at_r"], abs=1e-9)
    assert pml_retrieval(query, query_labels, reference, reference_labels, False)["mean_average_precision_at_r"] \
        == pytest.approx(expected["mean_average_precision_at_r"], abs=1e-9)


def test_ap_at_r_by_hand():
    # R = 3; relevant at ranks 1 and 3 of the first 3: AP@R = (1/1 + 2/3) / 3
    ap = ap_at_r_from_neighbours(np.array([[7, 1, 7, 7], [1, 1, 1, 1]]), np.array([7, 7]), np.array([3, 0]))
    assert ap[0] == pytest.approx((1 + 2 / 3) / 3)
    assert np.isnan(ap[1])  # R = 0: a lone query has no AP@R


def expected_random_ap_at_r(r: int, m: int) -> float:
    """E[AP@R] when the R relevant references sit at random places among M (closed form)."""
    i = np.arange(1, r + 1)
    return float(np.sum(1 / i + (i - 1) * (r - 1) / (i * (m - 1))) / m)


def test_permutation_chance_on_random_embeddings_sits_at_chance():
    rng = np.random.default_rng(4)
    n_patients, per_patient = 40, 4
    reference = rng.normal(size=(n_patients * per_patient, 16)).astype(np.float32)
    reference_labels = np.repeat(np.arange(n_patients), per_patient)
    query = rng.normal(size=(120, 16)).astype(np.float32)  # no link to any reference
    query_labels = rng.integers(0, n_patients, 120)
    result = retrieval(query, query_labels, reference, reference_labels, False)
    chance = permutation_chance(result, n_permutations=400, seed=0)
    closed_form = expected_random_ap_at_r(per_patient, len(reference))
    # the permutation mean estimates the closed form (its sd over 400 permutations is tiny)
    assert chance.mean() == pytest.approx(closed_form, rel=0.08)
    # and the observed mAP@R of unlinked queries falls inside the permutation interval
    low, high = np.quantile(chance, [0.025, 0.975])
    assert low <= result.map_at_r <= high


def test_planted_link_is_far_above_chance():
    reference, reference_labels = clustered(20, 4, spread=0.3, seed=5)
    query = reference[::4] + 0.05  # one query per patient, near its own images
    result = retrieval(query, reference_labels[::4], reference, reference_labels, False)
    chance = permutation_chance(result, n_permutations=200)
    assert result.map_at_r > 0.9 and np.quantile(chance, 0.975) < 0.3


def test_verification_auc_matches_sklearn_on_all_pairs():
    from sklearn.metrics import roc_auc_score

    x, y = clustered(6, 3, seed=6)
    estimate, scores, same = verification_auc(x, y, n_boot=50)
    i, j = np.triu_indices(len(y), k=1)
    expected = roc_auc_score(y[i] == y[j], np.sum(x[i] * x[j], axis=1))
    assert len(scores) == len(i) and same.sum() == 6 * 3
    assert estimate.value == pytest.approx(expected, abs=1e-9)


# --------------------------------------------------------------------------------------------- linkage maths


def test_identification_threshold_is_the_holdout_quantile():
    scores = np.linspace(0, 1, 201)
    assert identification_threshold(scores, 0.01) == pytest.approx(np.quantile(scores, 0.99))
    assert (scores > identification_threshold(scores, 0.01)).mean() <= 0.01


def test_leave_one_patient_out_control_by_hand():
    # 10 patients, one image each, scores 0..9; at fpr 0.01 the threshold of the other nine is (almost) their
    # maximum, so only the top patient exceeds "its" threshold (8.92 from the others, linear interpolation)
    scores = np.arange(10, dtype=float)
    exceeds = leave_one_patient_out_exceeds(scores, np.arange(10), 0.01)
    assert exceeds.tolist() == [False] * 9 + [True]
    # in-sample, the same threshold would flag it too, but with two images per patient the neighbour is held out
    exceeds = leave_one_patient_out_exceeds(np.array([0., 1, 2, 3, 9, 9.5]), np.array([0, 0, 1, 1, 2, 2]), 0.01)
    assert exceeds.tolist() == [False, False, False, False, True, True]


def test_rate_control_risk_on_planted_scores():
    rng = np.random.default_rng(7)
    holdout = rng.normal(0.5, 0.05, 400)  # unseen patients: the 1:N null
    patients = np.repeat(np.arange(100), 4)
    synthetic = np.concatenate([np.full(30, 0.99), rng.normal(0.5, 0.05, 70)])  # 30 planted links
    result = linkage_at(synthetic, holdout, patients, 0.01, n_boot=300)
    threshold = np.quantile(holdout, 0.99)
    expected_rate = (synthetic > threshold).mean()
    assert result.threshold == pytest.approx(threshold)
    assert result.rate.value == pytest.approx(expected_rate) and 0.30 <= expected_rate <= 0.33
    assert result.control.value <= 0.03  # ≈ 1 % by construction, honestly measured
    assert result.risk.value == pytest.approx(anonymeter_risk(expected_rate, result.control.value))
    assert result.risk.ci_low < result.risk.value < result.risk.ci_high
    assert result.risk.ci_low > 0.2
    assert anonymeter_risk(0.5, 0.2) == pytest.approx(0.375)
    assert np.isnan(anonymeter_risk(0.5, 1.0))


def test_pairwise_threshold_on_best_of_n_flags_almost_everything():
    """The pitfall the 1:N calibration avoids: a 1 % pairwise false-match threshold is exceeded by the best of
    N unrelated pairs with probability 1 - 0.99^N."""
    rng = np.random.default_rng(8)
    n_train = 200
    pair_scores = rng.normal(size=(300, n_train))  # unseen images × training images: all different patients
    best = pair_scores.max(axis=1)
    pairwise = pairwise_threshold(rng.normal(size=100_000), 0.01)
    assert (best > pairwise).mean() == pytest.approx(1 - 0.99 ** n_train, abs=0.05)  # ≈ 0.87
    calibrated = identification_threshold(best[:150], 0.01)
    assert (best[150:] > calibrated).mean() <= 0.04


def test_evaluation_figures_names_and_counts():
    train, train_labels = clustered(10, 4, spread=0.4, seed=9)
    holdout, holdout_labels = clustered(6, 4, spread=0.4, seed=10)
    synthetic = np.concatenate([train[:5] + 0.01, holdout[:5]])
    patients = [f"t{v}" for v in train_labels[:5]] + [None] * 5
    evaluation = evaluate_embeddings(train, [f"t{v}" for v in train_labels], holdout,
                                     [f"h{v}" for v in holdout_labels], synthetic, patients, seed=0)
    names = {"sanity/map_at_r", "sanity/precision_at_1", "sanity/verification_auc", "map_at_r", "map_at_r_chance"}
    for suffix in FPRS.values():
        names |= {f"rate_at_fpr_{suffix}", f"control/rate_at_fpr_{suffix}", f"risk_at_fpr_{suffix}"}
    assert set(evaluation.figures) == names
    assert evaluation.details["synthetic_map"]["n_without_label"] == 5
    assert evaluation.figures["map_at_r"].n == 5
    assert evaluation.linked[:5].all()  # copies of training images: linked


def test_overlapping_patients_are_an_input_error():
    x, y = clustered(4, 3, seed=11)
    with pytest.raises(AuditInputError, match="also training patients"):
        evaluate_embeddings(x, [str(v) for v in y], x[:3], ["0", "0", "0"], x[:2], [None, None])


def test_weak_attacker_warning_follows_the_sanity_level():
    # planted: well separated patients (sanity mAP@R 1) vs embeddings that ignore the patient (pure noise)
    train, train_labels = clustered(10, 4, spread=0.2, seed=12)
    strong, strong_labels = clustered(6, 4, spread=0.2, seed=13)
    rng = np.random.default_rng(14)
    noise = rng.normal(size=strong.shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    train_patients = [f"t{v}" for v in train_labels]
    holdout_patients = [f"h{v}" for v in strong_labels]
    for holdout, weak in ((strong, False), (noise, True)):
        evaluation = evaluate_embeddings(train, train_patients, holdout, holdout_patients, train[:4], [None] * 4,
                                         seed=0)
        sanity = evaluation.figures["sanity/map_at_r"].value
        assert (sanity < 0.9) == weak  # the planted cases sit on either side of the default level
        assert evaluation.details["sanity"]["weak_attacker"] is weak
        assert len(evaluation.details["warnings"]) == int(weak)
    assert "lower bound" in evaluation.details["warnings"][0]


def test_attacker_warnings_at_the_level_and_for_nan():
    from attacks.reid.evaluate import attacker_warnings

    assert attacker_warnings(0.9, 0.9) == []
    assert len(attacker_warnings(0.8999, 0.9)) == 1
    assert "not measurable" in attacker_warnings(float("nan"), 0.9)[0]
