"""Hand-crafted radiomic feature classes on one 2D image or 3D volume (pure numpy / scipy / scikit-image).

In the spirit of pyradiomics' definitions (first-order, GLCM, GLRLM), which is what the Fréchet Radiomics
Distance (Konz et al. 2024) builds on; pyradiomics itself does not install on Python >= 3.10, so these are our
implementations, tested against scikit-image (GLCM) and brute force (run lengths):

- first-order statistics of the intensities (mean, spread, shape, percentiles, histogram entropy/uniformity);
- grey-level co-occurrence (GLCM): symmetric, normalised co-occurrence of quantised levels at offsets in every
  direction (2D: 4 angles via scikit-image's `graycomatrix`; 3D: the 13 unique neighbour directions, our numpy
  version of the same count), summarised by `graycoprops` and averaged over directions per distance;
- grey-level run lengths (GLRLM): runs of equal quantised level along every direction (2D 4, 3D 13), summarised
  by the usual emphasis/non-uniformity statistics and averaged over directions.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
from scipy import stats
from skimage.feature import graycomatrix, graycoprops

FIRST_ORDER_NAMES = ("mean", "std", "skewness", "kurtosis", "p10", "p50", "p90", "iqr", "mad", "hist_entropy",
                     "hist_uniformity")
GLCM_PROPS = ("contrast", "dissimilarity", "homogeneity", "ASM", "correlation", "entropy", "variance")
GLRLM_NAMES = ("sre", "lre", "glnn", "rlnn", "run_percentage", "lglre", "hglre", "run_entropy")


def quantise(image: np.ndarray, low: float, high: float, levels: int) -> np.ndarray:
    """Values → integer levels 0..levels-1 over the fixed range [low, high] (clipped): fixed bins, not per-image
    min–max, so that a level means the same intensity in every image (pyradiomics' fixed-bin-width idea)."""
    scaled = (np.asarray(image, np.float64) - low) / (high - low)
    return np.clip(np.floor(scaled * levels), 0, levels - 1).astype(np.intp)


def first_order(values: np.ndarray, low: float, high: float, bins: int) -> np.ndarray:
    x = np.asarray(values, np.float64).ravel()
    p10, p25, p50, p75, p90 = np.percentile(x, [10, 25, 50, 75, 90])
    std = x.std()
    if std > 0:
        skewness, kurtosis = float(stats.skew(x)), float(stats.kurtosis(x))
    else:  # a flat image: its shape statistics are defined as those of a symmetric, flat distribution
        skewness, kurtosis = 0.0, 0.0
    hist = np.bincount(quantise(x, low, high, bins), minlength=bins) / len(x)
    nonzero = hist[hist > 0]
    return np.array([x.mean(), std, skewness, kurtosis, p10, p50, p90, p75 - p25, np.abs(x - x.mean()).mean(),
                     -(nonzero * np.log2(nonzero)).sum(), (hist ** 2).sum()])


@lru_cache(maxsize=None)
def unique_directions(ndim: int) -> tuple[tuple[int, ...], ...]:
    """One of each ± pair of the 3^n − 1 neighbour directions (2D: 4, 3D: 13), first non-zero entry positive."""
    out = []
    for d in itertools.product((-1, 0, 1), repeat=ndim):
        nonzero = [v for v in d if v != 0]
        if nonzero and nonzero[0] > 0:
            out.append(d)
    return tuple(out)


def glcm_2d_angles() -> np.ndarray:
    return np.array([0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4])


def _offset_slices(shape: tuple[int, ...], offset: tuple[int, ...]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Slices a, b such that image[a][p] and image[b][p] are the voxel pairs (v, v + offset)."""
    first, second = [], []
    for size, o in zip(shape, offset):
        first.append(slice(max(0, -o), size - max(0, o)))
        second.append(slice(max(0, o), size - max(0, -o)))
    return tuple(first), tuple(second)


def glcm_nd(levels_image: np.ndarray, offsets: list[tuple[int, ...]], levels: int) -> np.ndarray:
    """Symmetric, normalised GLCM for each offset: (levels, levels, 1, n_offsets), the layout `graycoprops`
    takes. Works in any dimension (equal to scikit-image's `graycomatrix` in 2D, tested)."""
    q = np.asarray(levels_image, np.intp)
    out = np.zeros((levels, levels, 1, len(offsets)))
    for k, offset in enumerate(offsets):
        a, b = _offset_slices(q.shape, offset)
        counts = np.bincount((q[a] * levels + q[b]).ravel(), minlength=levels * levels).reshape(levels, levels)
        counts = counts + counts.T
        total = counts.sum()
        out[:, :, 0, k] = counts / total if total else counts
    return out


def glcm_features(levels_image: np.ndarray, levels: int, distances: tuple[int, ...]) -> np.ndarray:
    """GLCM properties averaged over directions, for each distance: len(GLCM_PROPS) × len(distances)."""
    q = np.asarray(levels_image)
    parts = []
    for distance in distances:
        if q.ndim == 2:
            p = graycomatrix(q.astype(np.uint16 if levels > 256 else np.uint8), [distance], glcm_2d_angles(),
                             levels=levels, symmetric=True, normed=True)
        else:
            p = glcm_nd(q, [tuple(distance * v for v in d) for d in unique_directions(q.ndim)], levels)
        parts.append([graycoprops(p, prop).mean() for prop in GLCM_PROPS])
    return np.asarray(parts, np.float64).T.ravel()


def sheared_lines(levels_image: np.ndarray, direction: tuple[int, ...]) -> np.ndarray:
    """The image's lines along `direction` (entries in {−1, 0, 1}) as rows of a 2D array, padded with −1.

    Axes where the direction is −1 are flipped so it is non-negative; its first non-zero axis `a` leads. Every
    other axis `b` the direction moves along is sheared — slice i of `a` is shifted by (S_a − 1 − i) along `b` —
    so that stepping along the direction keeps every coordinate but `a`'s fixed: the lines become rows."""
    q = np.asarray(levels_image)
    for axis, v in enumerate(direction):
        if v == -1:
            q = np.flip(q, axis)
    moving = [axis for axis, v in enumerate(direction) if v != 0]
    lead, sheared = moving[0], moving[1:]
    q = np.moveaxis(q, lead, 0)
    size = q.shape[0]
    out_shape = list(q.shape)
    for b in sheared:
        out_shape[b] += size - 1
    # int16 halves the memory traffic of int64; levels are far below its range (checked by the caller)
    out = np.full(out_shape, -1, dtype=np.int16)
    for i in range(size):
        target = [i] + [slice(None)] * (q.ndim - 1)
        for b in sheared:
            target[b] = slice(size - 1 - i, size - 1 - i + q.shape[b])
        out[tuple(target)] = q[i]
    return np.moveaxis(out, 0, -1).reshape(-1, size)


def run_lengths(levels_image: np.ndarray, direction: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(level, length) of every maximal run of equal levels along `direction` (entries in {−1, 0, 1})."""
    lines = sheared_lines(levels_image, direction)
    # a −1 column after every line keeps a run from continuing into the next line
    flat = np.concatenate([lines, np.full((len(lines), 1), -1, dtype=lines.dtype)], axis=1).ravel()
    starts = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1])
    lengths = np.diff(np.concatenate([starts, [len(flat)]]))
    levels = flat[starts]
    keep = levels >= 0
    return levels[keep].astype(np.intp), lengths[keep]


def glrlm_features(levels_image: np.ndarray, levels: int) -> np.ndarray:
    """Run-length statistics averaged over the unique directions: len(GLRLM_NAMES) values."""
    q = np.asarray(levels_image)
    if levels > np.iinfo(np.int16).max:
        raise ValueError(f"at most {np.iinfo(np.int16).max} grey levels, got {levels}")
    n_voxels = q.size
    per_direction = []
    for direction in unique_directions(q.ndim):
        level, length = run_lengths(q, direction)
        g = level.astype(np.float64) + 1  # grey levels counted from 1, as in the GLRLM definitions
        r = length.astype(np.float64)
        n_runs = len(r)
        level_counts = np.bincount(level, minlength=levels)
        length_counts = np.bincount(length)
        joint = np.bincount(level * (length.max() + 1) + length)
        joint = joint[joint > 0] / n_runs
        per_direction.append([
            np.mean(1 / r ** 2), np.mean(r ** 2),
            (level_counts ** 2).sum() / n_runs ** 2, (length_counts ** 2).sum() / n_runs ** 2,
            n_runs / n_voxels, np.mean(1 / g ** 2), np.mean(g ** 2), -(joint * np.log2(joint)).sum(),
        ])
    return np.mean(per_direction, axis=0)
