"""Hand-made DICOM files and a minimal VinDr-Mammo tree for reader tests (independent of the phantom writer)."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MAMMO_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"


def breast_image(h: int = 120, w: int = 90, seed: int = 0, lesion: tuple[int, int] | None = (60, 30)) -> np.ndarray:
    """Attenuation in [0, 1]: a half-disc breast against the left edge, background 0, optional bright blob."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - h / 2) / (h * 0.42)) ** 2 + (xx / (w * 0.8)) ** 2 < 1
    img = np.where(inside, 0.45 + 0.1 * rng.standard_normal((h, w)), 0.0)
    if lesion is not None:
        img += 0.4 * np.exp(-(((yy - lesion[0]) ** 2 + (xx - lesion[1]) ** 2) / 30.0)) * inside
    return np.clip(img, 0, 1)


def write_dicom(path: Path, attenuation: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12,
                intent: str = "FOR PRESENTATION", laterality: str = "L", view: str = "CC",
                padding_value: int | None = None, identity: dict | None = None, window: bool = True) -> Path:
    """Store attenuation [0,1] as uint16; MONOCHROME1 stores it inverted, as real detectors do."""
    top = 2 ** bits - 1
    stored = np.round(attenuation * (top - 100) + 50).astype(np.uint16)
    background = attenuation <= 0
    if photometric == "MONOCHROME1":
        stored = (top - stored).astype(np.uint16)
    if padding_value is not None:
        stored[background] = padding_value
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MAMMO_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MAMMO_PRESENTATION
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "MG"
    ds.Manufacturer = "TestVendor"
    ds.PresentationIntentType = intent
    ds.ImageLaterality = laterality
    ds.ViewPosition = view
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = top // 2, top
    if padding_value is not None:
        ds.PixelPaddingValue = padding_value
    for key, value in (identity or {}).items():
        setattr(ds, key, value)
    ds.PixelData = stored.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


BREAST_HEADER = ["study_id", "series_id", "image_id", "laterality", "view_position", "height", "width",
                 "breast_birads", "breast_density", "split"]
FINDING_HEADER = BREAST_HEADER[:-1] + ["finding_categories", "finding_birads", "xmin", "ymin", "xmax", "ymax", "split"]


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def write_vindr_tree(root: Path, n_studies: int = 3, identity: dict | None = None,
                     for_processing: set[int] = frozenset()) -> list[dict]:
    """A VinDr-layout tree: n studies × (L, R) × (CC, MLO). Returns the breast-level rows."""
    rows, finding_rows = [], []
    k = 0
    for s in range(n_studies):
        study = md5(f"study{s}")
        for lat in ("L", "R"):
            for view in ("CC", "MLO"):
                image_id = md5(f"img{s}{lat}{view}")
                att = breast_image(seed=k, lesion=(60, 30) if (lat == "L" and s == 0) else None)
                if lat == "R":
                    att = att[:, ::-1]  # right breasts face the other way, as on a real detector
                write_dicom(root / "images" / study / f"{image_id}.dicom", att,
                            photometric="MONOCHROME1" if s % 2 else "MONOCHROME2", laterality=lat, view=view,
                            intent="FOR PROCESSING" if k in for_processing else "FOR PRESENTATION",
                            identity=identity)
                row = dict(study_id=study, series_id=md5(f"ser{s}{lat}"), image_id=image_id, laterality=lat,
                           view_position=view, height=120, width=90,
                           breast_birads="BI-RADS 4" if (lat == "L" and s == 0) else "BI-RADS 1",
                           breast_density=f"DENSITY {'ABCD'[s % 4]}", split="test" if s == n_studies - 1 else "training")
                rows.append(row)
                if lat == "L" and s == 0:
                    finding_rows.append({**row, "finding_categories": "['Mass']", "finding_birads": "BI-RADS 4",
                                         "xmin": 24, "ymin": 54, "xmax": 36, "ymax": 66})
                else:
                    finding_rows.append({**row, "finding_categories": "['No Finding']", "finding_birads": "",
                                         "xmin": "", "ymin": "", "xmax": "", "ymax": ""})
                k += 1
    for name, header, data in (("breast-level_annotations.csv", BREAST_HEADER, rows),
                               ("finding_annotations.csv", FINDING_HEADER, finding_rows)):
        with open(root / name, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header)
            writer.writeheader()
            writer.writerows({k: r[k] for k in header} for r in data)
    return rows
