"""`audit compare REPORT.json...`: several models side by side — the privacy-utility frontier (each point with its
CIs on both axes), every gate figure of every report, the verdicts — and warnings when the reports are not
comparable (different data, feature extractors / attackers, gates, or numbers of synthetic images)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from audit.errors import AuditInputError
from reports.schema import validation_errors

RISK_DEFAULTS = ("membership/best/auc", "replicas/flagged_share", "reid/risk_at_fpr_1pct")
WORTH_DEFAULTS = ("utility/tstr_auc", "fidelity/fid_over_floor")
COMPARE_JSON, COMPARE_HTML, FRONTIER_PNG = "compare.json", "compare.html", "frontier.png"


def load_report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AuditInputError(path, "report not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise AuditInputError(path, f"not a readable JSON file ({err})") from None
    if not isinstance(report, dict):
        raise AuditInputError(path, "not a synth-audit report (expected a JSON object)")
    errors = validation_errors(report)
    if errors:
        raise AuditInputError(path, f"not a valid synth-audit report ({errors[0]})")
    return report


def unique_labels(reports: Sequence[dict[str, Any]], paths: Sequence[Path]) -> list[str]:
    names = [r["model"]["name"] for r in reports]
    labels = []
    for i, (name, path) in enumerate(zip(names, paths)):
        label = name if names.count(name) == 1 else f"{name} ({Path(path).resolve().parent.name or i + 1})"
        while label in labels:
            label = f"{label} #{i + 1}"
        labels.append(label)
    return labels


def choose_metric(reports: Sequence[dict[str, Any]], wanted: str | None, defaults: Sequence[str],
                  flag: str) -> str | None:
    if wanted:
        if not any(wanted in r["figures"] for r in reports):
            known = sorted({f for r in reports for f in r["figures"]})
            raise AuditInputError(None, f"{flag}: no report has the figure '{wanted}' (they have: "
                                        f"{', '.join(known[:12]) or 'none'}{' …' if len(known) > 12 else ''})")
        return wanted
    for name in defaults:
        if all(name in r["figures"] for r in reports):
            return name
    for name in defaults:
        if any(name in r["figures"] for r in reports):
            return name
    return None


def _differing_keys(dicts: Sequence[dict[str, Any]]) -> list[str]:
    keys = sorted({k for d in dicts for k in d})
    return [k for k in keys if len({json.dumps(d.get(k), sort_keys=True) for d in dicts}) > 1]


def comparability_warnings(reports: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[str]:
    warnings = []

    def differs(values: Sequence[Any]) -> bool:
        return len({json.dumps(v, sort_keys=True) for v in values}) > 1

    def listing(values: Sequence[Any]) -> str:
        return "; ".join(f"{label}: {value}" for label, value in zip(labels, values))

    data = [(r["data"]["name"], r["data"]["records_hash"][:12], tuple(r["data"]["shape"])) for r in reports]
    if differs([list(d) for d in data]):
        warnings.append("the reports used different data (" + listing([f"{n} {h} {s}" for n, h, s in data]) + ")")
    for stage, what in (("fidelity", "feature extractors / fidelity parameters"),
                        ("reid", "re-identification attackers / parameters"),
                        ("membership", "membership attacks / parameters"),
                        ("replicas", "replica scorers / parameters"),
                        ("utility", "utility classifiers / parameters")):
        params = [r["stages"].get(stage, {}).get("parameters", {}) for r in reports
                  if r["stages"].get(stage, {}).get("status") == "ok"]
        if len(params) > 1 and differs(params):
            warnings.append(f"the reports used different {what} (differing keys: "
                            f"{', '.join(_differing_keys(params))})")
    gates = [r["gates"]["hash"] for r in reports]
    if differs(gates):
        warnings.append("the reports were judged by different gates (" +
                        listing([f"{r['gates']['source']} {h}" for r, h in zip(reports, gates)]) + ")")
    sizes = [r["synthetic"]["n"] for r in reports]
    if differs(sizes):
        warnings.append("the reports audited different numbers of synthetic images (" + listing(sizes) +
                        "): their intervals differ in width for that reason alone")
    return warnings


def _point(estimate: dict[str, Any] | None) -> dict[str, Any] | None:
    if not estimate or estimate.get("value") is None or not math.isfinite(estimate["value"]):
        return None
    return estimate


def pareto_frontier(points: Sequence[dict[str, Any]], risk_hib: bool, worth_hib: bool) -> list[str]:
    """Labels of the points no other point beats on both axes (safer and better, one of them strictly)."""
    def better_or_equal(a: float, b: float, hib: bool) -> bool:
        return a >= b if hib else a <= b

    front = []
    for p in points:
        x, y = p["risk"]["value"], p["worth"]["value"]
        dominated = any(better_or_equal(q["risk"]["value"], x, risk_hib) and
                        better_or_equal(q["worth"]["value"], y, worth_hib) and
                        (q["risk"]["value"] != x or q["worth"]["value"] != y) for q in points if q is not p)
        if not dominated:
            front.append(p["label"])
    return front


def gate_table(reports: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[dict[str, Any]]:
    from reports.render import estimate_text, figure_label

    rows: dict[str, dict[str, Any]] = {}
    for report in reports:
        for gate in report["gates"]["results"]:
            rows.setdefault(gate["metric"], {"metric": gate["metric"], "title": gate.get("title") or
                                             figure_label(gate["metric"].partition("/")[2]), "rules": set()})
            rows[gate["metric"]]["rules"].add(f"{gate['on']} {gate['op']} {gate['threshold']:g}")
    table = []
    for metric, row in rows.items():
        cells = {}
        for label, report in zip(labels, reports):
            outcomes = [g["status"] for g in report["gates"]["results"] if g["metric"] == metric]
            status = max(outcomes, key=("pass", "warn", "fail", "error").index) if outcomes else None
            estimate = report["figures"].get(metric)
            cells[label] = {"estimate": estimate, "text": estimate_text(estimate), "status": status}
        table.append({"metric": metric, "title": row["title"], "rules": sorted(row["rules"]), "cells": cells})
    return table


def compare_reports(paths: Sequence[Path], out: Path, risk: str | None = None,
                    worth: str | None = None) -> dict[str, Any]:
    from audit.jsonio import write_json_atomic
    from audit.pipeline import now_utc
    from reports.plots import frontier_png
    from reports.render import data_uri, environment, css
    from reports.report import readable_by_all, write_text_atomic

    if not paths:
        raise AuditInputError(None, "give at least one report.json")
    reports = [load_report(p) for p in paths]
    labels = unique_labels(reports, paths)
    risk_name = choose_metric(reports, risk, RISK_DEFAULTS, "--risk")
    worth_name = choose_metric(reports, worth, WORTH_DEFAULTS, "--worth")
    warnings = comparability_warnings(reports, labels)
    points, missing = [], []
    if risk_name and worth_name:
        for label, report in zip(labels, reports):
            x, y = _point(report["figures"].get(risk_name)), _point(report["figures"].get(worth_name))
            if x is None or y is None:
                missing.append(label)
            else:
                points.append({"label": label, "verdict": report["verdict"], "risk": x, "worth": y})
    if missing:
        warnings.append(f"not on the plot (no {risk_name} or {worth_name}): {', '.join(missing)}")
    risk_hib = bool(points and points[0]["risk"]["higher_is_better"])
    worth_hib = bool(points and points[0]["worth"]["higher_is_better"])
    frontier = pareto_frontier(points, risk_hib, worth_hib) if points else []
    plot = frontier_png(points, risk_name, worth_name, risk_hib, worth_hib, frontier) if points else None

    models = [{"label": label, "path": str(Path(p).resolve()), "verdict": r["verdict"], "model": r["model"]["name"],
               "model_hash": r["model"]["hash"], "data": r["data"]["name"], "n_synthetic": r["synthetic"]["n"],
               "reasons": r["reasons"]} for label, p, r in zip(labels, paths, reports)]
    table = gate_table(reports, labels)
    summary = {"format": "synth-audit-compare/1", "created_at": now_utc(), "models": models,
               "risk": risk_name, "worth": worth_name, "points": points, "frontier": frontier,
               "warnings": warnings, "gate_table": table}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result_paths = {"json": readable_by_all(write_json_atomic(out / COMPARE_JSON, summary))}
    if plot is not None:
        result_paths["frontier"] = write_text_atomic(out / FRONTIER_PNG, plot)
    html = environment().get_template("compare.html.j2").render(
        s=summary, css=css(), labels=labels, plot=data_uri(plot, "image/png") if plot else None,
        risk_hib=risk_hib, worth_hib=worth_hib)
    result_paths["html"] = write_text_atomic(out / COMPARE_HTML, html)
    return {"summary": summary, "paths": result_paths}
