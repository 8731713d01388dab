"""Folder reader: a directory of images (synthetic or external), with an optional manifest CSV.

Manifest columns: `file` (path relative to the folder, required), and optionally `id`, `patient_id`, `split`,
`source_id`, `view`, `laterality`, `birads`, `density`, `findings` (`;`-separated); any other column is kept as
a label. Without a manifest every image file under the folder is a record whose id is its relative path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import ValidationError

from audit.config import DataConfig, PreprocessConfig
from audit.data.csvio import check_unique, read_csv_rows
from audit.data.imageio import IMAGE_SUFFIXES, fit_to_shape, is_image_file, read_image, to_unit_range
from audit.data.labels import parse_birads, parse_density, parse_laterality, split_findings
from audit.data.paths import check_inside, inside_root
from audit.data.records import Labels, Record, SkippedFile
from audit.errors import AuditInputError

KNOWN_COLUMNS = {"file", "id", "patient_id", "split", "source_id", "view", "laterality", "birads", "density",
                 "findings"}
DEFAULT_MANIFEST = "manifest.csv"


def list_image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p) and not p.name.startswith("."))


def _record_from_row(folder: Path, row: dict[str, str], manifest: Path, modality: str, line: int | None) -> Record:
    rel = row["file"].strip()
    path = inside_root(folder, rel, manifest, line, column="file")
    extra = tuple(sorted((k, v) for k, v in row.items() if k not in KNOWN_COLUMNS and k))
    labels = Labels(birads=parse_birads(row.get("birads"), manifest, "birads", line),
                    density=parse_density(row.get("density"), manifest, "density", line),
                    findings=split_findings(row.get("findings")), extra=extra)
    rid = (row.get("id") or "").strip() or rel
    return Record(id=rid, patient_id=(row.get("patient_id") or "").strip() or rid,
                  split=(row.get("split") or "").strip() or "all", modality=modality, path=str(path),
                  view=(row.get("view") or "").strip() or None,
                  laterality=parse_laterality(row.get("laterality"), manifest, "laterality", line),
                  labels=labels, source_id=(row.get("source_id") or "").strip() or None)


def read_manifest(folder: Path, manifest: Path, modality: str = "OT") -> tuple[list[Record], list[SkippedFile]]:
    """Every row a record. A listed file that is missing, a path leaving the folder, a repeated file or id, or a
    bad label is an error naming the manifest and the line: a folder's manifest is written by a tool (export,
    generate), so a mismatch means the folder is incomplete, and auditing part of it silently would mislead."""
    rows = read_csv_rows(manifest, "manifest")
    if "file" not in rows[0]:
        raise AuditInputError(manifest, "manifest lacks the required column 'file'")
    check_unique(rows, "file", "file")
    check_unique(rows, "id", "id")
    records = []
    for i, row in enumerate(rows):
        record = _record_from_row(folder, row, manifest, modality, rows.line(i))
        if not Path(record.path).is_file():
            raise AuditInputError(manifest, f"line {rows.line(i)}: lists {row['file'].strip()!r}, which is not a "
                                            f"file in {folder}")
        records.append(record)
    return records, []


def scan_folder(folder: str | Path, manifest: str | Path | None = None,
                modality: str = "OT") -> tuple[list[Record], list[SkippedFile]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise AuditInputError(folder, "not a folder")
    manifest_path = Path(manifest) if manifest else folder / DEFAULT_MANIFEST
    if manifest and not manifest_path.is_absolute():
        manifest_path = folder / manifest_path
    if manifest_path.is_file():
        return read_manifest(folder, manifest_path, modality)
    if manifest:
        raise AuditInputError(manifest_path, "manifest not found")
    files = [check_inside(folder, p) for p in list_image_files(folder)]
    if not files:
        raise AuditInputError(folder, f"no image files (accepted: {', '.join(IMAGE_SUFFIXES)})")
    records = [Record(id=p.relative_to(folder).as_posix(), patient_id=p.relative_to(folder).as_posix(),
                      split="all", modality=modality, path=str(p)) for p in files]
    return records, []


def decode_any(record: Record, pre: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Any accepted file → float32 [0, 1] of the configured shape; a 2D/3D mismatch is an error."""
    raw = read_image(record.path)
    if raw.ndim != pre.ndim:
        kind = {2: "a 2D image", 3: "a 3D volume"}
        raise AuditInputError(record.path, f"{kind[raw.ndim]} where the set is {pre.ndim}D (shape {tuple(pre.shape)})")
    return fit_to_shape(to_unit_range(raw), tuple(pre.shape)), np.zeros((0, 4), np.float32)


class FolderReader:
    def scan(self, cfg: DataConfig) -> tuple[list[Record], list[SkippedFile]]:
        return scan_folder(cfg.root, cfg.manifest, cfg.modality)

    def decode(self, record: Record, pre: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
        return decode_any(record, pre)


def open_folder(folder: str | Path, shape: tuple[int, ...] | None = None, manifest: str | None = None,
                use_cache: bool = False, name: str | None = None):
    """An ImageDataset over a folder. Without `shape`, the first image's shape (all others resampled to it)."""
    from audit.data.dataset import dataset_from_scan

    folder = Path(folder)
    records, skipped = scan_folder(folder, manifest)
    if shape is None:
        if not records:
            raise AuditInputError(folder, f"no usable images found ({len(skipped)} listed files are missing)")
        shape = tuple(read_image(records[0].path).shape)
        if min(shape) < 4:
            raise AuditInputError(records[0].path, f"image of shape {shape} is too small to set the folder's shape "
                                                   "(every side must be at least 4 pixels)")
    try:
        preprocess = PreprocessConfig(shape=tuple(shape))
    except ValidationError as err:
        raise AuditInputError(folder, f"shape {tuple(shape)}: {err.errors()[0]['msg']}") from None
    cfg = DataConfig(name=name or folder.name, reader="folder", root=folder, manifest=manifest,
                     preprocess=preprocess)
    return dataset_from_scan(cfg, records, skipped, decode_any, use_cache)
