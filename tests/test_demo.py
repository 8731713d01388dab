"""`audit demo`: its plan (presets and run configs valid, the control audited before the normal model), the step
runner (dependencies, failures stop only their dependents, cached products reused, staged products moved into
place) and the expectations it checks on the two 2D reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from audit.commands import demo
from audit.commands.demo import DONE_STAMP, DemoLayout, Step, expectations, plan, run_steps


def layout(tmp_path: Path, include_3d: bool = True) -> DemoLayout:
    return DemoLayout(tmp_path / "out", tmp_path / "cache", 320, 0, 1, include_3d)


def test_the_plan_uses_valid_presets_and_audits_the_control_first(tmp_path):
    from audit.run_config import resolve_run_config
    from generators.config import load_generator_config

    steps = {s.name: s for s in plan(layout(tmp_path))}
    assert list(steps) == ["data-mammo", "data-brain", "train-control", "train-normal", "audit-control", "train-3d",
                           "audit-normal", "audit-3d", "compare"]
    # the second 2D audit reuses the data-only artefacts the first cached
    assert "audit-control" in steps["audit-normal"].needs
    for name in ("train-normal", "train-control", "train-3d"):
        preset = Path(steps[name].argv[steps[name].argv.index("--config") + 1])
        assert load_generator_config(str(preset)).kind in ("ldm2d", "ldm3d")
    for name in ("audit-control", "audit-normal", "audit-3d"):
        argv = steps[name].argv
        config = resolve_run_config({"model": "m", "data": argv[argv.index("--data") + 1]},
                                    argv[argv.index("--config") + 1])
        assert set(config.stages) == {"fidelity", "utility", "reid", "membership", "replicas"}
        # dcr_embed embeds with the re-id stage's attacker: same parameters, so it is trained once
        assert config.to_json()["membership"]["reid"] == {k: v for k, v in config.to_json()["reid"]["attacker"]
                                                          .items() if k in config.to_json()["membership"]["reid"]}
        assert steps[name].ok_codes == (0, 1)  # a FAIL verdict is a result of the demo, not a failed step
    # the models' folders are keyed by the preset's text: another budget is another model
    assert steps["train-normal"].product != steps["train-control"].product
    assert [s.name for s in plan(layout(tmp_path, include_3d=False))] == [
        "data-mammo", "train-control", "train-normal", "audit-control", "audit-normal", "compare"]


def fake_launch(codes: dict[str, int], order: list[str]):
    """Each step is a tiny Python process exiting with its planted code; staged products get a file."""
    def launch(step: Step, log: Path) -> subprocess.Popen:
        order.append(step.name)
        if step.staging is not None:
            step.staging.mkdir(parents=True)
            (step.staging / "made").write_text(step.name)
        return subprocess.Popen([sys.executable, "-c", f"import sys; sys.exit({codes.get(step.name, 0)})"])
    return launch


def test_steps_wait_for_what_they_need_and_a_failure_stops_only_its_dependents(tmp_path):
    staged = tmp_path / "data"
    steps = [Step("data", ("x",), product=staged, staging=tmp_path / "data.partial"),
             Step("train-a", ("x",), needs=("data",)), Step("train-b", ("x",), needs=("data",)),
             Step("audit-a", ("x",), needs=("train-a",), ok_codes=(0, 1)),
             Step("audit-b", ("x",), needs=("train-b",)), Step("compare", ("x",), needs=("audit-a", "audit-b"))]
    order: list[str] = []
    lines: list[str] = []
    results = run_steps(steps, tmp_path, jobs=2, say=lines.append, launch=fake_launch({"train-b": 3, "audit-a": 1},
                                                                                        order))
    status = {r.name: (r.status, r.exit_code) for r in results}
    assert status == {"data": ("done", 0), "train-a": ("done", 0), "train-b": ("failed", 3),
                      "audit-a": ("done", 1), "audit-b": ("not run", None), "compare": ("not run", None)}
    assert order.index("data") < order.index("train-a") < order.index("audit-a")
    assert "audit-b" not in order and "compare" not in order
    assert all(0 < r.cpu_seconds < r.seconds + 1 for r in results if r.status in ("done", "failed"))
    # the staged folder was moved into place and stamped complete, last
    assert (staged / "made").read_text() == "data" and (staged / DONE_STAMP).is_file()
    assert not (tmp_path / "data.partial").exists()

    # a second demo reuses the stamped product and runs the rest
    order.clear()
    again = run_steps(steps[:2], tmp_path, jobs=1, say=lines.append, launch=fake_launch({}, order))
    assert [r.status for r in again] == ["reused", "done"] and order == ["train-a"]


def test_at_most_jobs_steps_run_at_once(tmp_path):
    marker = tmp_path / "running"
    marker.mkdir()
    steps = [Step(f"s{i}", ("x",)) for i in range(4)]

    def launch(step, log):
        # each step records how many were running when it started, then lingers
        code = (f"import os, time; p = {str(marker)!r}; n = len(os.listdir(p)); open(os.path.join(p, "
                f"{step.name!r}), 'w').write(str(n)); time.sleep(0.5); os.remove(os.path.join(p, {step.name!r})); "
                f"open(os.path.join({str(tmp_path)!r}, {step.name!r} + '.n'), 'w').write(str(n))")
        return subprocess.Popen([sys.executable, "-c", code])

    run_steps(steps, tmp_path, jobs=2, say=lambda line: None, launch=launch)
    assert max(int((tmp_path / f"s{i}.n").read_text()) for i in range(4)) <= 1  # ≤ 1 other running: ≤ 2 at once


def report(verdict: str, statuses: dict[str, str]) -> dict:
    return {"verdict": verdict, "gates": {"results": [
        {"metric": m, "status": s, "estimate": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 100}}
        for m, s in statuses.items()]}}


def test_expectations_need_the_control_to_fail_and_the_normal_model_to_pass():
    good = {"audit-control": report("FAIL", {"replicas/flagged_share": "fail", "membership/best/auc": "fail"}),
            "audit-normal": report("WARN", {"replicas/flagged_share": "pass", "membership/best/auc": "pass",
                                            "fidelity/fid_over_floor": "warn"})}
    assert all(c.met for c in expectations(good)) and len(expectations(good)) == 4
    # an inconclusive (warn) gate of the normal model is not a pass; a missing report meets nothing
    weak = {**good, "audit-normal": report("WARN", {"replicas/flagged_share": "pass",
                                                    "membership/best/auc": "warn"})}
    assert [(c.model, c.metric) for c in expectations(weak) if not c.met] == [("audit-normal",
                                                                                "membership/best/auc")]
    missing = {"audit-control": good["audit-control"], "audit-normal": None}
    assert [c.observed for c in expectations(missing) if not c.met] == [None, None]
    errored = {**good, "audit-control": report("ERROR", {"replicas/flagged_share": "fail",
                                                         "membership/best/auc": "error"})}
    assert not all(c.met for c in expectations(errored))


def test_the_demo_command_records_steps_and_exits_by_the_expectations(tmp_path, monkeypatch, capsys):
    """The whole command with fake steps: the audits write planted reports; exit 0 when the expectations hold,
    1 when the normal model's membership gate does not pass."""
    import argparse

    def fake(normal_membership):
        def launch(step: Step, log: Path):
            if step.argv[0] == "run":
                out = Path(step.argv[step.argv.index("--out") + 1])
                out.mkdir(parents=True)
                control = "control" in step.name
                statuses = ({"replicas/flagged_share": "fail", "membership/best/auc": "fail"} if control else
                            {"replicas/flagged_share": "pass", "membership/best/auc": normal_membership})
                (out / "report.json").write_text(json.dumps(report("FAIL" if control else "PASS", statuses)))
            made = step.staging or step.product  # what the real command writes
            if made is not None:
                made.mkdir(parents=True)
            return subprocess.Popen([sys.executable, "-c", "pass"])
        return launch

    parser = argparse.ArgumentParser()
    demo.register(parser.add_subparsers())
    for membership, expected_code in (("pass", 0), ("warn", 1)):
        monkeypatch.setattr(demo, "_launch", fake(membership))
        out = tmp_path / f"out-{membership}"
        args = parser.parse_args(["demo", "--out", str(out), "--no-3d", "--cache-dir",
                                  str(tmp_path / f"c-{membership}")])
        assert args.func(args) == expected_code
        record = json.loads((out / "demo.json").read_text())
        assert [s["name"] for s in record["steps"]] == ["data-mammo", "train-control", "train-normal",
                                                        "audit-control", "audit-normal", "compare"]
        assert record["verdicts"] == {"audit-control": "FAIL", "audit-normal": "PASS"}
        assert record["exit_code"] == expected_code
    assert "NOT  audit-normal" in capsys.readouterr().out


def test_bad_flags_are_one_line_errors(tmp_path):
    from audit.errors import AuditInputError
    import argparse

    parser = argparse.ArgumentParser()
    demo.register(parser.add_subparsers())
    args = parser.parse_args(["demo", "--out", str(tmp_path / "o"), "--jobs", "0"])
    with pytest.raises(AuditInputError, match="--jobs"):
        args.func(args)
    assert not (tmp_path / "o").exists()
