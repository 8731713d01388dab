"""The report files: report.json against its shipped schema, the HTML's self-containment and escaping of hostile
text, the Markdown's escaping, and `audit compare` (frontier, gate table, comparability warnings)."""

from __future__ import annotations

import copy
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

import audit.pipeline
import audit.stages
from audit.cli import main
from audit.errors import AuditInputError
from audit.pipeline import Pipeline
from audit.run_config import resolve_run_config
from reports.compare import compare_reports, pareto_frontier
from reports.render import render_html, render_markdown
from reports.schema import report_schema, strip_volatile, validation_errors
from tests import pipeline_factory as pf

HOSTILE = "<img src=x onerror=alert(1)>\"'&</pre></style><script>alert(2)</script>"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    preset, data = pf.make_dataset(root)
    model = pf.make_folder_model(root, data)
    gates = pf.lenient_gates(root / "gates.yaml")
    return {"root": root, "preset": preset, "data": data, "model": model, "gates": gates}


def run(world, out, registry=None, gates=None, data_root=None, model=None):
    registry = registry or pf.registry_with()
    flags = {"model": model or world["model"], "data": str(world["preset"]), "data_root": data_root or world["data"],
             "out": out, "gates": str(gates or world["gates"])}
    return Pipeline(resolve_run_config(flags, None, registry), registry=registry, load_model=pf.load_fake,
                    command=["audit", "run", "--model", str(world["model"])]).run()


@pytest.fixture(scope="module")
def report_dir(world):
    out = world["root"] / "out"
    run(world, out)
    return out


class Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    return tags


def test_real_reports_validate_against_the_shipped_schema(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    assert report_schema()["$id"].endswith("/1.0") and report["schema_version"] == "1.0"
    assert validation_errors(report) == []
    for estimate in report["figures"].values():
        assert set(estimate) == {"value", "ci_low", "ci_high", "n", "higher_is_better", "method"}
    for stage in report["stages"].values():
        assert {"status", "seconds", "parameters"} <= set(stage)
    provenance = report["provenance"]
    assert provenance["suite"]["name"] == "synth-audit" and provenance["command"][:2] == ["audit", "run"]
    assert provenance["model_hash"] == report["model"]["hash"] and len(report["model"]["hash"]) == 64
    assert provenance["packages"]["torch"] and provenance["seeds"] == {"run": 0, "generation": 0, "stages": 0}


@pytest.mark.parametrize("breakage, where", [
    (lambda r: r.pop("provenance"), "provenance"),
    (lambda r: r.update(verdict="OK"), "verdict"),
    (lambda r: r["figures"]["replicas/flagged_share"].update(value="0.2"), "figures/replicas/flagged_share/value"),
    (lambda r: r["figures"]["replicas/flagged_share"].pop("method"), "figures/replicas/flagged_share"),
    (lambda r: r["stages"]["replicas"].update(status="done"), "stages/replicas/status"),
    (lambda r: r["stages"]["replicas"].update(status="error", reason=None), "stages/replicas/reason"),
    (lambda r: r["data"]["manifest_sha256"].update(x="abc"), "data/manifest_sha256/x"),
    (lambda r: r["provenance"]["data_manifest_sha256"].update(x="abc"), "provenance/data_manifest_sha256/x"),
    (lambda r: r["gates"]["results"][0].update(on="median"), "gates/results/0/on"),
    (lambda r: r.update(extra=1), "(top)"),
])
def test_the_schema_rejects_broken_reports(report_dir, breakage, where):
    report = json.loads((report_dir / "report.json").read_text())
    broken = copy.deepcopy(report)
    breakage(broken)
    errors = validation_errors(broken)
    assert errors and any(where in e for e in errors), errors


def test_the_html_is_self_contained(report_dir):
    html = (report_dir / "report.html").read_text()
    tags = parse(html)
    images = [a["src"] for t, a in tags.tags if t == "img"]
    assert len(images) == 1 + 5  # the gate chart + one plot per stage
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not [t for t, _ in tags.tags if t in ("script", "link", "iframe", "object", "embed", "base")]
    for _, attrs in tags.tags:
        for key, value in attrs.items():
            assert not (value or "").lower().startswith(("http:", "https:", "//", "javascript:")), (key, value)
            assert not key.startswith("on"), key
    csp = next(a["content"] for t, a in tags.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in csp and "img-src data:" in csp
    links = [a["href"] for t, a in tags.tags if t == "a"]
    assert links == ["replicas/flagged.csv"] and (report_dir / links[0]).is_file()
    text = " ".join(tags.text)
    assert "PASS" in text and "Does the model copy patients' images?" in text and "Provenance" in text
    assert text.index("Release gates") < text.index("Does the model copy") < text.index("Provenance")


def hostile_report(report_dir) -> dict:
    report = json.loads((report_dir / "report.json").read_text())
    report["model"]["name"] = HOSTILE
    report["reasons"] = [HOSTILE]
    report["data"]["name"] = HOSTILE
    stage = report["stages"]["replicas"]
    stage["flagged_ids"] = [HOSTILE]
    stage["details"] = {HOSTILE: HOSTILE}
    stage["skipped"] = {HOSTILE: HOSTILE}
    stage["artefacts"]["bar"]["caption"] = HOSTILE
    report["stages"]["utility"].update(status="error", reason=HOSTILE)
    report["gates"]["results"][0].update(title=HOSTILE, why=HOSTILE, message=HOSTILE)
    report["provenance"]["command"] = ["audit", "run", "--model", HOSTILE]
    return report


def test_hostile_text_is_escaped_in_html(report_dir):
    html = render_html(hostile_report(report_dir), report_dir, None)
    assert "<script" not in html and "onerror=alert" not in html.replace("onerror=alert(1)&gt;", "")
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    tags = parse(html)
    assert all(a.get("src", "data:").startswith("data:") for t, a in tags.tags if t == "img")
    assert not [t for t, _ in tags.tags if t == "script"]
    # the parsed text holds the hostile string verbatim, as text
    assert HOSTILE in "".join(tags.text)


def test_hostile_text_is_escaped_in_markdown(report_dir):
    md = render_markdown(hostile_report(report_dir), True)
    assert "<img" not in md and "<script" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md
    gate_rows = [line for line in md.splitlines() if line.startswith("| **")]
    assert all(line.count(" | ") == 5 for line in gate_rows)  # a '|' in the text cannot break the table


def test_a_missing_artefact_is_named_not_shown_as_a_broken_image(report_dir, tmp_path):
    report = json.loads((report_dir / "report.json").read_text())
    report["stages"]["replicas"]["artefacts"]["gone"] = {"path": "gone.png", "kind": "plot", "caption": "vanished"}
    html = render_html(report, report_dir, None)
    tags = parse(html)
    assert len([t for t, _ in tags.tags if t == "img"]) == 5
    assert "replicas/gone.png" in html and "file missing" in html


def test_markdown_has_the_verdict_gates_key_figures_and_links(report_dir):
    md = (report_dir / "report.md").read_text()
    assert md.startswith("# Privacy audit: model — **PASS**")
    assert "## Release gates" in md and "`replicas/flagged_share`" in md and "0.200 [0.0567, 0.510]" in md
    assert "![gate chart](gates.png)" in md and "(replicas/bar.png)" in md and "(replicas/flagged.csv)" in md


def test_pareto_frontier_keeps_the_points_nobody_beats_on_both_axes():
    def p(label, risk, worth):
        return {"label": label, "risk": {"value": risk}, "worth": {"value": worth}}

    points = [p("a", 0.5, 0.7), p("b", 0.6, 0.8), p("c", 0.6, 0.7), p("d", 0.9, 0.8), p("e", 0.4, 0.6)]
    # lower risk and higher worth are better: c is beaten by a, d by b
    assert pareto_frontier(points, risk_hib=False, worth_hib=True) == ["a", "b", "e"]
    # worth as FID (lower is better): now low-worth points are good
    assert pareto_frontier(points, risk_hib=False, worth_hib=False) == ["e"]


def test_compare_sets_models_side_by_side_and_warns_when_they_are_not_comparable(world, report_dir, tmp_path,
                                                                                capsys):
    leaky_registry = pf.registry_with(membership=pf.planted_stage(
        "membership", {"best/auc": pf.est(0.8, 0.7, 0.9), "best/tpr_at_fpr_1pct": pf.est(0.3, 0.2, 0.4)}))
    run(world, tmp_path / "leaky", leaky_registry)
    result = compare_reports([report_dir / "report.json", tmp_path / "leaky" / "report.json"], tmp_path / "cmp")
    summary = result["summary"]
    assert [m["verdict"] for m in summary["models"]] == ["PASS", "FAIL"]
    assert summary["risk"] == "membership/best/auc" and summary["worth"] == "utility/tstr_auc"
    assert summary["warnings"] == []  # same data, same gates, same n
    assert len({m["label"] for m in summary["models"]}) == 2  # both models are called 'model': disambiguated
    first, second = (m["label"] for m in summary["models"])
    # equal utility, lower membership AUC: only the first model is on the frontier
    assert summary["frontier"] == [first]
    row = next(r for r in summary["gate_table"] if r["metric"] == "membership/best/auc")
    assert row["cells"][first]["status"] == "pass" and row["cells"][second]["status"] == "fail"
    assert (tmp_path / "cmp" / "compare.html").is_file() and (tmp_path / "cmp" / "frontier.png").is_file()
    html = (tmp_path / "cmp" / "compare.html").read_text()
    assert all(a["src"].startswith("data:image/png") for t, a in parse(html).tags if t == "img")

    # other data, other gates, other n → each named in a warning
    other_data = tmp_path / "data2"
    import shutil

    shutil.copytree(world["data"], other_data)
    (other_data / "manifest.csv").write_text((other_data / "manifest.csv").read_text().replace(",A,", ",B,", 1))
    strict = tmp_path / "strict.yaml"
    strict.write_text(world["gates"].read_text().replace("threshold: 0.5,", "threshold: 0.4,"))
    run(world, tmp_path / "other", gates=strict, data_root=other_data)
    capsys.readouterr()
    assert main(["compare", str(report_dir / "report.json"), str(tmp_path / "other" / "report.json"),
                 "--out", str(tmp_path / "cmp2"), "--json"]) == 0
    warnings = json.loads(capsys.readouterr().out)["warnings"]
    assert any("different data" in w for w in warnings)
    assert any("different gates" in w for w in warnings)


def test_compare_refuses_what_is_not_a_report(report_dir, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"verdict": "PASS"}))
    with pytest.raises(AuditInputError, match="not a valid synth-audit report"):
        compare_reports([bad], tmp_path / "c")
    assert main(["compare", str(tmp_path / "none.json"), "--out", str(tmp_path / "c")]) == 2
    assert main(["compare", str(report_dir / "report.json"), "--out", str(tmp_path / "c"),
                 "--risk", "membership/nope"]) == 2
    assert "no report has the figure 'membership/nope'" in capsys.readouterr().err


def test_report_json_is_stable_apart_from_timestamps(report_dir, world, tmp_path):
    again = run(world, tmp_path / "again").report
    first = json.loads((report_dir / "report.json").read_text())
    for report in (first, again):
        report["config"].pop("out")
    assert strip_volatile(first) == strip_volatile(again)


def test_progress_display_and_quiet_output(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(audit.pipeline, "_load_generator", pf.load_fake)
    monkeypatch.setattr(audit.stages, "STAGES", pf.registry_with())
    monkeypatch.setenv("SYNTH_AUDIT_PROGRESS", "on")
    args = ["run", "--model", str(world["model"]), "--data", str(world["preset"]), "--data-root",
            str(world["data"]), "--out", str(tmp_path / "o"), "--gates", str(world["gates"])]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "audit: report" in captured.err and "steps" in captured.err  # the one bar over the run's steps
    assert "replicas    done" in captured.err
    assert captured.out.startswith("verdict: PASS")
    assert main(args + ["--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.strip() == f"verdict: PASS ({tmp_path / 'o' / 'report.html'})"
    assert Path(tmp_path / "o" / "report.md").is_file()


def test_strip_volatile_removes_timestamps_durations_and_cache_hits_only():
    report = {"created_at": "t", "verdict": "PASS",
              "provenance": {"started_at": "t", "finished_at": "t", "command": ["audit"]},
              "stages": {"utility": {"seconds": 3.0, "started_at": "t", "status": "ok",
                                     "details": {"trtr_from_cache": True, "from_cache": False, "steps": 300,
                                                 "training": [{"seconds": 5.1, "loss": 0.1}]}}}}
    assert strip_volatile(report) == {
        "verdict": "PASS", "provenance": {"command": ["audit"]},
        "stages": {"utility": {"status": "ok", "details": {"steps": 300, "training": [{"loss": 0.1}]}}}}
    assert report["stages"]["utility"]["seconds"] == 3.0  # a copy: the report itself is untouched


def test_compare_names_the_stage_parameters_that_differ(report_dir):
    from reports.compare import comparability_warnings

    a = json.loads((report_dir / "report.json").read_text())
    b = copy.deepcopy(a)
    b["stages"]["fidelity"]["parameters"] = {"knob": 0, "extractor": "inception"}
    a["stages"]["fidelity"]["parameters"] = {"knob": 0, "extractor": "radiomics"}
    b["synthetic"]["n"] = 99
    warnings = comparability_warnings([a, b], ["a", "b"])
    assert warnings == ["the reports used different feature extractors / fidelity parameters (differing keys: "
                        "extractor)",
                        "the reports audited different numbers of synthetic images (a: 10; b: 99): their intervals "
                        "differ in width for that reason alone"]
    assert comparability_warnings([a, copy.deepcopy(a)], ["a", "b"]) == []


def test_a_stage_warning_is_shown_beside_its_figures_not_only_in_the_details(report_dir):
    report = json.loads((report_dir / "report.json").read_text())
    warning = "the attacker is weak on this data: its privacy figures are a lower bound <b>|</b>"
    report["stages"]["replicas"]["details"]["warnings"] = [warning]
    html = render_html(report, report_dir, None)
    # outside every collapsed <details> block, escaped
    visible = html.split("<details")[0] + "".join(part.split("</details>", 1)[-1] for part in html.split("<details")[1:])
    assert "Warning: the attacker is weak on this data" in visible and "<b>|</b>" not in html
    md = render_markdown(report, False)
    section = md.split("## Warnings", 1)[1].split("## Key figures", 1)[0]
    assert section.strip().startswith("- replicas: the attacker is weak on this data") and "<b>" not in section
    report["stages"]["replicas"]["details"].pop("warnings")
    assert "## Warnings" not in render_markdown(report, False)
    assert "Warning:" not in render_html(report, report_dir, None)
