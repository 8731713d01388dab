"""Release gates: every op and `on`, both severities, inconclusive intervals with the sample size that would
settle them, missing and undefined figures (ERROR, never a silent pass), the verdict's precedence, the YAML."""

from __future__ import annotations

import math

import pytest

from audit.errors import AuditInputError
from audit.gates import (EXIT_CODES, Gate, GateSet, StageState, check_stage_names, decide, evaluate_gate,
                         load_gates, samples_needed, wilson_upper_lower)
from audit.metrics.statistics import Estimate, rate_estimate, wilson_interval

OK = {"s": StageState("ok", figure_names=("x",))}


def figure(value, lo, hi, n=100, method="bootstrap 95% (1000)"):
    return {"s/x": Estimate(value, lo, hi, n, False, method)}


def gate(op="<=", threshold=0.5, on="value", severity="fail", metric="s/x"):
    return Gate(metric=metric, op=op, threshold=threshold, on=on, severity=severity)


@pytest.mark.parametrize("op, threshold, passes", [
    ("<", 0.31, True), ("<", 0.3, False), ("<=", 0.3, True), ("<=", 0.29, False),
    (">", 0.29, True), (">", 0.3, False), (">=", 0.3, True), (">=", 0.31, False)])
@pytest.mark.parametrize("severity", ["fail", "warn"])
def test_every_op_on_the_value_with_both_severities(op, threshold, passes, severity):
    outcome = evaluate_gate(gate(op, threshold, "value", severity), figure(0.3, 0.1, 0.5), OK)
    assert outcome.status == ("pass" if passes else severity)
    assert outcome.observed == 0.3
    assert not outcome.inconclusive


@pytest.mark.parametrize("on, expected_observed", [("ci_low", 0.1), ("ci_high", 0.5), ("value", 0.3)])
def test_on_picks_the_bound(on, expected_observed):
    outcome = evaluate_gate(gate("<=", 0.9, on), figure(0.3, 0.1, 0.5), OK)
    assert outcome.status == "pass" and outcome.observed == expected_observed


def test_a_bound_past_the_limit_with_the_estimate_inside_is_inconclusive_warn_not_fail():
    outcome = evaluate_gate(gate("<=", 0.4, "ci_high", "fail"), figure(0.3, 0.2, 0.5, n=100), OK)
    assert outcome.status == "warn" and outcome.inconclusive
    # bootstrap interval: half-width 0.2 must shrink to the margin 0.1 → n × (0.2 / 0.1)² = 400
    assert outcome.n_needed == 400
    assert "400" in outcome.message and "estimate" in outcome.message


def test_an_estimate_past_the_limit_is_evidence_fail_or_warn_by_severity():
    for severity in ("fail", "warn"):
        outcome = evaluate_gate(gate("<=", 0.25, "ci_high", severity), figure(0.3, 0.2, 0.5), OK)
        assert outcome.status == severity and not outcome.inconclusive


def test_lower_bound_gates_mirror_upper_bound_gates():
    # "utility AUC lower bound must be >= 0.7": estimate 0.75 inside, lower bound 0.65 outside → inconclusive
    outcome = evaluate_gate(gate(">=", 0.7, "ci_low"), figure(0.75, 0.65, 0.85, n=50), OK)
    assert outcome.status == "warn" and outcome.inconclusive
    assert outcome.n_needed == math.ceil(50 * (0.10 / 0.05) ** 2)
    assert evaluate_gate(gate(">=", 0.8, "ci_low"), figure(0.75, 0.65, 0.85), OK).status == "fail"


def test_sample_size_of_a_bootstrap_interval_makes_the_scaled_bound_pass():
    g = gate("<=", 0.6, "ci_high")
    est = {"value": 0.52, "ci_low": 0.41, "ci_high": 0.63, "n": 128, "method": "bootstrap"}
    n = samples_needed(g, est)
    half = 0.11
    assert 0.52 + half * math.sqrt(128 / n) <= 0.6 + 1e-12
    assert 0.52 + half * math.sqrt(128 / (n - 1)) > 0.6


def test_continuous_wilson_equals_the_suites_wilson_at_integer_counts():
    for k, n in [(0, 64), (2, 100), (13, 40), (40, 40)]:
        lo, hi = wilson_interval(k, n)
        assert wilson_upper_lower(k / n, n) == pytest.approx((lo, hi), abs=1e-12)


def test_sample_size_of_a_wilson_interval_is_the_smallest_n_whose_bound_passes():
    # 0 of 40 flagged: the Wilson upper bound is 0.088 > 0.05; at the same proportion the bound falls below 0.05
    # first at n = 73 (z² × 19 = 72.99)
    est = rate_estimate(0, 40).to_dict()
    n = samples_needed(gate("<=", 0.05, "ci_high"), est)
    assert n == 73
    assert wilson_interval(0, n)[1] <= 0.05 < wilson_interval(0, n - 1)[1]
    outcome = evaluate_gate(gate("<=", 0.05, "ci_high"), {"s/x": rate_estimate(0, 40)}, OK)
    assert outcome.status == "warn" and outcome.n_needed == 73


def test_no_sample_size_when_the_estimate_sits_on_the_threshold():
    outcome = evaluate_gate(gate("<=", 0.3, "ci_high"), figure(0.3, 0.2, 0.4), OK)
    assert outcome.status == "warn" and outcome.n_needed is None
    assert "no sample size" in outcome.message


@pytest.mark.parametrize("state, words", [
    (None, "not run (left out by --stages)"),
    (StageState("not_requested", "left out by --stages"), "not run"),
    (StageState("error", "RuntimeError: boom"), "failed: RuntimeError: boom"),
    (StageState("skipped", "the model is a folder of images"), "skipped: the model is a folder of images"),
    (StageState("ok", skipped_parts={"loss": "no white-box access"}, figure_names=("dcr/share",)),
     "part 'loss' of stage 's' was skipped: no white-box access"),
    (StageState("ok", figure_names=("other",)), "reported no figure 'loss/auc' (it reported: other)"),
])
def test_a_gate_on_a_missing_figure_is_an_error_that_says_why(state, words):
    stages = {} if state is None else {"s": state}
    outcome = evaluate_gate(gate(metric="s/loss/auc"), {}, stages)
    assert outcome.status == "error"
    assert words in outcome.message


def test_an_undefined_figure_is_an_error():
    outcome = evaluate_gate(gate(), {"s/x": Estimate(float("nan"), float("nan"), float("nan"), 3, True,
                                                     "undefined: one class only")}, OK)
    assert outcome.status == "error" and "undefined" in outcome.message
    # and through JSON (NaN written as null)
    outcome = evaluate_gate(gate(on="ci_high"), {"s/x": {"value": 0.1, "ci_low": None, "ci_high": None, "n": 3,
                                                         "higher_is_better": False, "method": "m"}}, OK)
    assert outcome.status == "error"


def _set(*gates, required=None):
    return GateSet(gates=gates, required_stages=required)


def test_verdict_precedence_error_over_fail_over_warn_over_pass():
    figs = {"a/x": Estimate(0.1, 0.0, 0.2, 10, False, "m"), "b/x": Estimate(0.9, 0.8, 1.0, 10, False, "m")}
    ok = {"a": StageState("ok"), "b": StageState("ok")}
    passing, failing = gate(metric="a/x"), gate(metric="b/x")
    warning = gate(metric="b/x", severity="warn")
    assert decide(_set(passing), figs, ok).verdict == "PASS"
    assert decide(_set(passing, warning), figs, ok).verdict == "WARN"
    assert decide(_set(passing, warning, failing), figs, ok).verdict == "FAIL"
    assert decide(_set(passing, failing, gate(metric="c/x")), figs, ok).verdict == "ERROR"
    assert [EXIT_CODES[v] for v in ("PASS", "WARN", "FAIL", "ERROR")] == [0, 0, 1, 2]


def test_a_failed_stage_is_error_even_when_no_gate_needs_it():
    figs = {"a/x": Estimate(0.1, 0.0, 0.2, 10, False, "m")}
    stages = {"a": StageState("ok"), "z": StageState("error", "ValueError: broken")}
    verdict = decide(_set(gate(metric="a/x")), figs, stages)
    assert verdict.verdict == "ERROR" and verdict.exit_code == 2
    assert "stage 'z' failed: ValueError: broken" in verdict.reasons


def test_a_required_stage_that_was_skipped_or_left_out_is_error():
    figs = {"a/x": Estimate(0.1, 0.0, 0.2, 10, False, "m")}
    gates = _set(gate(metric="a/x"), required=("a", "b"))
    skipped = decide(gates, figs, {"a": StageState("ok"), "b": StageState("skipped", "no source ids")})
    assert skipped.verdict == "ERROR" and "required stage 'b' was skipped: no source ids" in skipped.reasons
    left_out = decide(gates, figs, {"a": StageState("ok"), "b": StageState("not_requested", "left out")})
    assert left_out.verdict == "ERROR"
    # without required_stages, the stages the gates refer to are required
    assert _set(gate(metric="a/x"), gate(metric="c/y")).required() == ("a", "c")


def test_yaml_gate_files(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("gates:\n  - metric: replicas/flagged_share\n    op: '<='\n    threshold: 0.05\n"
                    "    on: ci_high\n    severity: warn\n")
    loaded = load_gates(path)
    assert loaded.gates.gates[0].on == "ci_high"  # YAML 1.1 reads a bare `on` key as True
    assert loaded.gates.required() == ("replicas",)
    bad = {"gates: []\n": "at least one gate",
           "gates:\n  - {metric: a/b, op: '=', threshold: 1}\n": "gates.0.op",
           "gates:\n  - {metric: ab, op: '<', threshold: 1}\n": "gates.0.metric",
           "gates:\n  - {metric: a/b, op: '<', threshold: .nan}\n": "gates.0.threshold",
           "gates:\n  - {metric: a/b, op: '<', threshold: 1, colour: red}\n": "unknown key 'gates.0.colour'",
           "gate:\n  - {metric: a/b, op: '<', threshold: 1}\n": "unknown key 'gate'",
           "gates:\n  - {metric: a/b, op: '<', threshold: 1, on: median}\n": "gates.0.on"}
    for text, words in bad.items():
        path.write_text(text)
        with pytest.raises(AuditInputError, match=words.replace(".", r"\.")):
            load_gates(path)
    with pytest.raises(AuditInputError, match="unknown gate preset 'nope'"):
        load_gates("nope")


def test_gates_naming_an_unknown_stage_are_refused_before_any_work():
    gates = _set(gate(metric="replica/flagged_share"))
    with pytest.raises(AuditInputError, match="unknown stage 'replica'"):
        check_stage_names(gates, {"replicas", "reid"}, "g.yaml")


def test_the_default_gates_load_name_real_stages_and_say_why():
    from audit.stages import STAGE_ORDER

    loaded = load_gates("default")
    check_stage_names(loaded.gates, set(STAGE_ORDER), loaded.source)
    assert set(loaded.gates.required()) == set(STAGE_ORDER)
    assert all(g.why and g.title for g in loaded.gates.gates)
    metrics = {g.metric for g in loaded.gates.gates}
    assert {"replicas/flagged_share", "membership/best/auc", "membership/best/tpr_at_fpr_1pct",
            "reid/risk_at_fpr_1pct", "fidelity/fid_over_floor", "utility/gap"} <= metrics
