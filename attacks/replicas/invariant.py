"""``ncc_fm``: a rotation-, scale- and translation-invariant replica scorer (2D), Fourier–Mellin style.

`ncc_reg` searches a fixed grid of poses (rotations ±10°, magnifications 1.0–1.25, shifts ≤ 10%) around its
shortlist, so a copy posed beyond the grid is missed (held-out benchmark: rotations of 12–30° and crops of
1.25–1.6× at chance). Widening the grid would only move the edge. This scorer needs no pose grid:

1. **invariant shortlist**: the modulus of the Fourier transform of a (low-passed, z-scored, Hann-windowed) image
   ignores translations; resampled to log-polar coordinates (`skimage.transform.warp_polar`, ``scaling="log"``) a
   rotation becomes a circular shift along the angle axis and a magnification a shift along the log-radius axis;
   the modulus of the 2-D Fourier transform of that map ignores both (Fourier–Mellin invariant). Each query's `k`
   nearest training images by cosine of these descriptors (`audit.search`, chunked, never Q×N in memory);
2. **pose of each shortlisted pair, estimated, not searched**: phase correlation of the two log-polar spectra
   (`skimage.registration.phase_cross_correlation`, sub-pixel) gives the rotation and the magnification that take
   the training image to the query. The modulus is point-symmetric, so the angle is known modulo 180°: both
   candidates are tried. The training image is warped to that pose (`scipy.ndimage.affine_transform`, with its
   validity mask), then the translation is the best **masked** NCC over all shifts (Padfield 2012, by FFT): only
   the pixels where the warped training image exists count — the region outside it (a crop's lost margin, a
   rotation's corners) never does — and a shift counts only if the overlap covers ≥ `min_overlap` of the query
   (scikit-image's default overlap ratio, 0.3);
3. score = the largest masked NCC over the shortlist (and, with `flips`, over the query mirrored too, as the other
   whole-image scorers do — one mirror suffices: a mirror about the rows is a mirror about the columns turned by
   180°, which step 2 tries anyway); `nearest` = the training image reaching it.

3D is out of scope (a 3D log-polar/spherical resampling of the spectrum is not built): `fit` refuses 3D images with
an input error and `unsupported` gives the reason, so `audit replicas` runs without this scorer in 3D and says so.
A crop loses content and an anisotropic crop (different magnification per axis) is only approximated by the
isotropic magnification the log-polar correlation estimates, so crops score lower than rotations.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field
from scipy import fft as sfft
from scipy.ndimage import affine_transform, gaussian_filter

from attacks.replicas.base import ReplicaScores, ScorerBase, query_array, training_array
from attacks.replicas.voxel import merge_orientations, orientations
from audit.registry import Params
from audit.search import topk_similarity

# 180 rows of 1° (the modulus repeats after 180°) × 128 log-radius columns from radius 1 to the Nyquist radius
N_ANGLES = 180
N_RADII = 128


class InvariantParams(Params):
    k: int = Field(10, ge=1, description="training images shortlisted per query and orientation by the "
                                         "Fourier–Mellin descriptor")
    flips: bool = Field(True, description="also score the query mirrored along each axis")
    prefilter_sigma: float = Field(1.0, ge=0, description="Gaussian low-pass σ (px) before everything (as "
                                                          "ncc_reg's 2D prefilter)")
    min_radius: float = Field(3.0, ge=1, description="spectrum radius (frequency bins) below which the log-polar "
                                                     "map is dropped: the window's and the mean's leakage")
    descriptor_size: int = Field(16, ge=2, description="Fourier–Mellin coefficients kept per axis of the "
                                                       "log-polar map (lowest frequencies)")
    upsample: int = Field(10, ge=1, description="sub-pixel factor of the log-polar phase correlation "
                                                "(angle resolution 1°/upsample)")
    min_overlap: float = Field(0.3, gt=0, le=1, description="smallest overlap of the warped training image "
                                                            "with the query, as a share of the query's area")
    max_scale: float = Field(4.0, gt=1, description="pose estimates magnifying or shrinking by more than this "
                                                    "are rejected (the pair scores on the other hypothesis)")


# ============================================================================================ pure helpers


def prepare(images: np.ndarray, sigma: float) -> np.ndarray:
    """Low-pass (Gaussian σ px, spatial axes only) then z-score each image: (N, H, W) → float32."""
    out = np.asarray(images, dtype=np.float32)
    if sigma > 0:
        out = gaussian_filter(out, sigma=(0, sigma, sigma))
    flat = out.reshape(len(out), -1)
    std = flat.std(axis=1, keepdims=True)
    out = (flat - flat.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1)
    return out.reshape(images.shape).astype(np.float32)


def log_polar_spectra(images: np.ndarray, min_radius: float) -> tuple[np.ndarray, float]:
    """log(1 + |FFT|) of each Hann-windowed image resampled to log-polar (rows: angles 0–179°, columns: log radius
    from `min_radius` to the Nyquist radius). Returns (maps (N, 180, C) float32, columns per unit of log radius)."""
    from skimage.filters import window
    from skimage.transform import warp_polar

    shape = images.shape[1:]
    spectra = np.log1p(np.abs(sfft.fftshift(sfft.fft2(images * window("hann", shape), axes=(1, 2)), axes=(1, 2))))
    radius = min(shape) / 2
    maps = warp_polar(np.moveaxis(spectra, 0, -1), radius=radius, output_shape=(2 * N_ANGLES, N_RADII),
                      scaling="log", channel_axis=-1, order=1)
    per_log_unit = N_RADII / np.log(radius)  # warp_polar's log scaling: column c ↔ radius exp(c / per_log_unit)
    first = int(np.ceil(np.log(min_radius) * per_log_unit))
    return np.ascontiguousarray(np.moveaxis(maps[:N_ANGLES, first:], -1, 0), dtype=np.float32), per_log_unit


def fourier_mellin_descriptors(maps: np.ndarray, size: int) -> np.ndarray:
    """|2-D FFT| of each (mean-removed) log-polar map, its lowest `size` frequencies per axis (both signs along
    the angle axis): invariant to circular shifts along the angles (rotations) and nearly so to shifts along the
    log radius (magnifications). (N, A, C) → (N, d) float32."""
    centred = maps - maps.mean(axis=(1, 2), keepdims=True)
    modulus = np.abs(sfft.rfft2(centred, axes=(1, 2)))
    keep = np.concatenate([modulus[:, :size, :size], modulus[:, -size + 1:, :size]], axis=1)
    return np.log1p(keep).reshape(len(maps), -1).astype(np.float32)


def estimate_pose(query_map: np.ndarray, train_map: np.ndarray, per_log_unit: float,
                  upsample: int) -> tuple[float, float]:
    """(angle in degrees mod 180, magnification) that takes the training image to the query, by phase correlation
    of their log-polar spectra. The spectrum of an image rotated by θ is rotated by θ; that of an image magnified by
    s is shrunk by 1/s (so its log-polar map moves by −log s columns)."""
    from skimage.registration import phase_cross_correlation

    # phase normalisation (whitened cross-power spectrum): the maps' smooth radial decay would otherwise dominate
    shift, _, _ = phase_cross_correlation(query_map, train_map, upsample_factor=upsample, normalization="phase")
    angle = (-float(shift[0]) * 180.0 / query_map.shape[0]) % 180.0
    return angle, float(np.exp(-shift[1] / per_log_unit))


def similarity_warp(image: np.ndarray, angle_deg: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The image rotated by `angle_deg` (counter-clockwise as displayed, like skimage.transform.rotate) and
    magnified by `scale` about its centre, black outside; with the mask of output pixels inside the source."""
    t = np.deg2rad(angle_deg)
    # output pixel o (row, col) reads the input at c + R(−θ)(o − c)/s; rows grow downwards, hence the signs
    matrix = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]]) / scale
    centre = (np.array(image.shape) - 1) / 2
    offset = centre - matrix @ centre
    warped = affine_transform(image, matrix, offset=offset, order=1, mode="constant", cval=0.0)
    mask = affine_transform(np.ones_like(image), matrix, offset=offset, order=1, mode="constant", cval=0.0)
    return warped, mask > 0.999


def masked_ncc_best_shift(query: np.ndarray, moving: np.ndarray, masks: np.ndarray,
                          min_overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """For one query (H, W) and a batch of warped training images (B, H, W) with their validity masks: the largest
    NCC over the overlap (query pixels × valid moving pixels) over every integer translation whose overlap covers
    ≥ `min_overlap` of the query (Padfield 2012, masked FFT correlation, zero-padded: no wrap-around).
    Returns (best NCC (B,), best shift (B, 2) = the moving image's displacement in (rows, cols))."""
    h, w = query.shape
    padded = (sfft.next_fast_len(2 * h - 1, real=True), sfft.next_fast_len(2 * w - 1, real=True))

    def f(x):
        return sfft.rfft2(x, s=padded, axes=(-2, -1))

    def corr(fa, fb):  # (a ⋆ b)(t) = Σ_x a(x) b(x − t): b displaced by t
        return sfft.irfft2(fa * np.conj(fb), s=padded, axes=(-2, -1))

    m = masks.astype(np.float32)
    mov = np.where(masks, moving, 0).astype(np.float32)
    # centre each moving image on its valid pixels (keeps the float32 sums small and the differences accurate)
    mov = np.where(masks, mov - (mov.sum((1, 2)) / np.maximum(m.sum((1, 2)), 1))[:, None, None], 0)
    q = (query - query.mean()).astype(np.float32)
    fq, fqq, fone = f(q), f(q * q), f(np.ones_like(q))
    fm, fmm, fmask = f(mov), f(mov * mov), f(m)
    n = corr(fone, fmask)
    s_q, s_qq = corr(fq, fmask), corr(fqq, fmask)
    s_m, s_mm = corr(fone, fm), corr(fone, fmm)
    s_qm = corr(fq, fm)
    n_safe = np.maximum(n, 1.0)
    cov = s_qm - s_q * s_m / n_safe
    var = np.maximum(s_qq - s_q ** 2 / n_safe, 0) * np.maximum(s_mm - s_m ** 2 / n_safe, 0)
    valid = (n >= min_overlap * h * w - 0.5) & (var > 1e-6 * n_safe ** 2)
    ncc = np.where(valid, cov / np.sqrt(np.maximum(var, 1e-30)), -np.inf)
    flat = ncc.reshape(len(ncc), -1).argmax(axis=1)
    best = ncc.reshape(len(ncc), -1)[np.arange(len(ncc)), flat]
    rows, cols = np.unravel_index(flat, padded)
    shifts = np.stack([np.where(rows > padded[0] // 2, rows - padded[0], rows),
                       np.where(cols > padded[1] // 2, cols - padded[1], cols)], axis=1)
    return np.clip(best, -1.0, 1.0), shifts


# ============================================================================================ the scorer


class InvariantNCCScorer(ScorerBase):
    """``ncc_fm``: Fourier–Mellin shortlist → estimated rotation + magnification → masked NCC over all shifts."""

    name = "ncc_fm"
    level = "voxel, geometric: pose estimated by Fourier–Mellin phase correlation, no pose grid (our extension)"
    Params = InvariantParams

    def __init__(self, params=None, runtime=None):
        super().__init__(params, runtime)
        self.train: np.ndarray | None = None
        self.maps: np.ndarray | None = None
        self.descriptors: np.ndarray | None = None
        self.per_log_unit: float | None = None

    def unsupported(self, shape: tuple[int, ...]) -> str | None:
        if len(shape) != 2:
            return (f"{self.name} is 2D only (the 3D spherical resampling of the spectrum is not built); "
                    f"got images of shape {tuple(shape)}")
        return None

    def fit(self, train: np.ndarray) -> "InvariantNCCScorer":
        from audit.errors import AuditInputError

        train = training_array(self.name, train)
        reason = self.unsupported(train.shape[1:]) if train.ndim >= 2 else "no image axes"
        if train.ndim != 3 or reason:
            raise AuditInputError(None, f"{self.name} scorer: expected 2D training images (N, H, W): {reason}")
        self.train = prepare(train, self.params.prefilter_sigma)
        self.maps, self.per_log_unit = log_polar_spectra(self.train, self.params.min_radius)
        self.descriptors = fourier_mellin_descriptors(self.maps, self.params.descriptor_size)
        return self

    def fitted_state(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "maps": self.maps, "descriptors": self.descriptors,
                "per_log_unit": np.array(self.per_log_unit)}

    def restore(self, state: dict[str, np.ndarray]) -> "InvariantNCCScorer":
        self.train, self.maps, self.descriptors = state["train"], state["maps"], state["descriptors"]
        self.per_log_unit = float(state["per_log_unit"])
        return self

    def pair_scores(self, query: np.ndarray, query_map: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Masked NCC of one query against each candidate at its estimated pose (best of the two angles)."""
        p = self.params
        warped, masks = [], []
        for c in candidates:
            angle, scale = estimate_pose(query_map, self.maps[c], self.per_log_unit, p.upsample)
            if not (1 / p.max_scale <= scale <= p.max_scale):
                scale = 1.0
            for a in (angle, angle + 180.0):
                image, mask = similarity_warp(self.train[c], a, scale)
                warped.append(image)
                masks.append(mask)
        best, _ = masked_ncc_best_shift(query, np.stack(warped), np.stack(masks), p.min_overlap)
        return best.reshape(len(candidates), 2).max(axis=1)

    def score(self, queries: np.ndarray) -> ReplicaScores:
        from audit.progress import progress_bar

        queries = query_array(self.name, queries, None if self.train is None else self.train.shape[1:])
        queries = prepare(queries, self.params.prefilter_sigma)
        k = min(self.params.k, len(self.train))
        parts = []
        # a mirror about the rows is a mirror about the columns turned by 180°, which the pose estimate tries anyway
        views = orientations(2, self.params.flips)[:2]
        bar = progress_bar(total=len(queries) * len(views), desc=self.name) if self.runtime.progress else None
        for axes in views:
            oriented = np.ascontiguousarray(np.flip(queries, axis=axes)) if axes else queries
            maps, _ = log_polar_spectra(oriented, self.params.min_radius)
            _, index = topk_similarity(fourier_mellin_descriptors(maps, self.params.descriptor_size),
                                       self.descriptors, k=k, metric="cosine", device="cpu")
            scores = np.empty(index.shape, dtype=np.float64)
            for row in range(len(oriented)):
                scores[row] = self.pair_scores(oriented[row], maps[row], index[row])
                if bar is not None:
                    bar.update(1)
            parts.append((scores, index))
        if bar is not None:
            bar.close()
        return merge_orientations(parts, k)

    def components(self) -> dict[str, Any]:
        p = self.params
        return {"level": self.level, "dimensions": "2D only (3D refused: not built)",
                "prefilter": f"gaussian sigma={p.prefilter_sigma} px" if p.prefilter_sigma else "none",
                "orientations": "as is + mirrored (columns; the row mirror = it turned 180°)" if p.flips else "as is",
                "shortlist": {"descriptor": "Fourier-Mellin: |2-D FFT| of the log-polar log(1+|FFT|) of the "
                                            "Hann-windowed image", "log_polar": [N_ANGLES, N_RADII],
                              "min_radius": p.min_radius, "coefficients": p.descriptor_size, "metric": "cosine",
                              "k": p.k, "search": "audit.search.topk_similarity (exact, chunked)"},
                "pose": {"estimate": "phase correlation of the log-polar spectra (skimage), angle and angle+180",
                         "upsample": p.upsample, "max_scale": p.max_scale,
                         "warp": "scipy.ndimage.affine_transform, linear, validity mask"},
                "measure": {"name": "masked NCC over every shift (Padfield 2012, FFT)",
                            "min_overlap": p.min_overlap}}
