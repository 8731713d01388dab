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

import hashlib
import json
import math
import os
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from audit.config import DataConfig, PreprocessConfig
from audit.data import labels
from audit.data.csvio import check_unique, read_csv_rows
from audit.data.cache import default_cache_dir, file_identity
from audit.data.dicom import read_dicom_display, read_header, technical_tags
from audit.data.paths import inside_root
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


def parse_birads(text: str | None, where: Path | None = None, column: str = "breast_birads",
                 line: int | None = None) -> int | None:
    return labels.parse_birads(text, where, column, line)


def parse_density(text: str | None, where: Path | None = None, line: int | None = None) -> str | None:
    return labels.parse_density(text, where, "breast_density", line)


def parse_categories(text: str, where: Path, line: int | None = None) -> list[str]:
    return labels.parse_finding_list(text, where, "finding_categories", line)


def _box_coords(row: dict[str, str], where: Path, line: int | None) -> list[float] | None:
    """All four of xmin..ymax empty → no box; four finite numbers with min < max → the box; else an error."""
    texts = [(row.get(k) or "").strip() for k in ("xmin", "ymin", "xmax", "ymax")]
    if not any(texts):
        return None
    try:
        coords = [float(t) for t in texts]
    except ValueError:
        coords = []
    if len(coords) != 4 or not all(math.isfinite(c) for c in coords) or coords[0] > coords[2] \
            or coords[1] > coords[3]:
        raise AuditInputError(where, f"line {line}: bad box xmin,ymin,xmax,ymax = {','.join(texts)!r} "
                                     "(four numbers with min <= max, or all four empty)")
    return coords


def read_findings(path: Path) -> dict[str, tuple[list[str], list[Box]]]:
    """image_id → (finding categories, boxes in original pixels)."""
    out: dict[str, tuple[list[str], list[Box]]] = defaultdict(lambda: ([], []))
    rows = read_csv_rows(path, "CSV", FINDING_COLUMNS, allow_empty=True)
    for i, row in enumerate(rows):
        line = rows.line(i)
        categories = [c for c in parse_categories(row["finding_categories"], path, line) if c != NO_FINDING]
        finding_birads = parse_birads(row.get("finding_birads"), path, "finding_birads", line)
        image_findings, image_boxes = out[row["image_id"].strip()]
        for c in categories:
            if c not in image_findings:
                image_findings.append(c)
        coords = _box_coords(row, path, line)
        if categories and coords is not None:
            image_boxes.append(Box(*coords, category=categories[0], birads=finding_birads))
    return dict(out)


def _path_component(value: str, column: str, where: Path, line: int | None) -> str:
    """study_id / image_id become folder and file names: one plain name each, never a path."""
    text = value.strip()
    if not text or text in (".", "..") or any(c in text for c in "/\\\0") or not text.isprintable():
        raise AuditInputError(where, f"line {line}: {column} {text[:80]!r} is not a plain name (it names a file)")
    return text


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
        check_unique(rows, "image_id", "image_id")
        finding_csv = root / FINDING_CSV
        findings = read_findings(finding_csv) if finding_csv.is_file() else {}
        memo = HeaderMemo(cfg.cache_dir or default_cache_dir())
        records: list[Record] = []
        skipped: list[SkippedFile] = []
        from audit.progress import progress_bar

        for i, row in enumerate(progress_bar(rows, desc="scan VinDr-Mammo") if len(rows) > 200 else rows):
            line = rows.line(i)
            study = _path_component(row["study_id"], "study_id", breast_csv, line)
            image = _path_component(row["image_id"], "image_id", breast_csv, line)
            path = inside_root(root, f"images/{study}/{image}.dicom", breast_csv, line, column="image_id")
            split = SPLIT_NAMES.get(row["split"].strip().lower())
            if split is None:
                raise AuditInputError(breast_csv, f"line {line}: unknown split {row['split'][:40]!r} for image "
                                                  f"{image!r} (expected training or test)")
            labels_of_row = Labels(birads=parse_birads(row["breast_birads"], breast_csv, "breast_birads", line),
                                   density=parse_density(row["breast_density"], breast_csv, line))
            laterality = labels.parse_laterality(row["laterality"], breast_csv, "laterality", line)
            if laterality is None:  # it decides the mirroring and the boxes: a mammogram always has a side
                raise AuditInputError(breast_csv, f"laterality on line {line} is empty, expected L or R")
            if not path.is_file():
                skipped.append(SkippedFile(str(path), f"listed in {BREAST_CSV} (line {line}) but missing",
                                           split=split))
                continue
            if cfg.preprocess.skip_for_processing:
                try:
                    intent = str(memo.tags(path).get("PresentationIntentType", "")).upper()
                except AuditInputError as err:
                    skipped.append(SkippedFile(str(path), err.problem, split=split))
                    continue
                if intent == "FOR PROCESSING":
                    skipped.append(SkippedFile(str(path), "FOR PROCESSING image (raw detector data)",
                                               kind="excluded", split=split))
                    continue
            categories, boxes = findings.get(image, ([], []))
            records.append(Record(id=image, patient_id=study, split=split, modality="MG", path=str(path),
                                  view=row["view_position"].strip().upper() or None, laterality=laterality,
                                  labels=replace(labels_of_row, findings=tuple(categories)), boxes=tuple(boxes)))
        return records, skipped

    def decode(self, record: Record, pre: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
        dicom = read_dicom_display(record.path)
        image, geometry = preprocess_mammogram(
            dicom.pixels, dicom.padding, record.laterality, tuple(pre.shape), crop_to_breast=pre.crop_to_breast,
            flip_right_to_left=pre.flip_right_to_left, intensity_percentiles=pre.intensity_percentiles)
        boxes = np.array([[b.xmin, b.ymin, b.xmax, b.ymax] for b in record.boxes], np.float32).reshape(-1, 4)
        return image, transform_boxes(boxes, geometry)
