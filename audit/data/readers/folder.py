"""Folder reader: a directory of images (synthetic or external), with an optional manifest CSV.

Manifest columns: `file` (path relative to the folder, required), and optionally `id`, `patient_id`, `split`,
`source_id`, `view`, `laterality`, `birads`, `density`, `findings` (`;`-separated); any other column is kept as
a label. Without a manifest every image file under the folder is a record whose id is its relative path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from audit.config import DataConfig, PreprocessConfig
from audit.data.csvio import read_csv_rows
from audit.data.imageio import IMAGE_SUFFIXES, fit_to_shape, is_image_file, read_image, to_unit_range
from audit.data.records import Labels, Record, SkippedFile
from audit.errors import AuditInputError

KNOWN_COLUMNS = {"file", "id", "patient_id", "split", "source_id", "view", "laterality", "birads", "density",
                 "findings"}
DEFAULT_MANIFEST = "manifest.csv"


def list_image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p) and not p.name.startswith("."))


def _optional_int(value: str | None, where: Path, column: str) -> int | None:
    if value is None or value.strip() == "":
        return None
    try:
        return int(float(value))
    except ValueError:
        raise AuditInputError(where, f"column '{column}' has a non-number '{value}'") from None


def _record_from_row(folder: Path, row: dict[str, str], manifest: Path, modality: str) -> Record:
    rel = row["file"].strip()
    extra = tuple(sorted((k, v) for k, v in row.items() if k not in KNOWN_COLUMNS and k is not None))
    findings = tuple(f.strip() for f in (row.get("findings") or "").split(";") if f.strip())
    labels = Labels(birads=_optional_int(row.get("birads"), manifest, "birads"),
                    density=(row.get("density") or None), findings=findings, extra=extra)
    rid = (row.get("id") or rel).strip()
    return Record(id=rid, patient_id=(row.get("patient_id") or rid).strip(), split=(row.get("split") or "all").strip(),
                  modality=modality, path=str(folder / rel), view=row.get("view") or None,
                  laterality=row.get("laterality") or None, labels=labels,
                  source_id=(row.get("source_id") or None))


def read_manifest(folder: Path, manifest: Path, modality: str = "OT") -> tuple[list[Record], list[SkippedFile]]:
    rows = read_csv_rows(manifest, "manifest")
    if "file" not in rows[0]:
        raise AuditInputError(manifest, "manifest lacks the required column 'file'")
    records, skipped = [], []
    for row in rows:
        record = _record_from_row(folder, row, manifest, modality)
        if Path(record.path).is_file():
            records.append(record)
        else:
            skipped.append(SkippedFile(record.path, "listed in the manifest but missing"))
    return records, skipped


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
    files = list_image_files(folder)
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
    cfg = DataConfig(name=name or folder.name, reader="folder", root=folder, manifest=manifest,
                     preprocess=PreprocessConfig(shape=tuple(shape)))
    return dataset_from_scan(cfg, records, skipped, decode_any, use_cache)
