"""report.html and report.md from report.json, through the Jinja2 templates in reports/templates/.

The HTML is one self-contained file: styles inline, every image a data URI, no script, and a Content-Security-
Policy that forbids any request (so it opens offline and a hostile string cannot load or run anything). All text
that comes from files or users — file names, ids, captions, errors — is autoescaped by Jinja2, never markup.
"""

from __future__ import annotations

import base64
import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote

from audit.gates import fmt

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp", ".svg": "image/svg+xml"}

VERDICT_SENTENCES = {
    "PASS": "Release may proceed: every release gate passed and every required check ran.",
    "WARN": "No gate found evidence of a problem, but at least one gate warned or could not be decided at this "
            "sample size. Read the gates marked WARN before signing off.",
    "FAIL": "Do not release: at least one gate found evidence of a privacy or quality problem.",
    "ERROR": "The audit is incomplete: a check failed, was skipped, or a gate had no figure to judge. This report "
             "cannot support a release decision.",
}

# the four questions of the audit, in the order a reader asks them, with the stages that answer each
QUESTIONS = (
    ("copies", "Does the model copy patients' images?", ("replicas",),
     "Every synthetic image is compared with the training images. An image is flagged as a copy when it is more "
     "similar to a training image than almost all real images the model never saw are — the threshold is "
     "calibrated on those held-out images, so a small share of genuinely new images crosses it by chance (shown "
     "as the held-out share). Flagged images are removed from a release."),
    ("membership", "Can an attacker tell who was in the training set?", ("membership",),
     "An attacker holding a patient's image asks the model whether that image was used for training. An AUC of "
     "0.5 is a coin toss; the share of members exposed at 1 % false positives says how many patients could be "
     "named with near certainty. A control (no members on either side) shows what a biased split alone would "
     "give."),
    ("linkage", "Can an attacker link a synthetic image back to a patient?", ("reid",),
     "A network trained to recognise patients from their images tries to match each synthetic image to the "
     "training patient whose record it was generated from. The risk is the share of synthetic images matched more "
     "confidently than 1 % of pairs of different real patients, above that chance level. The sanity figures show "
     "the attacker does recognise real patients — a weak attacker's low risk would prove nothing."),
    ("worth", "Is the synthetic data worth releasing?", ("fidelity", "utility"),
     "Fidelity compares synthetic and real images in a feature space: FID relative to the FID of held-out real "
     "images against the training images at the same number of images (the floor), precision/recall and "
     "density/coverage. Utility trains one classifier "
     "on synthetic images and one on real images and tests both on real held-out images."),
)

FIGURE_LABELS = {
    "flagged_share": "synthetic images flagged as copies",
    "holdout_flagged_share": "held-out real images over the same threshold (chance level)",
    "auc": "attack AUC (0.5 = chance)",
    "tpr_at_fpr_1pct": "members exposed at 1 % false positives",
    "tpr_at_fpr_0.1pct": "members exposed at 0.1 % false positives",
    "balanced_accuracy": "balanced accuracy",
    "control_auc": "control AUC (no members; should be 0.5)",
    "dcr/share": "synthetic images closer to a training image than to any held-out one",
    "sanity/map_at_r": "attacker sanity: mAP@R on held-out real patients",
    "sanity/precision_at_1": "attacker sanity: precision@1 on held-out real patients",
    "sanity/verification_auc": "attacker sanity: same/different patient AUC",
    "map_at_r": "mAP@R of synthetic images against training patients",
    "map_at_r_chance": "mAP@R expected by chance",
    "rate_at_fpr_1pct": "synthetic images linked to their patient at 1 % false matches",
    "rate_at_fpr_0.1pct": "synthetic images linked to their patient at 0.1 % false matches",
    "control/rate_at_fpr_1pct": "held-out real images linked at 1 % false matches (control)",
    "risk_at_fpr_1pct": "re-identification risk above chance (1 % false matches)",
    "risk_at_fpr_0.1pct": "re-identification risk above chance (0.1 % false matches)",
    "fid": "FID (synthetic vs real)",
    "kid": "KID (synthetic vs real)",
    "precision": "precision (synthetic images inside the real manifold)",
    "recall": "recall (real images covered by the synthetic manifold)",
    "density": "density",
    "coverage": "coverage",
    "real_floor/fid": "FID of held-out real vs training images (floor)",
    "real_floor/kid": "KID of held-out real vs training images (floor)",
    "fid_over_floor": "FID relative to the real-vs-real floor",
    "tstr_auc": "AUC trained on synthetic, tested on real",
    "trtr_auc": "AUC trained on real, tested on real",
    "gap": "AUC lost by training on synthetic (real − synthetic)",
    "mixed_auc": "AUC trained on real + synthetic, tested on real",
}

STATUS_WORDS = {"ok": "ran", "skipped": "skipped", "error": "FAILED", "not_requested": "not requested"}
DETAILS_LIMIT = 20000
FLAGGED_SHOWN = 50


def figure_label(figure: str) -> str:
    """Plain words for a figure name without its stage (`loss/auc` → 'loss: attack AUC (0.5 = chance)')."""
    if figure in FIGURE_LABELS:
        return FIGURE_LABELS[figure]
    head, _, tail = figure.rpartition("/")
    if tail in FIGURE_LABELS and head:
        return f"{head}: {FIGURE_LABELS[tail]}"
    return figure


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def estimate_text(est: Mapping[str, Any] | None) -> str:
    if not est:
        return "—"
    value = fmt(est.get("value"))
    if _finite(est.get("ci_low")) and _finite(est.get("ci_high")):
        return f"{value} [{fmt(est['ci_low'])}, {fmt(est['ci_high'])}]"
    return value


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _artefact_views(out: Path, stage: str, artefacts: Mapping[str, Mapping[str, str]]) -> tuple[list, list]:
    """Images to embed (plots, galleries) and files to link (tables, data, anything not an image)."""
    images, links = [], []
    for name, art in artefacts.items():
        path = out / stage / art["path"]
        rel = f"{stage}/{art['path']}"
        mime = IMAGE_TYPES.get(path.suffix.lower())
        view = {"name": name, "caption": art.get("caption") or name, "href": quote(rel), "rel": rel,
                "kind": art["kind"]}
        if art["kind"] in ("plot", "gallery") and mime and path.is_file():
            images.append({**view, "src": data_uri(path.read_bytes(), mime)})
        else:
            links.append({**view, "missing": not path.is_file()})
    return images, links


def figure_rows(name: str, stage: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"name": f"{name}/{fig}", "label": figure_label(fig), "estimate": estimate_text(est),
             "n": est.get("n"), "method": est.get("method"),
             "direction": "higher is better" if est.get("higher_is_better") else "lower is better"}
            for fig, est in stage.get("figures", {}).items()]


def stage_warnings(stage: Mapping[str, Any]) -> list[str]:
    """The plain-language caveats a stage attached to its figures (`details.warnings`, e.g. a re-id attacker too
    weak for its privacy figures to be more than a lower bound): shown beside the figures, never only in the
    collapsed details."""
    warnings = stage.get("details", {}).get("warnings") or []
    return [str(w) for w in warnings] if isinstance(warnings, (list, tuple)) else [str(warnings)]


def stage_view(out: Path, name: str, stage: Mapping[str, Any]) -> dict[str, Any]:
    figures = figure_rows(name, stage)
    images, links = _artefact_views(out, name, stage.get("artefacts", {}))
    details = json.dumps(stage.get("details", {}), indent=1, sort_keys=True)
    if len(details) > DETAILS_LIMIT:
        details = details[:DETAILS_LIMIT] + "\n… (cut here; the full details are in report.json)"
    flagged = list(stage.get("flagged_ids", []))
    return {"name": name, "status": stage["status"], "status_words": STATUS_WORDS[stage["status"]],
            "reason": stage.get("reason"), "seconds": stage.get("seconds"), "figures": figures,
            "skipped": sorted(stage.get("skipped", {}).items()), "warnings": stage_warnings(stage),
            "images": images, "links": links,
            "flagged_count": len(flagged), "flagged": flagged[:FLAGGED_SHOWN], "details": details,
            "parameters": json.dumps(stage.get("parameters", {}), indent=1, sort_keys=True)}


def question_views(out: Path, report: Mapping[str, Any]) -> list[dict[str, Any]]:
    stages = report["stages"]
    views, claimed = [], {"generate"}
    for key, title, names, intro in QUESTIONS:
        present = [n for n in names if n in stages]
        claimed.update(names)
        if present:
            views.append({"key": key, "title": title, "intro": intro,
                          "stages": [stage_view(out, n, stages[n]) for n in present]})
    others = [n for n in stages if n not in claimed]
    if others:
        views.append({"key": "other", "title": "Other checks", "intro": "",
                      "stages": [stage_view(out, n, stages[n]) for n in others]})
    return views


def gate_views(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{**g, "label": g.get("title") or figure_label(g["metric"].partition("/")[2]), "estimate_text": estimate_text(g.get("estimate")),
             "rule": f"{g['on']} {g['op']} {g['threshold']:g}", "n": (g.get("estimate") or {}).get("n")}
            for g in report["gates"]["results"]]


@lru_cache(maxsize=1)
def environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(loader=PackageLoader("reports", "templates"), undefined=StrictUndefined,
                      autoescape=select_autoescape(enabled_extensions=("html", "html.j2"), default=False),
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["fmt"] = fmt
    env.filters["md"] = markdown_text
    # inside a code span everything is literal but a backtick (ends it) and, in a table, a pipe (ends the cell)
    env.filters["mdcode"] = lambda v: str(v).replace("`", "'").replace("|", "\\|").replace("\n", " ")
    env.filters["seconds"] = lambda s: "—" if s is None else f"{s:.1f} s"
    return env


def css() -> str:
    from importlib import resources

    return (resources.files("reports") / "templates" / "style.css").read_text()


def render_html(report: Mapping[str, Any], out: Path, gate_chart: bytes | None) -> str:
    template = environment().get_template("report.html.j2")
    return template.render(r=report, css=css(), verdict_sentence=VERDICT_SENTENCES[report["verdict"]],
                           gates=gate_views(report), questions=question_views(Path(out), report),
                           gate_chart=data_uri(gate_chart, "image/png") if gate_chart else None,
                           stage_rows=[stage_view(Path(out), n, s) for n, s in report["stages"].items()],
                           config_json=json.dumps(report["config"], indent=1, sort_keys=True),
                           provenance=report["provenance"])


def markdown_text(value: Any) -> str:
    """Text safe inside a Markdown table cell: no raw HTML, no table breaks, no emphasis or link syntax."""
    text = str(value).replace("\r", " ").replace("\n", " ")
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for ch in "\\`*_[]|#!":
        text = text.replace(ch, "\\" + ch)
    return text


def render_markdown(report: Mapping[str, Any], has_gate_chart: bool) -> str:
    template = environment().get_template("report.md.j2")
    links = [{"stage": stage, "caption": art.get("caption") or name, "kind": art["kind"],
              "href": quote(f"{stage}/{art['path']}")}
             for stage, s in report["stages"].items() for name, art in s.get("artefacts", {}).items()]
    key_figures = [{"stage": n, **f} for n, s in report["stages"].items() for f in figure_rows(n, s)]
    warnings = [{"stage": n, "text": w} for n, s in report["stages"].items() for w in stage_warnings(s)]
    return template.render(r=report, verdict_sentence=VERDICT_SENTENCES[report["verdict"]], gates=gate_views(report),
                           key_figures=key_figures, links=links, warnings=warnings, has_gate_chart=has_gate_chart)
