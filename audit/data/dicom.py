"""DICOM pixels → display-ready float32 [0, 1], with bright = dense tissue / bone.

The order follows the VinDr-Mammo viewer and the DICOM standard: padding mask from the stored values
(PixelPaddingValue [+ PixelPaddingRangeLimit]), modality LUT (rescale), VOI LUT or window (pydicom's own
functions), scale to [0, 1], invert MONOCHROME1, zero the padding. Only technical tags are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from audit.data.limits import check_declared_size
from audit.errors import AuditInputError

SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")

# The only header fields that may leave the data layer: acquisition technique, never identity.
TECHNICAL_TAGS = (
    "Modality", "Manufacturer", "ManufacturerModelName", "PhotometricInterpretation", "PresentationIntentType",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "Rows", "Columns", "PixelSpacing",
    "ImagerPixelSpacing", "WindowCenter", "WindowWidth", "VOILUTFunction", "RescaleSlope", "RescaleIntercept",
    "PixelPaddingValue", "PixelPaddingRangeLimit", "ImageLaterality", "Laterality", "ViewPosition",
    "BodyPartExamined", "KVP", "Exposure",
)


@dataclass
class DicomImage:
    pixels: np.ndarray  # float32 [0, 1], bright = attenuating tissue
    padding: np.ndarray  # bool, True where the detector recorded padding (no patient)
    tags: dict = field(default_factory=dict)  # technical tags only

    @property
    def for_processing(self) -> bool:
        return str(self.tags.get("PresentationIntentType", "")).upper() == "FOR PROCESSING"


def technical_tags(ds: pydicom.Dataset) -> dict:
    out = {}
    for name in TECHNICAL_TAGS:
        value = ds.get(name)
        if value is None or value == "":
            continue
        if isinstance(value, pydicom.multival.MultiValue):
            value = [float(v) if isinstance(v, (int, float)) else str(v) for v in value]
        elif isinstance(value, (int, float)):
            value = float(value) if not isinstance(value, int) else int(value)
        else:
            value = str(value)
        out[name] = value
    return out


def _dcmread(path: str | Path, **kwargs) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(str(path), **kwargs)
    except InvalidDicomError:
        raise AuditInputError(path, "not a DICOM file (no DICM preamble)") from None
    except FileNotFoundError:
        raise AuditInputError(path, "file not found") from None
    except Exception as err:
        raise AuditInputError(path, f"unreadable DICOM ({type(err).__name__}: {err})") from None


def read_header(path: str | Path) -> pydicom.Dataset:
    return _dcmread(path, stop_before_pixels=True)


def padding_mask(stored: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Where the stored value is the padding value (or within [PaddingValue, PaddingRangeLimit])."""
    value = ds.get("PixelPaddingValue")
    if value is None:
        return np.zeros(stored.shape, dtype=bool)
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None:
        return stored == value
    lo, hi = sorted((int(value), int(limit)))
    return (stored >= lo) & (stored <= hi)


def _voi_output_range(ds: pydicom.Dataset, modality_lo, modality_hi) -> tuple[float, float]:
    """The range the VOI transform maps the modality domain onto (monotonic VOI: transform the ends)."""
    probe = apply_voi_lut(np.array([modality_lo, modality_hi]), ds)
    lo, hi = float(np.min(probe)), float(np.max(probe))
    return lo, hi


def has_voi(ds: pydicom.Dataset) -> bool:
    return "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)


def to_display(stored: np.ndarray, ds: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Stored pixel values → (float32 [0, 1] with bright = attenuation, padding mask)."""
    pad = padding_mask(stored, ds)
    values = apply_modality_lut(stored, ds)  # stays integer when there is no rescale (a VOI LUT indexes by it)
    if has_voi(ds):
        bits = int(ds.get("BitsStored", 16))
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        stored_lo, stored_hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
        ends = apply_modality_lut(np.array([stored_lo, stored_hi]), ds)
        out_lo, out_hi = _voi_output_range(ds, ends.min(), ends.max())
        values = apply_voi_lut(values, ds).astype(np.float64)
    else:
        values = values.astype(np.float64)
        inside = values[~pad] if (~pad).any() else values
        out_lo, out_hi = float(inside.min()), float(inside.max())
    scale = out_hi - out_lo
    unit = (values - out_lo) / scale if scale > 0 else np.zeros_like(values)
    unit = np.clip(unit, 0.0, 1.0)
    if str(ds.PhotometricInterpretation).strip() == "MONOCHROME1":
        unit = 1.0 - unit  # MONOCHROME1 stores attenuation as dark; display convention is bright
    unit[pad] = 0.0
    return unit.astype(np.float32), pad


def declared_shape(ds: pydicom.Dataset, path: str | Path) -> tuple[int, int, int, int]:
    """(frames, rows, columns, samples) as the header declares them — checked before pixel_array allocates."""
    try:
        return (int(ds.get("NumberOfFrames") or 1), int(ds.get("Rows") or 0), int(ds.get("Columns") or 0),
                int(ds.get("SamplesPerPixel") or 1))
    except (TypeError, ValueError):
        raise AuditInputError(path, "DICOM header has unreadable image dimensions "
                                    "(Rows/Columns/NumberOfFrames/SamplesPerPixel)") from None


def read_dicom_display(path: str | Path) -> DicomImage:
    """Read one DICOM file into display intensities. Any problem → AuditInputError naming the file."""
    ds = _dcmread(path)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise AuditInputError(path, f"unsupported photometric interpretation '{photometric or 'missing'}' "
                                    f"(supported: {', '.join(SUPPORTED_PHOTOMETRIC)})")
    if "PixelData" not in ds:
        raise AuditInputError(path, "DICOM has no pixel data")
    check_declared_size(path, declared_shape(ds, path))
    try:
        stored = ds.pixel_array
    except Exception as err:  # truncated data, missing decoder: the file is the problem the user must fix
        raise AuditInputError(path, f"cannot decode pixel data, file truncated or corrupt "
                                    f"({type(err).__name__}: {str(err).splitlines()[0].split(' - ')[0][:160]})") from None
    if stored.ndim != 2:
        raise AuditInputError(path, f"expected a single 2D frame, got pixel array of shape {stored.shape}")
    if stored.size and stored.min() == stored.max():
        raise AuditInputError(path, f"every pixel has the same stored value ({stored.flat[0]}): a blank image "
                                    "carries no anatomy")
    pixels, pad = to_display(stored, ds)
    return DicomImage(pixels=pixels, padding=pad, tags=technical_tags(ds))
