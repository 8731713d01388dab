"""Turning a rendered phantom view into a real "For Presentation" digital-mammography DICOM file.

The stored-value encoding follows what the VinDr-Mammo viewer undoes: modality rescale (identity here), padding
= pixels exactly equal to PixelPaddingValue (no PixelPaddingRangeLimit is written, so the viewer compares for
equality), a linear window, and inversion for MONOCHROME1. Hence: tissue never takes the padding value, and for
MONOCHROME1 bright tissue is stored as a low value and the padding is the maximum.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root; the suffix is a hash of seed + patient + role


@dataclass(frozen=True)
class Manufacturer:
    """A simulated vendor: how it stores pixels. Names are fictitious — the pairing of bit depth and
    photometric interpretation is made up to cover the cases a reader must handle, not a claim about a device."""

    name: str
    model: str
    photometric: str  # "MONOCHROME1" | "MONOCHROME2"
    bits_stored: int  # 12 or 14
    detector_height_mm: float  # the detector's long side; pixel spacing = this / rows

    @property
    def max_value(self) -> int:
        return (1 << self.bits_stored) - 1

    @property
    def padding_value(self) -> int:
        # Background is "no tissue" = black on display: 0 for MONOCHROME2, the maximum for MONOCHROME1.
        return self.max_value if self.photometric == "MONOCHROME1" else 0


MANUFACTURERS = (
    Manufacturer("PHANTOM VENDOR A", "PV-A 12M2", "MONOCHROME2", 12, 240.0),
    Manufacturer("PHANTOM VENDOR B", "PV-B 14M1", "MONOCHROME1", 14, 290.0),
    Manufacturer("PHANTOM VENDOR C", "PV-C 14M2", "MONOCHROME2", 14, 240.0),
    Manufacturer("PHANTOM VENDOR D", "PV-D 12M1", "MONOCHROME1", 12, 290.0),
    Manufacturer("PHANTOM VENDOR E", "PV-E 12M2", "MONOCHROME2", 12, 300.0),
)

# Tissue occupies this part of the stored range, so it can never collide with the padding value.
TISSUE_RANGE = (0.04, 0.96)


def encode_stored(display: np.ndarray, foreground: np.ndarray, maker: Manufacturer) -> np.ndarray:
    """Display intensities in [0, 1] (1 = densest) → uint16 stored values for this manufacturer.

    MONOCHROME2 stores dense tissue high; MONOCHROME1 stores `max - value`. Background = the padding value.
    """
    lo, hi = (round(f * maker.max_value) for f in TISSUE_RANGE)
    stored = np.rint(lo + np.clip(display, 0.0, 1.0) * (hi - lo)).astype(np.int32)
    if maker.photometric == "MONOCHROME1":
        stored = maker.max_value - stored
    stored[~foreground] = maker.padding_value
    return stored.astype(np.uint16)


def display_window(stored: np.ndarray, foreground: np.ndarray) -> tuple[float, float]:
    """(WindowCenter, WindowWidth) spanning the 0.5-99.5th percentiles of the stored tissue values, widened by a
    tenth on each side so the brightest calcifications and the darkest fat are not clipped flat."""
    values = stored[foreground]
    if values.size == 0:
        return 0.5 * float(stored.max()), max(float(stored.max()), 1.0)
    lo, hi = np.percentile(values, [0.5, 99.5])
    margin = 0.1 * float(hi - lo)
    lo, hi = float(lo) - margin, float(hi) + margin
    width = max(hi - lo, 2.0)
    return round(float(lo + hi) / 2.0, 1), round(width, 1)


PATIENT_ORIENTATION = {  # (row direction, column direction) for chest wall at column 0 (L) or the last column (R)
    ("L", "CC"): ["A", "R"], ("R", "CC"): ["P", "L"],
    ("L", "MLO"): ["A", "F"], ("R", "MLO"): ["P", "F"],
}


@dataclass(frozen=True)
class ImageTags:
    """Everything about one image that goes into its header (and into metadata.csv)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    laterality: str
    view: str
    age_years: int
    maker: Manufacturer
    rows: int
    columns: int
    pixel_spacing_mm: float
    window_center: float
    window_width: float


def build_dataset(tags: ImageTags, stored: np.ndarray):
    """A pydicom FileDataset-ready Dataset. No names, ids, dates or institutions (VinDr de-identified them)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = tags.sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "SYNTH_AUDIT_01"  # fixed: files stay byte-identical across pydicom versions

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SOPClassUID = DIGITAL_MAMMOGRAPHY_FOR_PRESENTATION
    ds.SOPInstanceUID = tags.sop_uid
    ds.StudyInstanceUID = tags.study_uid
    ds.SeriesInstanceUID = tags.series_uid
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = tags.maker.name
    ds.ManufacturerModelName = tags.maker.model
    ds.PatientName = ""  # type 2: present and empty, as after de-identification
    ds.PatientID = ""
    ds.PatientSex = "F"
    ds.PatientAge = f"{tags.age_years:03d}Y"
    ds.BodyPartExamined = "BREAST"
    ds.Laterality = tags.laterality
    ds.ImageLaterality = tags.laterality
    ds.ViewPosition = tags.view
    ds.PatientOrientation = PATIENT_ORIENTATION[(tags.laterality, tags.view)]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = tags.maker.photometric
    ds.Rows, ds.Columns = tags.rows, tags.columns
    ds.PixelSpacing = [f"{tags.pixel_spacing_mm:.6f}"] * 2
    ds.ImagerPixelSpacing = [f"{tags.pixel_spacing_mm:.6f}"] * 2
    ds.BitsAllocated = 16
    ds.BitsStored = tags.maker.bits_stored
    ds.HighBit = tags.maker.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.add_new(0x00280120, "US", tags.maker.padding_value)  # PixelPaddingValue (VR is US/SS by representation)
    ds.WindowCenter = f"{tags.window_center:.1f}"
    ds.WindowWidth = f"{tags.window_width:.1f}"
    ds.VOILUTFunction = "LINEAR"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    return ds


def write_dicom(path: Path, tags: ImageTags, stored: np.ndarray) -> None:
    ds = build_dataset(tags, stored)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


METADATA_COLUMNS = ("SOP Instance UID", "Series Instance UID", "Study Instance UID", "Modality",
                    "Presentation Intent Type", "Manufacturer", "Manufacturer's Model Name", "Patient's Sex",
                    "Patient's Age", "Image Laterality", "View Position", "Photometric Interpretation", "Rows",
                    "Columns", "Bits Allocated", "Bits Stored", "High Bit", "Pixel Representation",
                    "Pixel Padding Value", "Window Center", "Window Width", "VOI LUT Function",
                    "Rescale Intercept", "Rescale Slope", "Pixel Spacing", "Imager Pixel Spacing")


def metadata_row(tags: ImageTags) -> dict[str, str | int | float]:
    """metadata.csv row: technical DICOM attributes only, named as in the DICOM dictionary (like VinDr)."""
    spacing = f"[{tags.pixel_spacing_mm:.6f}, {tags.pixel_spacing_mm:.6f}]"
    return {
        "SOP Instance UID": tags.sop_uid, "Series Instance UID": tags.series_uid,
        "Study Instance UID": tags.study_uid, "Modality": "MG", "Presentation Intent Type": "FOR PRESENTATION",
        "Manufacturer": tags.maker.name, "Manufacturer's Model Name": tags.maker.model, "Patient's Sex": "F",
        "Patient's Age": f"{tags.age_years:03d}Y", "Image Laterality": tags.laterality,
        "View Position": tags.view, "Photometric Interpretation": tags.maker.photometric, "Rows": tags.rows,
        "Columns": tags.columns, "Bits Allocated": 16, "Bits Stored": tags.maker.bits_stored,
        "High Bit": tags.maker.bits_stored - 1, "Pixel Representation": 0,
        "Pixel Padding Value": tags.maker.padding_value, "Window Center": f"{tags.window_center:.1f}",
        "Window Width": f"{tags.window_width:.1f}", "VOI LUT Function": "LINEAR", "Rescale Intercept": 0,
        "Rescale Slope": 1, "Pixel Spacing": spacing, "Imager Pixel Spacing": spacing,
    }
