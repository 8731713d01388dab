"""Reading single image files of any format the suite accepts, and fitting them to one shape.

Formats: PNG (8/16-bit), TIFF, DICOM, NIfTI (.nii, .nii.gz), NPY. Every failure is an AuditInputError naming
the file, so callers can skip-and-report or stop with one line.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from skimage.transform import resize

from audit.data.limits import check_declared_size
from audit.errors import AuditInputError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".dcm", ".dicom", ".nii", ".nii.gz", ".npy")


def suffix_of(path: str | Path) -> str:
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def is_image_file(path: str | Path) -> bool:
    return suffix_of(path) in IMAGE_SUFFIXES


def _read_png_tiff(path: Path) -> np.ndarray:
    suffix = suffix_of(path)
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise AuditInputError(path, "TIFF holds no image")
            check_declared_size(path, tif.series[0].shape)
            return np.asarray(tif.series[0].asarray())
    from PIL import Image

    try:
        with warnings.catch_warnings():  # Pillow warns above 89 M pixels; the size check below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)  # reads the header only; Pillow's own hard bomb check (> 179 M) runs here
    except Image.DecompressionBombError as err:
        raise AuditInputError(path, f"refused by Pillow's decompression-bomb check ({err})") from None
    with im:
        check_declared_size(path, (im.height, im.width, len(im.getbands())))
        im.load()
        if im.mode in ("RGB", "RGBA", "P", "LA", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("L")
        return np.asarray(im)


def _read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    img = nib.load(str(path))  # header only; the voxels are read below
    check_declared_size(path, img.shape, "volume")
    return np.asarray(nib.as_closest_canonical(img).dataobj, dtype=np.float32)


def _read_dicom(path: Path) -> np.ndarray:
    from audit.data.dicom import read_dicom_display

    return read_dicom_display(path).pixels


def _read_npy(path: Path) -> np.ndarray:
    """NPY without unpickling: the header is read first (object arrays, i.e. pickles, are refused; the declared
    shape is checked against the size limit), then the array with allow_pickle=False."""
    from numpy.lib import format as npy

    with open(path, "rb") as fh:
        try:
            version = npy.read_magic(fh)
            read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, _, dtype = read_header(fh)
        except ValueError as err:
            raise AuditInputError(path, f"not an NPY array file ({str(err).splitlines()[0][:120]}); "
                                        "pickled data is never loaded") from None
    if dtype.hasobject:
        raise AuditInputError(path, "NPY holds Python objects (a pickle); refused, never unpickled")
    check_declared_size(path, shape)
    return np.load(path, allow_pickle=False)  # never unpickle a user file


_READERS = {
    ".png": _read_png_tiff, ".tif": _read_png_tiff, ".tiff": _read_png_tiff,
    ".nii": _read_nifti, ".nii.gz": _read_nifti,
    ".dcm": _read_dicom, ".dicom": _read_dicom,
    ".npy": _read_npy,
}


def read_image(path: str | Path) -> np.ndarray:
    """Raw pixel array of a file (2D or 3D; colour converted to gray), unscaled."""
    path = Path(path)
    reader = _READERS.get(suffix_of(path))
    if reader is None:
        raise AuditInputError(path, f"unsupported file type '{suffix_of(path)}' (accepted: {', '.join(IMAGE_SUFFIXES)})")
    if not path.is_file():
        raise AuditInputError(path, "file not found")
    try:
        arr = reader(path)
    except AuditInputError:
        raise
    except Exception as err:  # decoders raise anything; the user needs the file and the reason
        first = str(err).splitlines()[0][:200] if str(err) else ""
        raise AuditInputError(path, f"cannot read image ({type(err).__name__}: {first})") from None
    arr = np.squeeze(np.asarray(arr))
    check_finite(arr, path)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and suffix_of(path) in (".tif", ".tiff", ".npy"):
        arr = arr[..., :3].mean(axis=-1)  # colour TIFF/NPY → gray
    if arr.ndim not in (2, 3):
        raise AuditInputError(path, f"expected a 2D image or 3D volume, got an array of shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_:
        arr = arr.astype(np.float32)
    if arr.dtype == np.uint16 and arr.size and 0 < int(arr.max()) <= 255:
        # integer images scale by their type's range: 8-bit values in a 16-bit file would read as 0.4 % grey
        raise AuditInputError(path, f"16-bit image whose values stay within 8 bits (max {int(arr.max())} of 65535): "
                                    "it would read as nearly black; save it as 8-bit or rescale it to 16 bits")
    return arr


def check_finite(arr: np.ndarray, path: str | Path) -> None:
    """NaN or infinite pixels are an error: every later step (scaling, similarity, statistics) would turn them into
    silently wrong numbers. Replace them in the data deliberately (e.g. numpy.nan_to_num) if they mean 'empty'."""
    if np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.complexfloating):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise AuditInputError(path, f"{bad} of {arr.size} pixel values are NaN or infinite")


def to_unit_range(arr: np.ndarray) -> np.ndarray:
    """Scale to float32 [0, 1]: integer images by their type's range, floats already in [0, 1] kept, other
    floats min-max scaled (a synthetic float image carries no other scale)."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():  # readers refuse non-finite files; arrays from code get the old safety net
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:
        return arr
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def fit_to_shape(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Resample to `shape` (anti-aliased linear); no-op when it already fits."""
    if arr.shape == tuple(shape):
        return arr.astype(np.float32, copy=False)
    out = resize(arr, shape, order=1, mode="edge", anti_aliasing=any(a > s for a, s in zip(arr.shape, shape)),
                 preserve_range=True)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def image_file_name(stem: str, ndim: int) -> str:
    """2D images → 16-bit PNG (lossless for [0, 1] at 1/65535), volumes → float32 NIfTI."""
    return stem + (".png" if ndim == 2 else ".nii.gz")


def write_image_file(image: np.ndarray, path: str | Path) -> Path:
    """Write a float [0, 1] image atomically: a crash leaves no file or the whole file (the temp name starts with
    '.', which the folder reader skips)."""
    import os

    path = Path(path)
    suffix = ".png" if image.ndim == 2 else ".nii.gz"
    tmp = path.with_name(f".{path.name}.tmp{suffix}")
    clipped = np.clip(np.nan_to_num(image.astype(np.float32)), 0.0, 1.0)
    if image.ndim == 2:
        from PIL import Image

        Image.fromarray(np.round(clipped * 65535).astype(np.uint16)).save(tmp, format="PNG")
    elif image.ndim == 3:
        import nibabel as nib

        nib.save(nib.Nifti1Image(clipped, np.eye(4)), str(tmp))
    else:
        raise ValueError(f"cannot write an array of shape {image.shape}")
    os.replace(tmp, path)
    return path
