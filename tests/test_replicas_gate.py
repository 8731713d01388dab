"""The local gate (`local_gate`, the default of 2026-11-30 evening; the default `level_gate` is the same with the
as-is levels added, tests/test_replicas_levels.py): the whole-image level and the local level each flag on
their own, the false-positive budget split between them and the overall rate calibrated on the holdout."""

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from attacks.replicas.combined import (LocalGateCombiner, TailModel, TailPCombiner, invert_neg_log10_p,
                                       make_combiner)


def nulls(seed=5, n=300):
    rng = np.random.default_rng(seed)
    return {"ncc": rng.normal(0.6, 0.05, n), "ssim": rng.normal(0.4, 0.08, n), "ncc_reg": rng.normal(0.7, 0.04, n),
            "ncc_local": np.clip(rng.normal(0.6, 0.1, n), -1, 1)}


def test_local_gate_closed_form():
    hold = nulls()
    new = {"ncc": np.array([0.6, 0.9, 0.6]), "ssim": np.array([0.4, 0.4, 0.4]),
           "ncc_reg": np.array([0.7, 0.7, 0.7]), "ncc_local": np.array([0.98, 0.6, 0.6])}
    gate = make_combiner("local_gate").fit(hold)
    assert isinstance(gate, LocalGateCombiner) and gate.gated
    whole = TailPCombiner().fit({s: hold[s] for s in ("ncc", "ssim", "ncc_reg")})
    whole_model = TailModel.fit(whole.combine({s: hold[s] for s in ("ncc", "ssim", "ncc_reg")})[0])
    local_model = TailModel.fit(hold["ncc_local"])
    whole_new = whole.combine({s: new[s] for s in ("ncc", "ssim", "ncc_reg")})[0]
    # two levels, half the budget each: log10(2 · 0.5) = 0
    expected = np.maximum(whole_model.neg_log10_p(whole_new), local_model.neg_log10_p(new["ncc_local"]))
    combined, decisive = gate.combine(new)
    np.testing.assert_allclose(combined, expected)
    # the level that reached the maximum, then (whole-image level) its decisive scorer
    local_wins = local_model.neg_log10_p(new["ncc_local"]) > whole_model.neg_log10_p(whole_new)
    assert local_wins[:2].tolist() == [True, False]
    assert [gate.order[i] for i in decisive[:2]] == ["ncc_local", "ncc"]
    assert [gate.level_of(gate.order[i]) for i in decisive] == ["local" if w else "whole" for w in local_wins]
    assert gate.describe()["level_weights"] == {"whole": 0.5, "ncc_local": 0.5}


def test_without_both_levels_it_is_tail_p_exactly():
    hold = nulls()
    for members in (("ncc", "ssim", "ncc_reg"), ("ncc_local",)):
        sub = {s: hold[s] for s in members}
        gate, tail = make_combiner("local_gate").fit(sub), TailPCombiner().fit(sub)
        assert not gate.gated and gate.level_thresholds(2.0) == {}
        for a, b in zip(gate.combine(sub), tail.combine(sub)):
            np.testing.assert_array_equal(a, b)


def test_level_thresholds_are_where_each_level_alone_raises_the_flag():
    hold = nulls(seed=9)
    gate = make_combiner("local_gate").fit(hold)
    combined_hold, _ = gate.combine(hold)
    threshold = float(np.quantile(combined_hold, 0.99))
    local_at = gate.level_thresholds(threshold)["ncc_local"]
    quiet = {s: np.full(2, np.median(hold[s])) for s in ("ncc", "ssim", "ncc_reg")}  # whole level: nothing
    scores = {**quiet, "ncc_local": np.array([local_at - 1e-6, local_at + 1e-6])}
    flagged = gate.combine(scores)[0] > threshold
    assert flagged.tolist() == [False, True]
    # the inverse of the tail model in closed form: −log10 p(x) = target
    model = TailModel.fit(hold["ncc_local"])
    x = invert_neg_log10_p(model, 3.0)
    assert model.neg_log10_p(np.array([x]))[0] == pytest.approx(3.0)


def test_overall_false_positive_rate_is_calibrated_jointly():
    """Threshold at the holdout's 0.95-quantile of the gate's scores: about 5% of new images from the same null
    are flagged in all, not 5% per level."""
    gate = make_combiner("local_gate").fit(nulls(seed=1, n=2000))
    threshold = float(np.quantile(gate.combine(nulls(seed=1, n=2000))[0], 0.95))
    fresh = gate.combine(nulls(seed=2, n=4000))[0]
    assert abs(float(np.mean(fresh > threshold)) - 0.05) < 0.012


def textured(n, shape, seed):
    rng = np.random.default_rng(seed)
    out = np.stack([gaussian_filter(rng.random(shape), 1.0) for _ in range(n)])
    lo, hi = out.min(axis=(1, 2), keepdims=True), out.max(axis=(1, 2), keepdims=True)
    return ((out - lo) / (hi - lo)).astype(np.float32)


def test_a_pasted_region_is_flagged_by_the_local_level_that_the_whole_image_level_misses():
    """Planted: 40 training, 40 holdout images; synthetic = 4 new images each with a region of 20×20 px (10% of
    the area) of a training image pasted in, and 4 new images untouched. Real scorers (`ncc`, `ncc_local`)."""
    from attacks.replicas.pipeline import audit_arrays
    from attacks.replicas.registry import make_scorer

    train, holdout, new = textured(40, (64, 64), 31), textured(40, (64, 64), 32), textured(8, (64, 64), 33)
    synthetic = new.copy()
    for q, (src, at) in enumerate([(3, (4, 30)), (17, (40, 6)), (25, (22, 22)), (38, (0, 44))]):
        synthetic[q, at[0]:at[0] + 20, at[1]:at[1] + 20] = train[src, 10:30, 30:50]
    scorers = {n: make_scorer(n) for n in ("ncc", "ncc_local")}
    audit = audit_arrays(scorers, train, holdout, synthetic, quantile=0.95)
    assert audit.is_replica.tolist() == [True] * 4 + [False] * 4
    assert [audit.level(q) for q in range(4)] == ["local"] * 4
    assert audit.nearest[:4].tolist() == [3, 17, 25, 38]
    # the whole-image level alone (its own threshold at the same quantile) misses every pasted region
    ncc_null = audit.holdout["ncc"].scores
    assert not np.any(audit.synthetic["ncc"].scores[:4] > np.quantile(ncc_null, 0.95))
    assert set(audit.level_thresholds()) == {"whole", "ncc_local"}
    assert math.isfinite(audit.level_thresholds()["ncc_local"])


def test_holdout_images_overlapping_training_are_left_out_of_the_calibration():
    """4 of 200 holdout images share a region with a training image (local score 1.0, as when one scan sits in
    two files): calibrated on them, the threshold sits at a perfect copy's score and a pasted region is missed;
    left out (and counted), the copy is flagged while a new image is not."""
    from attacks.replicas.base import ReplicaScores
    from attacks.replicas.pipeline import assemble_audit, crossfit_flagged_share, holdout_overlap

    hold = nulls(seed=3, n=200)
    hold["ncc_local"][:4] = 1.0
    synthetic = {s: np.full(2, np.median(v)) for s, v in hold.items()}
    synthetic["ncc_local"] = np.array([1.0, np.median(hold["ncc_local"])])  # a perfect partial copy, a new image

    def wrap(scores):
        return {s: ReplicaScores(scores=v, nearest=np.zeros(len(v), np.int64)) for s, v in scores.items()}

    audit = assemble_audit(list(hold), wrap(hold), wrap(synthetic), 0.99)
    assert audit.is_replica.tolist() == [True, False] and audit.level(0) == "local"
    assert audit.calibrations["combined"].null_n == 196
    names = {"holdout": [f"h{i}.png" for i in range(200)]}
    assert holdout_overlap(audit, names) | {"rule": None} == {"n": 4, "files": ["h0.png", "h1.png", "h2.png",
                                                                                "h3.png"], "rule": None}
    keep_all = assemble_audit(list(hold), wrap(hold), wrap(synthetic), 0.99, combination="tail_p")
    assert keep_all.is_replica.tolist() == [False, False]  # the earlier rule: the overlaps set the threshold
    # the cross-fitted share counts the rule's flags on new holdout images only
    assert crossfit_flagged_share(hold, 0.99).n == 196
