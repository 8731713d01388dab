"""3D reader: NIfTI volumes listed in a CSV manifest.

Manifest (ROOT/manifest.csv unless the config names another): `id, patient_id, split, path` (path relative to
ROOT) and any further columns as labels. Volumes are reoriented to RAS+ (nibabel's closest canonical), optionally
resampled to a voxel size, fitted to the configured shape (centre crop/pad when a voxel size is fixed, so the
physical scale is kept; resampling otherwise), and intensity-normalised between percentiles of the non-zero voxels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from audit.config import DataConfig, PreprocessConfig
from audit.data.csvio import CsvRows, check_unique, read_csv_rows
from audit.data.imageio import check_finite, fit_to_shape
from audit.data.limits import check_declared_size
from audit.data.paths import inside_root
from audit.data.records import Labels, Record, SkippedFile
from audit.errors import AuditInputError

REQUIRED_COLUMNS = ("id", "patient_id", "split", "path")
DEFAULT_PERCENTILES = (1.0, 99.0)


def read_manifest(path: Path) -> CsvRows:
    return read_csv_rows(path, "manifest", REQUIRED_COLUMNS)


def load_canonical(path: str | Path, canonical: bool = True) -> tuple[np.ndarray, tuple[float, ...]]:
    """Voxel array (float32) and voxel sizes, reoriented to RAS+ when asked."""
    import nibabel as nib

    try:
        img = nib.load(str(path))
        check_declared_size(path, img.shape, "volume")  # before a single voxel is read
        if canonical:
            img = nib.as_closest_canonical(img)
        data = np.asarray(img.dataobj, dtype=np.float32)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except FileNotFoundError:
        raise AuditInputError(path, "file not found") from None
    except AuditInputError:
        raise
    except Exception as err:
        first = str(err).splitlines()[0][:200] if str(err) else ""
        raise AuditInputError(path, f"unreadable NIfTI ({type(err).__name__}: {first})") from None
    data = np.squeeze(data)
    check_finite(data, path)
    if data.ndim != 3:
        raise AuditInputError(path, f"expected a 3D volume, got shape {data.shape}")
    if data.size and data.min() == data.max():
        raise AuditInputError(path, f"every voxel has the same value ({data.flat[0]:g}): a blank volume carries no "
                                    "anatomy")
    return data, zooms


def crop_or_pad(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, volume.dtype)
    src, dst = [], []
    for have, want in zip(volume.shape, shape):
        if have >= want:
            start = (have - want) // 2
            src.append(slice(start, start + want))
            dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            src.append(slice(0, have))
            dst.append(slice(start, start + have))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def percentile_scale(volume: np.ndarray, low: float, high: float) -> np.ndarray:
    foreground = volume[volume > 0]
    values = foreground if foreground.size > 100 else volume.ravel()
    lo, hi = np.percentile(values, [low, high])
    out = (volume - lo) / (hi - lo) if hi > lo else np.zeros_like(volume)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def preprocess_volume(volume: np.ndarray, zooms: tuple[float, ...], pre: PreprocessConfig) -> np.ndarray:
    if pre.spacing_mm is not None:
        factors = [z / s for z, s in zip(zooms, pre.spacing_mm)]
        volume = ndimage.zoom(volume, factors, order=1)
        volume = crop_or_pad(volume, tuple(pre.shape))
    low, high = pre.intensity_percentiles or DEFAULT_PERCENTILES
    volume = percentile_scale(volume, low, high)
    return fit_to_shape(volume, tuple(pre.shape))


class NiftiReader:
    def scan(self, cfg: DataConfig) -> tuple[list[Record], list[SkippedFile]]:
        root = Path(cfg.root)
        manifest = Path(cfg.manifest or "manifest.csv")
        manifest = manifest if manifest.is_absolute() else root / manifest
        if cfg.preprocess.ndim != 3:
            raise AuditInputError(manifest, f"a NIfTI dataset needs a 3D shape, the config has {cfg.preprocess.shape}")
        if not manifest.is_file():
            raise AuditInputError(manifest, "manifest not found")
        records, skipped = [], []
        rows = read_manifest(manifest)
        check_unique(rows, "id", "id")
        for i, row in enumerate(rows):
            line = rows.line(i)
            for column in ("id", "patient_id", "split"):
                if not row[column].strip():
                    raise AuditInputError(manifest, f"line {line}: empty '{column}'")
            path = inside_root(root, row["path"], manifest, line)
            split = row["split"].strip().lower()
            if not path.is_file():
                skipped.append(SkippedFile(str(path), f"listed in {manifest.name} (line {line}) but missing",
                                           split=split))
                continue
            extra = tuple(sorted((k, v) for k, v in row.items() if k not in REQUIRED_COLUMNS and k))
            records.append(Record(id=row["id"].strip(), patient_id=row["patient_id"].strip(),
                                  split=split, modality=cfg.modality, path=str(path),
                                  labels=Labels(extra=extra)))
        return records, skipped

    def decode(self, record: Record, pre: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
        volume, zooms = load_canonical(record.path, pre.canonical_orientation)
        return preprocess_volume(volume, zooms, pre), np.zeros((0, 4), np.float32)
