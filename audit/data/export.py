"""`audit data export`: one split of a dataset, preprocessed, as an image folder + manifest.csv.

This is the bridge from a dataset preset (DICOM tree, NIfTI manifest) to the folder-level tools such as
`audit replicas --train DIR --holdout DIR`. The folder reader reads the result back exactly (16-bit PNG is
lossless to 1/65535; volumes are float32 NIfTI). Re-running into the same folder resumes: files already written
are kept, so an interrupted export finishes with the same folder an uninterrupted one writes.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from audit.data.dataset import ImageDataset
from audit.data.imageio import image_file_name, write_image_file
from audit.data.records import Record, SkippedFile
from audit.errors import AuditInputError
from audit.jsonio import write_json_atomic
from audit.progress import progress_bar

MANIFEST = "manifest.csv"
RUN_FILE = "export.json"
BASE_COLUMNS = ["file", "id", "patient_id", "split", "view", "laterality", "birads", "density", "findings"]


@dataclass
class ExportResult:
    out: str
    dataset: str
    splits: list[str]
    shape: list[int]
    written: int = 0
    kept: int = 0
    failed: list[dict] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.failed


def safe_stem(record_id: str) -> str:
    """Record ids become file names: keep them readable, never a path."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in record_id).lstrip(".") or "image"


def manifest_row(record: Record, file_name: str) -> dict[str, str]:
    labels = record.labels
    row = {"file": file_name, "id": record.id, "patient_id": record.patient_id, "split": record.split,
           "view": record.view or "", "laterality": record.laterality or "",
           "birads": "" if labels.birads is None else str(labels.birads), "density": labels.density or "",
           "findings": ";".join(labels.findings)}
    row.update({key: str(value) for key, value in labels.extra})
    return row


def _read_run_file(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        raise AuditInputError(path, "unreadable export record (not JSON); remove the folder to export again") from None
    return data if isinstance(data, dict) else None


def export_dataset(dataset: ImageDataset, out: str | Path, splits: list[str], resume_key: dict) -> ExportResult:
    out = Path(out)
    run_file = out / RUN_FILE
    if out.exists() and not out.is_dir():
        raise AuditInputError(out, "--out exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        previous = _read_run_file(run_file)
        if previous is None or previous.get("key") != resume_key:
            raise AuditInputError(out, "output folder is not empty and is not an export of the same data and "
                                       "config (refusing to overwrite)")
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".*.tmp*"):  # a crash mid-write leaves its temp file (never under a final name)
        stale.unlink()
    write_json_atomic(run_file, {"key": resume_key})
    subset = dataset.subset(split=splits)
    if len(subset) == 0:
        raise AuditInputError(None, f"dataset '{dataset.name}' has no images in split(s) {', '.join(splits)}")
    result = ExportResult(out=str(out), dataset=dataset.name, splits=splits, shape=list(dataset.shape))
    # files the reader listed for these splits but could not use (missing, unreadable header) are failures of
    # this export too; files excluded by rule (FOR PROCESSING) are not
    result.failed.extend(asdict(s) for s in dataset.skipped
                         if s.kind == "failed" and (s.split is None or s.split in splits))
    total = len(subset) + len(result.failed)
    rows, used = [], set()
    for record in progress_bar(subset.records, desc=f"export {'+'.join(splits)}"):
        stem = safe_stem(record.id)
        while stem in used:  # two ids that sanitise alike still get two files
            stem += "_"
        used.add(stem)
        name = image_file_name(stem, dataset.ndim)
        if (out / name).is_file():
            result.kept += 1
        else:
            try:
                image, _ = subset.load(record)
            except AuditInputError as err:
                result.failed.append(asdict(SkippedFile(record.path, err.problem)))
                continue
            write_image_file(image, out / name)
            result.written += 1
        rows.append(manifest_row(record, name))
    extra_columns = sorted({k for row in rows for k in row} - set(BASE_COLUMNS))
    tmp = out / f".{MANIFEST}.tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=BASE_COLUMNS + extra_columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / MANIFEST)
    write_json_atomic(run_file, {"key": resume_key, "result": {**asdict(result), "complete": result.complete}})
    if result.failed:
        first = result.failed[0]
        raise AuditInputError(out, f"export INCOMPLETE: {len(result.failed)} of {total} images failed "
                                   f"(first: {first['path']}: {first['reason']}); the others are written and every "
                                   f"failure is listed in {RUN_FILE} — fix or remove those inputs and rerun to finish")
    return result
