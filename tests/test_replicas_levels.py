"""The default combination `level_gate`: the whole-image level (tail_p of ncc, ssim, ncc_reg, ncc_reg_coarse), the
as-is level (`ncc` alone, when a registration scorer is listed) and the local level (`ncc_local`), each its own gate
with a third of the false-positive budget, the overall rate calibrated on the holdout."""

import numpy as np
import pytest

from attacks.replicas.combined import (DEFAULT_COMBINATION, LocalGateCombiner, TailModel, TailPCombiner,
                                       make_combiner)

DEFAULT = ("ncc", "ssim", "ncc_reg", "ncc_reg_coarse", "ncc_local")
WHOLE = ("ncc", "ssim", "ncc_reg", "ncc_reg_coarse")


def nulls(seed=5, n=300):
    """Holdout-like scores of the five default scorers, correlated through a shared 'how alike is this image to the
    training set' factor (as the real scorers are). Similarities stay below 1 (the registration scorers' spread
    was 0.015 / 0.01 about 0.92 / 0.96 until 2026-12-01: the top of a few thousand draws passed 1, a perfect match
    no new image reaches, which the holdout leak screen rightly takes for a copy)."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=n)
    return {"ncc": 0.85 + 0.01 * (common + rng.normal(size=n)), "ssim": 0.40 + 0.05 * (common + rng.normal(size=n)),
            "ncc_reg": 0.90 + 0.01 * (common + rng.normal(size=n)),
            "ncc_reg_coarse": 0.94 + 0.007 * (common + rng.normal(size=n)),
            "ncc_local": np.clip(0.80 + 0.03 * (common + rng.normal(size=n)), -1, 1)}


def test_level_gate_is_the_default_and_its_closed_form():
    hold = nulls()
    gate = make_combiner().fit(hold)
    assert DEFAULT_COMBINATION == "level_gate" and isinstance(gate, LocalGateCombiner) and gate.gated
    assert gate.level_weights == {"whole": 1 / 3, "ncc": 1 / 3, "ncc_local": 1 / 3}
    whole = TailPCombiner().fit({s: hold[s] for s in WHOLE})
    assert whole.weights == pytest.approx({"ncc": 0.1, "ssim": 0.1, "ncc_reg": 0.4, "ncc_reg_coarse": 0.4})
    whole_model = TailModel.fit(whole.combine({s: hold[s] for s in WHOLE})[0])
    ncc_model, local_model = TailModel.fit(hold["ncc"]), TailModel.fit(hold["ncc_local"])
    new = {s: np.full(3, np.median(v)) for s, v in hold.items()}
    new["ncc"][0], new["ncc_local"][1], new["ncc_reg"][2] = 0.95, 0.999, 1.0
    # three levels with a third each: log10(3 · 1/3) = 0
    levels = np.stack([whole_model.neg_log10_p(whole.combine({s: new[s] for s in WHOLE})[0]),
                       ncc_model.neg_log10_p(new["ncc"]), local_model.neg_log10_p(new["ncc_local"])], 1)
    combined, decisive = gate.combine(new)
    np.testing.assert_allclose(combined, levels.max(1))
    assert [gate.order[i] for i in decisive] == ["ncc", "ncc_local", "ncc_reg"]
    assert [gate.level_of(gate.order[i]) for i in decisive] == ["whole", "local", "whole"]
    assert set(gate.level_thresholds(2.0)) == {"whole", "ncc", "ncc_local"}
    assert gate.describe()["combination"] == "level_gate" and gate.describe()["as_is_levels"] == ["ncc"]


def test_without_a_registration_scorer_it_is_the_earlier_rules_exactly():
    """No pose search, no as-is level: `fast` (ncc, ssim) is tail_p, (ncc, ssim, ncc_local) is local_gate; and
    `level_gate` without as-is scorers and with half the budget for the local level is local_gate."""
    hold = nulls()
    cases = [(("ncc", "ssim"), TailPCombiner(), {}),
             (("ncc", "ssim", "ncc_local"), make_combiner("local_gate"), {}),
             (DEFAULT, make_combiner("local_gate"), {"as_is": [], "local_share": 0.5})]
    for members, earlier, options in cases:
        sub = {s: hold[s] for s in members}
        fresh = {s: v[::-1] + 0.01 for s, v in sub.items()}
        gate = make_combiner("level_gate", options).fit(sub)
        earlier.fit(sub)
        assert not gate.as_is_models
        for a, b in zip(gate.combine(fresh), earlier.combine(fresh)):
            np.testing.assert_array_equal(a, b)


def test_a_copy_only_one_scorer_sees_is_flagged():
    """Planted: for each default scorer, a query whose score by that scorer alone lies 5 holdout standard deviations
    above the holdout's largest, every other scorer at its holdout median: flagged at q = 0.99."""
    hold = nulls(seed=11, n=400)
    gate = make_combiner().fit(hold)
    threshold = float(np.quantile(gate.combine(hold)[0], 0.99))
    for scorer in DEFAULT:
        query = {s: np.array([np.median(v)]) for s, v in hold.items()}
        query[scorer] = np.array([hold[scorer].max() + 5 * hold[scorer].std()])
        assert gate.combine(query)[0][0] > threshold, scorer
    # and a query at every scorer's holdout median is not
    assert gate.combine({s: np.array([np.median(v)]) for s, v in hold.items()})[0][0] < threshold


def test_an_unmoved_degraded_copy_that_ncc_alone_sees_is_kept():
    """Planted (the memorising generator's case): copies whose ncc sits 3 holdout standard deviations above the
    holdout mean (≈ its largest value of 400) while the registration scorers, whose pose search lifts every new
    image too, stay at their holdout 80th percentile. `ncc` alone at q = 0.99 flags them; inside the whole-image
    level (ncc weight 0.1, local_gate) most are lost; with the as-is level they are kept."""
    hold = nulls(seed=12, n=400)
    rng = np.random.default_rng(13)
    k = 40
    copies = {s: np.full(k, np.quantile(v, 0.8)) for s, v in hold.items()}
    copies["ncc"] = hold["ncc"].mean() + hold["ncc"].std() * (3.2 + 0.3 * rng.random(k))
    alone = copies["ncc"] > np.quantile(hold["ncc"], 0.99)
    flagged = {}
    for rule in ("level_gate", "local_gate"):
        gate = make_combiner(rule).fit(hold)
        threshold = float(np.quantile(gate.combine(hold)[0], 0.99))
        flagged[rule] = gate.combine(copies)[0] > threshold
    assert alone.mean() == 1.0
    assert flagged["level_gate"].mean() >= 0.9
    assert flagged["local_gate"].mean() <= 0.5


def test_false_positive_rate_on_a_null_stays_at_q():
    """New images drawn from the holdout's own (correlated) null: the share flagged at the holdout's q-quantile is
    1 − q for the three levels together, not 1 − q per level (binomial sd of the threshold's rate at n = 3000:
    0.0018; tolerance ≈ 3 sd)."""
    for q in (0.99, 0.95):
        hold = nulls(seed=21, n=3000)
        gate = make_combiner().fit(hold)
        threshold = float(np.quantile(gate.combine(hold)[0], q))
        fresh = gate.combine(nulls(seed=22, n=20000))[0]
        tolerance = 3 * np.sqrt(q * (1 - q) / 3000) + 3 * np.sqrt(q * (1 - q) / 20000)
        assert abs(float(np.mean(fresh > threshold)) - (1 - q)) < tolerance, q
