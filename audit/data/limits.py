"""Size limits checked on a file's *declared* dimensions before any pixel is decoded.

A few hundred bytes can declare a 60000 × 60000 image (a PNG IHDR, a DICOM Rows/Columns pair, a NIfTI dim
field, an NPY header): decoding it would allocate gigabytes before anything else could object. Every reader asks
`check_declared_size` with the dimensions from the header first. Pillow's own decompression-bomb check stays
active on top of this (it refuses images above 2 × `PIL.Image.MAX_IMAGE_PIXELS`, about 179 M pixels).

Limits (elements = pixels or voxels × frames × samples), overridable with the environment variable
`SYNTH_AUDIT_MAX_ELEMENTS` (one number, applied to both):
- 2D images: 100 M pixels (a 10 000 × 10 000 radiograph; full-field mammograms are about 4 000 × 5 000 = 20 M);
- 3D volumes: 2^28 ≈ 268 M voxels (512 × 512 × 1024, 1 GiB as float32).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from audit.errors import AuditInputError

MAX_PIXELS_2D = 100_000_000
MAX_VOXELS_3D = 1 << 28
ENV_OVERRIDE = "SYNTH_AUDIT_MAX_ELEMENTS"


def max_elements(ndim: int) -> int:
    override = os.environ.get(ENV_OVERRIDE, "").strip()
    if override:
        try:
            return int(float(override))
        except ValueError:
            raise AuditInputError(None, f"${ENV_OVERRIDE} must be a number, got '{override}'") from None
    return MAX_PIXELS_2D if ndim <= 2 else MAX_VOXELS_3D


def check_declared_size(path: str | Path, shape: Sequence[int], what: str = "image") -> None:
    """Refuse a file whose header declares more elements than the limit (or a negative/absurd dimension)."""
    dims = [int(s) for s in shape]
    if any(d < 0 for d in dims):
        raise AuditInputError(path, f"header declares a negative {what} dimension {tuple(dims)}")
    spatial = [d for d in dims if d > 1]
    limit = max_elements(len(spatial))
    total = math.prod(dims) if dims else 0
    if total > limit:
        raise AuditInputError(path, f"header declares a {' x '.join(map(str, dims))} {what} ({total:,} elements), "
                                    f"above the limit of {limit:,} (decompression bomb or wrong header; "
                                    f"${ENV_OVERRIDE} raises the limit)")
