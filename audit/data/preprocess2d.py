"""2D mammogram geometry: crop to the breast, flip right breasts, resize keeping aspect with padding — and the
same transforms applied to lesion boxes. Pure functions on arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.transform import resize


@dataclass(frozen=True)
class Geometry:
    """What was done to the image, so boxes follow: crop (row0, col0, h, w), flip, scale, padding offset."""

    crop: tuple[int, int, int, int]
    flipped: bool
    scale: float
    pad: tuple[int, int]  # (top, left)


def breast_mask(image: np.ndarray, padding: np.ndarray | None = None) -> np.ndarray:
    """Largest foreground component, holes filled.

    When the detector marked its padding, everything else is the patient: thresholding inside it would split
    fatty from dense tissue. Without padding, Otsu over the whole image separates air from breast (the air
    mode is large), but when fatty and dense tissue form two modes of their own Otsu can fall between them, so
    the threshold is capped at 10% of the way from the air level to the bright tissue.
    """
    if padding is not None and padding.any() and (~padding).any():
        foreground = ~padding
    else:
        if image.max() <= image.min():
            return np.zeros(image.shape, bool)
        air, bright = np.percentile(image, [1, 99])
        foreground = image > min(threshold_otsu(image), air + 0.1 * (bright - air))
    labels, n = ndimage.label(foreground)
    if n == 0:
        return foreground
    sizes = ndimage.sum_labels(foreground, labels, index=np.arange(1, n + 1))
    largest = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(largest)


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0, 0, mask.shape[0], mask.shape[1]
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def percentile_normalise(image: np.ndarray, mask: np.ndarray, low: float, high: float) -> np.ndarray:
    values = image[mask] if mask.any() else image.ravel()
    lo, hi = np.percentile(values, [low, high])
    out = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    out = np.clip(out, 0.0, 1.0)
    out[~mask] = 0.0
    return out.astype(np.float32)


def fit_with_padding(image: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize to fit inside `shape` keeping the aspect ratio, then centre it on a zero canvas."""
    h, w = image.shape
    scale = min(shape[0] / h, shape[1] / w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = resize(image, (new_h, new_w), order=1, anti_aliasing=scale < 1, preserve_range=True)
    canvas = np.zeros(shape, np.float32)
    top, left = (shape[0] - new_h) // 2, (shape[1] - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas, scale, (top, left)


def transform_boxes(boxes: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Boxes (n, 4: xmin, ymin, xmax, ymax) in original pixels → output pixels, clipped to the crop."""
    if boxes.size == 0:
        return np.zeros((0, 4), np.float32)
    row0, col0, h, w = geometry.crop
    b = boxes.astype(np.float64).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]] - col0, 0, w)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]] - row0, 0, h)
    if geometry.flipped:
        b[:, [0, 2]] = w - b[:, [2, 0]]
    b *= geometry.scale
    b[:, [0, 2]] += geometry.pad[1]
    b[:, [1, 3]] += geometry.pad[0]
    return b.astype(np.float32)


def preprocess_mammogram(image: np.ndarray, padding: np.ndarray | None, laterality: str | None,
                         shape: tuple[int, int], crop_to_breast: bool = True, flip_right_to_left: bool = True,
                         intensity_percentiles: tuple[float, float] | None = None
                         ) -> tuple[np.ndarray, Geometry]:
    mask = breast_mask(image, padding) if (crop_to_breast or intensity_percentiles) else None
    if crop_to_breast and mask is not None and mask.any():
        crop = bounding_box(mask)
    else:
        crop = (0, 0, image.shape[0], image.shape[1])
    row0, col0, h, w = crop
    out = image[row0:row0 + h, col0:col0 + w]
    if intensity_percentiles is not None and mask is not None:
        out = percentile_normalise(out, mask[row0:row0 + h, col0:col0 + w], *intensity_percentiles)
    flipped = bool(flip_right_to_left and (laterality or "").upper() == "R")
    if flipped:
        out = out[:, ::-1]
    out, scale, pad = fit_with_padding(np.ascontiguousarray(out, dtype=np.float32), shape)
    return np.clip(out, 0.0, 1.0), Geometry(crop=crop, flipped=flipped, scale=scale, pad=pad)
