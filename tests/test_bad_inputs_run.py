"""Bad input that only a stage can see, through `audit run`: the run does not stop at one line (the other stages
still run and the report is written), but it fails closed — verdict ERROR, exit 2, the stage's reason in the
report and on stdout, no traceback on stderr without --debug, never PASS, and the inputs byte-identical.

Bad input that the run sees before any work (gates files, presets, stage parameters, a model for another image
shape, ...) is in the corpus (tests/data/bad, `run-*` cases); the fail-closed rules with planted stages are in
tests/test_pipeline.py.
"""

from __future__ import annotations

import json

from tests.cli_harness import run_cli, tree_digest
from tests.data.bad.build_corpus import png16, run_world

ONLY_FIDELITY = """version: 1
required_stages: [fidelity]
gates:
  - {metric: fidelity/fid, op: "<=", threshold: 1.0e+9, on: value, severity: fail}
"""


def test_too_few_synthetic_images_for_fidelity_is_an_error_verdict_never_a_pass(tmp_path):
    case = tmp_path / "case"
    # 3 synthetic images: the k-NN metrics (k = 5) need 6; the one gate would pass any figure
    run_world(case, model={f"s{i}.png": (lambda i: lambda p: png16(p, 500 + i))(i) for i in range(3)},
              gates=ONLY_FIDELITY)
    before = tree_digest(case)
    out = tmp_path / "out"
    result = run_cli(["run", "--model", case / "model", "--data", case / "data.yaml", "--data-root", case / "data",
                      "--stages", "fidelity", "--gates", case / "gates.yaml", "--out", out],
                     env={"SYNTH_AUDIT_CACHE": str(tmp_path / "cache"), "SYNTH_AUDIT_PROGRESS": "off"})
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr and "PASS" not in result.stdout
    assert result.stdout.startswith("verdict: ERROR")
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "ERROR"
    fidelity = report["stages"]["fidelity"]
    assert fidelity["status"] == "error"
    assert "the synthetic set has 3 images; fidelity needs at least 6" in fidelity["reason"]
    assert any("stage 'fidelity' failed" in reason for reason in report["reasons"])
    assert (out / "fidelity" / "traceback.txt").is_file()  # the traceback is kept, beside the report
    assert tree_digest(case) == before
