"""Files of a few hundred bytes whose headers declare enormous images (decompression bombs): a reader that trusts
the header before checking it would allocate gigabytes. Deterministic bytes; nothing big is ever written."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

BOMB_SIDE = 60000


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(path: Path, side: int = BOMB_SIDE, bit_depth: int = 16) -> Path:
    """A grayscale PNG declaring side × side pixels; its IDAT holds the first rows only (a real bomb would hold
    all of them as a few MB of compressed zeros — the declared size is what a reader must check)."""
    row = b"\0" + b"\0" * (side * bit_depth // 8)
    header = struct.pack(">IIBBBBB", side, side, bit_depth, 0, 0, 0, 0)
    body = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(row * 4, 9)) + _png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def png_between_limits(path: Path) -> Path:
    """An 8-bit PNG of 12000 × 12000 = 144 M pixels: below Pillow's hard limit (2 × 89 M; Pillow only warns),
    above the suite's 100 M — the suite's own header check must refuse it."""
    row = b"\0" + b"\0" * 12000
    header = struct.pack(">IIBBBBB", 12000, 12000, 8, 0, 0, 0, 0)
    body = _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(row * 2, 9)) + _png_chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def dicom_bomb(path: Path, side: int = BOMB_SIDE) -> Path:
    """A valid DICOM header declaring side × side 16-bit pixels, with 64 bytes of pixel data."""
    from tests.dicom_factory import write_dicom

    write_dicom(path, np.full((4, 4), 0.5))
    import pydicom

    ds = pydicom.dcmread(str(path))
    ds.Rows = ds.Columns = side
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.10.998.1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.998.2", "1.2.826.0.1.3680043.10.998.3"
    ds.PixelData = b"\0" * 64
    ds.save_as(str(path), enforce_file_format=True)
    return path


def nifti_bomb(path: Path, dims: tuple[int, int, int] = (32767, 32767, 32767)) -> Path:
    """A NIfTI-1 header (348 bytes + 4 of extension flag) declaring a float32 volume of `dims` (NIfTI-1 sides are
    int16: 32767³ is the largest, 3.5e13 voxels); no voxel data."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(dims)
    header["vox_offset"] = 352
    header.set_sform(np.eye(4), code=1)
    data = header.binaryblock + b"\0\0\0\0"
    if path.name.endswith(".gz"):
        import gzip

        data = gzip.compress(data, mtime=0)
    path.write_bytes(data)
    return path


def npy_bomb(path: Path, side: int = BOMB_SIDE) -> Path:
    """An NPY header declaring a float64 side × side array, with no data after it."""
    header = {"descr": "<f8", "fortran_order": False, "shape": (side, side)}
    text = repr(header).encode("latin-1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text)
    return path


def tiff_bomb(path: Path, side: int = BOMB_SIDE) -> Path:
    """A baseline TIFF whose single IFD declares side × side 16-bit pixels in one strip of 0 bytes."""
    entries = [  # (tag, type, count, value)
        (256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 16), (259, 3, 1, 1), (262, 3, 1, 1),
        (273, 4, 1, 0), (277, 3, 1, 1), (278, 4, 1, side), (279, 4, 1, 0),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3
                                                         else struct.pack("<I", value))
    ifd += struct.pack("<I", 0)
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd)
    return path
