"""VinDr-Mammo reader, for the published layout:

    ROOT/breast-level_annotations.csv   study_id, series_id, image_id, laterality, view_position, height, width,
                                        breast_birads ("BI-RADS n"), breast_density ("DENSITY X"), split
    ROOT/finding_annotations.csv        same + finding_categories ("['Mass', ...]"), finding_birads, xmin..ymax
    ROOT/metadata.csv                   optional, DICOM attribute names as columns (not needed here)
    ROOT/images/<study_id>/<image_id>.dicom

patient_id = study_id (VinDr keeps no patient id). "FOR PROCESSING" images are excluded and counted. Headers are
read once (technical tags only) and remembered by file identity, so later scans only `stat` the files.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from audit.config import DataConfig, PreprocessConfig
from audit.data.csvio import read_csv_rows
from audit.data.cache import default_cache_dir, file_identity
from audit.data.dicom import read_dicom_display, read_header, technical_tags
from audit.data.preprocess2d import preprocess_mammogram, transform_boxes
from audit.data.records import Box, Labels, Record, SkippedFile
from audit.errors import AuditInputError

BREAST_CSV = "breast-level_annotations.csv"
FINDING_CSV = "finding_annotations.csv"
BREAST_COLUMNS = ("study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
                  "breast_birads", "breast_density", "split")
FINDING_COLUMNS = ("image_id", "finding_categories", "finding_birads", "xmin", "ymin", "xmax", "ymax")
SPLIT_NAMES = {"training": "train", "train": "train", "test": "test", "validation": "val", "val": "val"}
NO_FINDING = "No Finding"


def parse_birads(text: str | None) -> int | None:
    match = re.search(r"([1-6])", text or "")
    return int(match.group(1)) if match else None


def parse_density(text: str | None) -> str | None:
    match = re.search(r"DENSITY\s*([A-D])", (text or "").upper())
    return match.group(1) if match else None


def parse_categories(text: str, where: Path) -> list[str]:
    try:
        value = ast.literal_eval(text) if text.strip() else []
    except (ValueError, SyntaxError):
        raise AuditInputError(where, f"finding_categories is not a list: {text[:60]!r}") from None
    if isinstance(value, str):
        value = [value]
    return [str(v).strip() for v in value]


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def read_findings(path: Path) -> dict[str, tuple[list[str], list[Box]]]:
    """image_id → (finding categories, boxes in original pixels)."""
    out: dict[str, tuple[list[str], list[Box]]] = defaultdict(lambda: ([], []))
    for row in read_csv_rows(path, "CSV", FINDING_COLUMNS, allow_empty=True):
        categories = [c for c in parse_categories(row["finding_categories"], path) if c != NO_FINDING]
        image_findings, image_boxes = out[row["image_id"].strip()]
        for c in categories:
            if c not in image_findings:
                image_findings.append(c)
        coords = [_float_or_none(row.get(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        if categories and all(c is not None for c in coords):
            image_boxes.append(Box(*coords, category=categories[0], birads=parse_birads(row.get("finding_birads"))))
    return dict(out)


class HeaderMemo:
    """Technical tags per file identity, on disk, so a re-scan never opens a DICOM it has seen."""

    def __init__(self, cache_root: Path):
        self.folder = cache_root / "dicom-headers"

    def _path(self, identity: str) -> Path:
        return self.folder / f"{hashlib.sha256(identity.encode()).hexdigest()}.json"

    def tags(self, path: Path) -> dict:
        identity = file_identity(path)
        memo = self._path(identity)
        if memo.exists():
            try:
                return json.loads(memo.read_text())
            except (OSError, ValueError):
                pass
        tags = technical_tags(read_header(path))
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(tags))
        os.replace(tmp, memo)
        return tags


class VinDrReader:
    def scan(self, cfg: DataConfig) -> tuple[list[Record], list[SkippedFile]]:
        root = Path(cfg.root)
        breast_csv = root / BREAST_CSV
        if not breast_csv.is_file():
            raise AuditInputError(breast_csv, "not found (is --data-root a VinDr-Mammo folder?)")
        if cfg.preprocess.ndim != 2:
            raise AuditInputError(breast_csv, f"VinDr-Mammo is 2D but the config shape is {cfg.preprocess.shape}")
        rows = read_csv_rows(breast_csv, "CSV", BREAST_COLUMNS, allow_empty=True)
        finding_csv = root / FINDING_CSV
        findings = read_findings(finding_csv) if finding_csv.is_file() else {}
        memo = HeaderMemo(cfg.cache_dir or default_cache_dir())
        records: list[Record] = []
        skipped: list[SkippedFile] = []
        from audit.progress import progress_bar

        for row in progress_bar(rows, desc="scan VinDr-Mammo") if len(rows) > 200 else rows:
            study, image = row["study_id"].strip(), row["image_id"].strip()
            path = root / "images" / study / f"{image}.dicom"
            split = SPLIT_NAMES.get(row["split"].strip().lower())
            if split is None:
                raise AuditInputError(breast_csv, f"unknown split '{row['split']}' for image {image}")
            if not path.is_file():
                skipped.append(SkippedFile(str(path), f"listed in {BREAST_CSV} but missing"))
                continue
            if cfg.preprocess.skip_for_processing:
                try:
                    intent = str(memo.tags(path).get("PresentationIntentType", "")).upper()
                except AuditInputError as err:
                    skipped.append(SkippedFile(str(path), err.problem))
                    continue
                if intent == "FOR PROCESSING":
                    skipped.append(SkippedFile(str(path), "FOR PROCESSING image (raw detector data)", kind="excluded"))
                    continue
            categories, boxes = findings.get(image, ([], []))
            labels = Labels(birads=parse_birads(row["breast_birads"]), density=parse_density(row["breast_density"]),
                            findings=tuple(categories))
            records.append(Record(id=image, patient_id=study, split=split, modality="MG", path=str(path),
                                  view=row["view_position"].strip().upper() or None,
                                  laterality=row["laterality"].strip().upper() or None, labels=labels,
                                  boxes=tuple(boxes)))
        return records, skipped

    def decode(self, record: Record, pre: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
        dicom = read_dicom_display(record.path)
        image, geometry = preprocess_mammogram(
            dicom.pixels, dicom.padding, record.laterality, tuple(pre.shape), crop_to_breast=pre.crop_to_breast,
            flip_right_to_left=pre.flip_right_to_left, intensity_percentiles=pre.intensity_percentiles)
        boxes = np.array([[b.xmin, b.ymin, b.xmax, b.ymax] for b in record.boxes], np.float32).reshape(-1, 4)
        return image, transform_boxes(boxes, geometry)
