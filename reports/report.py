"""report.json (validated against the shipped schema), report.html and report.md of one `audit run`.

Every file is written atomically (temp name, then rename), so a run killed while writing leaves the previous
report or none — never half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from audit.jsonio import json_safe, write_json_atomic
from reports.provenance import environment, suite_info
from reports.schema import SCHEMA_VERSION, check_report

REPORT_JSON, REPORT_HTML, REPORT_MD, GATE_CHART = "report.json", "report.html", "report.md", "gates.png"


def build_report(config, prepared, records: Mapping[str, Any], gates, verdict, command: list[str], started: str,
                 synthetic_n: int) -> dict[str, Any]:
    """The report as a JSON-safe dict (see reports/schema/report.schema.json)."""
    import torch

    from audit.pipeline import now_utc

    opts = config.options
    figures = {f"{name}/{fig}": est.to_dict() for name, rec in records.items()
               for fig, est in rec.output.figures.items()}
    flagged = sorted({i for rec in records.values() for i in rec.output.flagged_ids})
    generation = records.get("generate")
    synthetic = {"n": int(synthetic_n), **(dict(generation.output.details) if generation else {})}
    resolved = config.to_json()
    resolved["data_config"] = prepared.data_config.model_dump(mode="json")
    report = {
        "schema_version": SCHEMA_VERSION,
        "created_at": now_utc(),
        "verdict": verdict.verdict,
        "exit_code": verdict.exit_code,
        "reasons": list(verdict.reasons),
        "model": {"path": str(prepared.model_path), "name": prepared.model_path.name or str(prepared.model_path),
                  "kind": prepared.model_kind, "hash": prepared.model_hash,
                  "description": prepared.model_description},
        "data": prepared.data_provenance,
        "synthetic": synthetic,
        "gates": {**gates.to_json(), "results": [o.to_json() for o in verdict.outcomes]},
        "stages": {name: rec.to_json() for name, rec in records.items()},
        "figures": figures,
        "flagged_ids": flagged,
        "config": resolved,
        "provenance": {
            "command": list(command) or ["audit", "run"],
            "suite": suite_info(),
            **environment(),
            "model_hash": prepared.model_hash,
            "data_records_hash": prepared.data_provenance["records_hash"],
            "data_manifest_sha256": prepared.data_provenance["manifest_sha256"],
            "seeds": {"run": opts.seed, "generation": opts.seed, "stages": opts.seed},
            "device": opts.device,
            "threads": int(torch.get_num_threads()),
            "started_at": started,
            "finished_at": now_utc(),
        },
    }
    report = json_safe(report)
    check_report(report)
    return report


def readable_by_all(path: Path) -> Path:
    """Temp files are created 0600; a report is for sharing: give it the mode a plain write would (umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
    return path


def write_text_atomic(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode() if isinstance(text, str) else text)
        readable_by_all(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_report(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """report.json, the gate chart, report.html (self-contained) and report.md into `out`."""
    from reports.plots import gate_chart_png
    from reports.render import render_html, render_markdown

    out = Path(out)
    chart = gate_chart_png(report["gates"]["results"])
    paths = {"json": readable_by_all(write_json_atomic(out / REPORT_JSON, report))}
    if chart is not None:
        paths["gate_chart"] = write_text_atomic(out / GATE_CHART, chart)
    else:
        (out / GATE_CHART).unlink(missing_ok=True)
    paths["html"] = write_text_atomic(out / REPORT_HTML, render_html(report, out, chart))
    paths["markdown"] = write_text_atomic(out / REPORT_MD, render_markdown(report, chart is not None))
    return paths
