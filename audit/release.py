"""`audit run --release DIR`: the synthetic set a governance office may sign off, and the proof of what it signed.

Policy (fail closed):
- released only when the verdict is PASS or WARN — a FAIL (evidence of a problem) or an ERROR (an incomplete
  audit) writes nothing;
- released only when every stage that flags images (replicas, reid) ran: otherwise nobody knows which images to
  remove;
- every image any stage flagged is left out; the others are *copied* (the user's files are never moved or
  changed);
- the manifest keeps labels and conditions but no patient identifiers (no `source_id`, no `patient_id`, no column
  naming a patient, source, name, date, accession number, institution or physician);
- release.json holds the sha256 of report.json and of every released file, so the office can later prove what it
  signed. The folder is built beside its final place and renamed in: a crash leaves the previous release or none.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

from audit.checkpoints import file_sha256
from audit.errors import AuditInputError

RELEASE_FILE = "release.json"
MANIFEST = "manifest.csv"
RELEASABLE_VERDICTS = ("PASS", "WARN")
FLAGGING_STAGES = ("replicas", "reid")
IDENTIFYING_WORDS = ("patient", "source", "name", "date", "accession", "institution", "physician", "birth")
RESERVED_IN_OUT = ("generate", "fidelity", "utility", "reid", "membership", "replicas")



def check_release_target(release: Path, out: Path, model: Path) -> None:
    """Checked before any work: the release folder must be new, empty, or a previous release — never the
    audit's own folders or the user's model."""
    target = release.resolve()
    out, model = out.resolve(), model.resolve()
    if target == out or target in out.parents:
        raise AuditInputError(release, "--release must not be --out or contain it")
    if target == model or model in target.parents or target in model.parents:
        raise AuditInputError(release, "--release must not overlap the model folder (the user's files are never "
                                       "modified)")
    if out in target.parents and target.relative_to(out).parts[0] in RESERVED_IN_OUT:
        raise AuditInputError(release, "--release must not be one of the audit's stage folders")
    if target.exists():
        if not target.is_dir():
            raise AuditInputError(release, "--release exists and is not a folder")
        if any(target.iterdir()) and not (target / RELEASE_FILE).is_file():
            raise AuditInputError(release, "--release exists, is not empty and holds no previous release; "
                                           "choose a new or empty folder")


def strip_identifiers(columns: list[str]) -> list[str]:
    return [c for c in columns if c not in ("source_id", "patient_id")
            and not any(word in c.lower() for word in IDENTIFYING_WORDS)]


def manifest_rows(records, root: Path) -> tuple[list[str], list[dict[str, str]]]:
    rows = []
    for record in records:
        rel = Path(os.path.relpath(record.path, root)).as_posix()
        labels = record.labels
        row = {"file": rel, "id": record.id, "view": record.view or "", "laterality": record.laterality or "",
               "birads": "" if labels.birads is None else str(labels.birads), "density": labels.density or "",
               "findings": ";".join(labels.findings)}
        row.update({str(k): str(v) for k, v in labels.extra})
        rows.append(row)
    first = ["file", "id", "view", "laterality", "birads", "density", "findings"]
    others = sorted({k for r in rows for k in r} - set(first))
    columns = strip_identifiers(first + others)
    return columns, [{c: r.get(c, "") for c in columns} for r in rows]


def refusal(report: Mapping[str, Any], records: Mapping[str, Any]) -> str | None:
    if report["verdict"] not in RELEASABLE_VERDICTS:
        return f"the verdict is {report['verdict']}; a release needs PASS or WARN"
    for name in FLAGGING_STAGES:
        record = records.get(name)
        if record is not None and record.status != "ok":
            return (f"stage '{name}' did not run ({record.status}: {record.reason}), so the images it would flag "
                    "are unknown")
    return None


def release_synthetic_set(release: Path, report: Mapping[str, Any], report_json: Path, records: Mapping[str, Any],
                          synthetic, out: Path) -> dict[str, Any]:
    """Write the release (or refuse, writing nothing). Returns what was done, for the command's summary."""
    from audit.jsonio import write_json_atomic
    from audit.pipeline import now_utc
    from generators.checkpoint import atomic_folder, recover_interrupted_save
    from reports.report import readable_by_all

    why_not = refusal(report, records)
    if why_not is not None or synthetic is None:
        return {"released": False, "folder": str(release), "reason": why_not or "no synthetic images"}
    root = Path(report["synthetic"].get("images") or "")
    flagged = {i for record in records.values() for i in record.output.flagged_ids}
    kept = [r for r in synthetic.records if r.id not in flagged]
    removed = sorted(r.id for r in synthetic.records if r.id in flagged)

    release = Path(release)
    recover_interrupted_save(release)
    with atomic_folder(release) as scratch:  # built beside its place, renamed in: never half a release
        columns, rows = manifest_rows(kept, root)
        images = []
        for record, row in zip(kept, rows):
            rel = row["file"]
            if rel.startswith("../") or Path(rel).is_absolute():
                raise AuditInputError(record.path, "is outside the synthetic set's folder")
            target = scratch / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(record.path, target)  # a copy: the user's file stays where it is, untouched
            images.append({"file": rel, "sha256": file_sha256(target)})
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (scratch / MANIFEST).write_text(text.getvalue())
        summary = {"format": "synth-audit-release/1", "created_at": now_utc(), "verdict": report["verdict"],
                   "report": str(Path(report_json).resolve()), "report_sha256": file_sha256(Path(report_json)),
                   "model_hash": report["model"]["hash"], "data_records_hash": report["data"]["records_hash"],
                   "gates_hash": report["gates"]["hash"], "n_released": len(images), "n_removed": len(removed),
                   "removed_ids": removed, "manifest_sha256": file_sha256(scratch / MANIFEST), "images": images}
        readable_by_all(write_json_atomic(scratch / RELEASE_FILE, summary))
    return {"released": True, "folder": str(release), "n_released": len(images), "n_removed": len(removed)}
