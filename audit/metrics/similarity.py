"""Image similarity for paired batches, 2D (N, H, W) and 3D (N, D, H, W): NCC and SSIM — the suite's one
z-score (`zscore`), one NCC of a query against its candidates (`ncc_against`; `audit.search` does the same for
the top-k search through `zscore`) and one FFT masked correlation (`MaskedCorrelation`, behind the shift-, zoom-
and registration-tolerant NCCs).

- NCC: Pearson correlation of the two images' voxels = mean of the product of the per-image z-scored images
  (intensity-normalised, so invariant to affine intensity changes). A constant image has NCC 0.
- SSIM (Wang et al. 2004) with an 11-tap Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, population
  (co)variances, averaged over the positions where the window lies inside the image. This is one implementation
  for 2D and 3D — a separable Gaussian filter, because a dense 11³ kernel costs 40× more per 3D pair — and the
  tests check it against torchmetrics `structural_similarity_index_measure` (2D and 3D), MONAI
  `SSIMMetric(spatial_dims=3)` and scikit-image `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)`. (torchmetrics 1.9's scalar also averages the reflection-padded border, a few
  percent off on small images; its SSIM map averaged over the valid positions is what we compute.) Images smaller than 11 along a side use the largest odd window that fits.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _as_tensor(x, dtype=torch.float32, device: str | torch.device = "cpu") -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype)


def _check_pairs(a: torch.Tensor, b: torch.Tensor) -> int:
    if a.shape != b.shape:
        raise ValueError(f"paired batches must have equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    spatial_dims = a.ndim - 1
    if spatial_dims not in (2, 3):
        raise ValueError(f"expected (N, H, W) or (N, D, H, W) batches, got shape {tuple(a.shape)}")
    return spatial_dims


def zscore(x: torch.Tensor, start_dim: int = 1, eps: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """THE per-item z-score of the suite: each item of `x` centred and divided by its population std over the axes
    from `start_dim` on (times `scale`).

    eps = 0 (similarity measures): an item with no spread becomes zeros (its NCC with anything is 0). eps > 0 (what
    encoders feed their networks): (x − mean) / (std + eps), finite for flat inputs. `scale` = √d turns the dot
    product of two flattened z-scored rows into their NCC (`audit.search.normalise_rows`)."""
    dims = tuple(range(start_dim, x.ndim))
    if eps > 0:
        mean = x.mean(dim=dims, keepdim=True)
        std = x.std(dim=dims, keepdim=True, unbiased=False)
        return (x - mean) / (std * scale + eps)
    flat = x.reshape(*x.shape[:start_dim], -1)
    centred = flat - flat.mean(dim=-1, keepdim=True)
    spread = centred.pow(2).mean(dim=-1, keepdim=True).sqrt() * scale
    z = torch.where(spread > 0, centred / spread.clamp_min(1e-30), torch.zeros_like(centred))
    return z.reshape(x.shape)


def zscore_images(images: torch.Tensor) -> torch.Tensor:
    """Per-image z-score over all voxels (population std); constant images become zeros."""
    return zscore(images, 1)


@torch.no_grad()
def ncc(a, b, device: str | torch.device = "cpu", dtype=torch.float64) -> np.ndarray:
    """NCC of each pair (a[i], b[i]) → (N,) float64 in [-1, 1]."""
    a, b = _as_tensor(a, dtype, device), _as_tensor(b, dtype, device)
    _check_pairs(a, b)
    za, zb = zscore_images(a).reshape(len(a), -1), zscore_images(b).reshape(len(b), -1)
    return (za * zb).mean(dim=1).cpu().numpy().astype(np.float64)


@torch.no_grad()
def ncc_against(queries, candidates, device: str | torch.device = "cpu") -> np.ndarray:
    """NCC of each query with each of its k candidates: queries (B, *S), candidates (B, k, *S) → (B, k) float64.
    Z-scored rows scaled by 1/√d and one batched dot product per query (the query is never repeated k times)."""
    q = _as_tensor(queries, torch.float32, device)
    c = _as_tensor(candidates, torch.float32, device)
    _check_candidates(q, c)
    d = int(np.prod(q.shape[1:]))
    zq = zscore(q.reshape(len(q), -1), 1, scale=float(np.sqrt(d)))
    zc = zscore(c.reshape(c.shape[0] * c.shape[1], -1), 1, scale=float(np.sqrt(d))).reshape(c.shape[0], c.shape[1], -1)
    return torch.bmm(zc, zq.unsqueeze(2)).squeeze(2).double().cpu().numpy()


def _check_candidates(q: torch.Tensor, c: torch.Tensor) -> None:
    if c.ndim != q.ndim + 1 or c.shape[0] != q.shape[0] or c.shape[2:] != q.shape[1:]:
        raise ValueError(f"candidates {tuple(c.shape)} must be (B, k, *query shape) for queries {tuple(q.shape)}")


def gaussian_taps(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float32) -> torch.Tensor:
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (taps / taps.sum()).to(dtype)


def ssim_window(shape: tuple[int, ...], window: int = SSIM_WINDOW) -> int:
    """The window actually used: `window`, or the largest odd size that fits the smallest side."""
    fit = min(window, min(shape))
    return fit if fit % 2 == 1 else fit - 1


def valid_filter_matrix(length: int, taps: torch.Tensor) -> torch.Tensor:
    """(length − window + 1, length) banded matrix: row i holds the taps at columns i .. i + window − 1."""
    size = taps.numel()
    out = torch.zeros(length - size + 1, length, dtype=taps.dtype, device=taps.device)
    for j in range(size):
        out.diagonal(j).copy_(taps[j].expand(length - size + 1))
    return out


def _gaussian_filter_valid(x: torch.Tensor, taps: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """Separable Gaussian filter without padding, one axis at a time: x (B, *spatial) → (B, *spatial − window + 1),
    or, with `stride` s > 1, only every s-th valid position along each axis (from the first).

    Each axis is a matmul with a banded matrix: on CPUs this is several times faster than a convolution with an
    11×1 kernel on one channel, and it is the same arithmetic."""
    for axis in range(1, x.ndim):
        matrix = valid_filter_matrix(x.shape[axis], taps)[::stride]
        moved = x.movedim(axis, -1)
        x = (moved @ matrix.T).movedim(-1, axis)
    return x


@torch.no_grad()
def ssim(a, b, data_range: float = 1.0, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
         device: str | torch.device = "cpu", dtype=torch.float32, batch_size: int = 64) -> np.ndarray:
    """Mean SSIM of each pair (a[i], b[i]) → (N,) float64. Batched so memory is bounded by `batch_size`."""
    a, b = _as_tensor(a, dtype, device), _as_tensor(b, dtype, device)
    _check_pairs(a, b)
    win = ssim_window(tuple(a.shape[1:]), window)
    taps = gaussian_taps(win, sigma, dtype).to(device)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    out = np.empty(len(a), dtype=np.float64)
    for start in range(0, len(a), batch_size):
        x, y = a[start:start + batch_size], b[start:start + batch_size]
        n = len(x)
        # one filtering pass over the five moment images of the whole batch
        stacked = torch.cat([x, y, x * x, y * y, x * y])
        mu_x, mu_y, e_xx, e_yy, e_xy = _gaussian_filter_valid(stacked, taps).split(n)
        out[start:start + n] = _ssim_from_moments(mu_x, e_xx, mu_y, e_yy, e_xy, c1, c2).double().cpu().numpy()
    return out


def _ssim_from_moments(mu_x, e_xx, mu_y, e_yy, e_xy, c1: float, c2: float) -> torch.Tensor:
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov = e_xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return (num / den).reshape(len(num), -1).mean(dim=1)


@torch.no_grad()
def ssim_against(queries, candidates, data_range: float = 1.0, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
                 device: str | torch.device = "cpu", dtype=torch.float32, batch_size: int = 64,
                 stride: int = 1, candidate_moments=None) -> np.ndarray:
    """SSIM of each query with each of its k candidates: queries (B, *S), candidates (B, k, *S) → (B, k).

    The same numbers as `ssim` on the repeated pairs, but a query's local moments are filtered once for its k
    candidates (3 filtered images per pair instead of 5) — what a shortlist re-rank and a brute-force scan need.
    Memory is bounded by `batch_size` pairs.

    `stride` s > 1 gives *sampled SSIM*: the mean of the SSIM map over the window positions on a grid of spacing s
    (every s-th valid position along each axis) instead of all of them — the same local statistics, s^ndim fewer
    map values and about s× fewer filter operations; an approximation used to pre-select candidates
    (`audit.ssim_search`), never as a reported score.

    `candidate_moments` (B, k, 2, *filtered shape): the candidates' local means and E[y²] as `candidate_moments_of`
    computes them with the same stride, when a caller has them cached; a pair then costs one filtered image."""
    q = _as_tensor(queries, dtype, device)
    c = _as_tensor(candidates, dtype, device)
    _check_candidates(q, c)
    _check_pairs(q, q)
    n_q, k = c.shape[:2]
    win = ssim_window(tuple(q.shape[1:]), window)
    taps = gaussian_taps(win, sigma, dtype).to(device)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    out = np.empty((n_q, k), dtype=np.float64)
    per_step = max(1, batch_size // k)
    for start in range(0, n_q, per_step):
        x = q[start:start + per_step]
        nb = len(x)
        mu_x, e_xx = _gaussian_filter_valid(torch.cat([x, x * x]), taps, stride).split(nb)
        y = c[start:start + nb].reshape(nb * k, *q.shape[1:])
        x_rep = x.unsqueeze(1).expand(nb, k, *x.shape[1:]).reshape(nb * k, *x.shape[1:])
        if candidate_moments is None:
            mu_y, e_yy, e_xy = _gaussian_filter_valid(torch.cat([y, y * y, x_rep * y]), taps, stride).split(nb * k)
        else:
            given = _as_tensor(candidate_moments[start:start + nb], dtype, device)
            mu_y, e_yy = given.reshape(nb * k, *given.shape[2:]).unbind(1)
            e_xy = _gaussian_filter_valid(x_rep * y, taps, stride)

        def rep(t):
            return t.unsqueeze(1).expand(nb, k, *t.shape[1:]).reshape(nb * k, *t.shape[1:])

        values = _ssim_from_moments(rep(mu_x), rep(e_xx), mu_y, e_yy, e_xy, c1, c2)
        out[start:start + nb] = values.reshape(nb, k).double().cpu().numpy()
    return out


@torch.no_grad()
def candidate_moments_of(images, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, stride: int = 1,
                         device: str | torch.device = "cpu", dtype=torch.float32,
                         batch_size: int = 256) -> torch.Tensor:
    """(N, *S) → (N, 2, *filtered shape): each image's local mean and local E[y²] (stride as in `ssim_against`),
    to cache for images that are SSIM candidates again and again."""
    x_all = _as_tensor(images, dtype, device)
    taps = gaussian_taps(ssim_window(tuple(x_all.shape[1:]), window), sigma, dtype).to(device)
    parts = []
    for start in range(0, len(x_all), batch_size):
        y = x_all[start:start + batch_size]
        parts.append(torch.stack(_gaussian_filter_valid(torch.cat([y, y * y]), taps, stride).split(len(y)), dim=1))
    return torch.cat(parts)


class MaskedCorrelation:
    """THE masked normalised cross-correlation of the suite (Padfield 2012), by FFT: the NCC of the *overlapping*
    voxels of two images for every integer translation up to `max_shift` × side along each axis.

    With zero padding of `limit` voxels per axis the correlations are linear (no wrap-around) for the shifts
    searched; the overlap's sums Σa, Σa², Σb, Σb², Σab come from five correlations, so every shift is the exact NCC
    of the overlap. Each image is centred first, which keeps the sums small and the float32 differences accurate.
    A query's spectrum and sums (`side`) are computed once and reused for all its candidates and poses."""

    def __init__(self, spatial: tuple[int, ...], max_shift: float = 0.1, device: str | torch.device = "cpu"):
        from scipy.fft import next_fast_len

        self.spatial = tuple(spatial)
        self.device = device
        self.dims = tuple(range(1, len(self.spatial) + 1))
        limits = [min(int(round(max_shift * s)), s - 1) for s in self.spatial]
        # any length >= side + limit keeps the searched shifts free of wrap-around; a 2-3-5-smooth one is fast
        self.padded = tuple(next_fast_len(s + lim, real=True) for s, lim in zip(self.spatial, limits))
        self.index = [_shift_index(p, lim, device) for p, lim in zip(self.padded, limits)]
        self.f_mask = self.fft(torch.ones((1, *self.spatial), dtype=torch.float32, device=device))
        self.overlap = self.corr(self.f_mask, self.f_mask)  # voxels in the overlap, per shift

    def fft(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-padded real FFT over the spatial axes."""
        return torch.fft.rfftn(x, s=self.padded, dim=self.dims)

    def corr(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        """(a ⋆ b)(t) = Σ_x a(x + t) b(x), restricted to the searched shifts."""
        out = torch.fft.irfftn(fa * fb.conj(), s=self.padded, dim=self.dims)
        for axis, idx in enumerate(self.index, start=1):
            out = out.index_select(axis, idx)
        return out

    def centred(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.reshape(len(x), -1).mean(1).reshape(-1, *[1] * len(self.spatial))

    def side(self, images: torch.Tensor, reference: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(spectrum, Σ over the overlap, centred Σ² over the overlap) of centred images, per shift. For the
        query side (`reference=False`) the sums are of the query's voxels that overlap; for references, of theirs."""
        x = self.centred(images)
        fx = self.fft(x)
        if reference:
            sum_x, sum_xx = self.corr(self.f_mask, fx), self.corr(self.f_mask, self.fft(x * x))
        else:
            sum_x, sum_xx = self.corr(fx, self.f_mask), self.corr(self.fft(x * x), self.f_mask)
        return fx, sum_x, (sum_xx - sum_x ** 2 / self.overlap).clamp_min(0)

    def ncc(self, query, reference) -> torch.Tensor:
        """NCC per shift of (query side, reference side) pairs of equal batch size → (B, *shifts)."""
        fa, sum_a, var_a = query
        fb, sum_b, var_b = reference
        cov = self.corr(fa, fb) - sum_a * sum_b / self.overlap
        var = var_a * var_b
        return torch.where(var > 1e-12, cov / var.clamp_min(1e-30).sqrt(), torch.zeros_like(cov))


def _shift_index(length: int, limit: int, device) -> torch.Tensor:
    """Positions of the shifts -limit..limit in a correlation of padded length `length` (negative ones wrap)."""
    return torch.tensor([(t + length) % length for t in range(-limit, limit + 1)], device=device)


def _identity(ndim: int) -> list[np.ndarray]:
    return [np.eye(ndim)]


def shift_ncc_against(queries, candidates, max_shift: float = 0.1, device: str | torch.device = "cpu",
                      batch_size: int = 64) -> np.ndarray:
    """Translation-tolerant NCC: for each query and each of its k candidates, the largest NCC over the region
    where they overlap, over all integer translations of at most `max_shift` × side along every axis
    (`MaskedCorrelation`). queries (B, *S), candidates (B, k, *S) → (B, k). Shift 0 is plain NCC, so the value is
    never below it. = `register_ncc_against` with the identity pose only."""
    ndim = np.ndim(queries) - 1 if not isinstance(queries, torch.Tensor) else queries.ndim - 1
    return register_ncc_against(queries, candidates, rotations=_identity(ndim), scales=(1.0,), max_shift=max_shift,
                                device=device, batch_size=batch_size)


def magnify_centre(images: torch.Tensor, factor: float | tuple[float, ...]) -> torch.Tensor:
    """Enlarge each image of (N, *S) by `factor` (one for all axes, or one per axis) about its centre (linear
    interpolation) and crop back to S."""
    spatial = tuple(images.shape[1:])
    factors = tuple(factor) if isinstance(factor, (tuple, list)) else (factor,) * len(spatial)
    if all(f == 1.0 for f in factors):
        return images
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    size = tuple(max(s, int(round(s * f))) for s, f in zip(spatial, factors))
    big = F.interpolate(images.unsqueeze(1), size=size, mode=mode, align_corners=False).squeeze(1)
    starts = [(b - s) // 2 for b, s in zip(size, spatial)]
    return big[(slice(None),) + tuple(slice(a, a + s) for a, s in zip(starts, spatial))]


def zoom_shift_ncc_against(queries, candidates, scales: tuple[float, ...] = (1.0, 1.1, 1.2), max_shift: float = 0.1,
                           device: str | torch.device = "cpu", batch_size: int = 64) -> np.ndarray:
    """`shift_ncc_against` maximised also over magnifications of the candidate (a crop-and-resize copy shows a
    magnified part of its source): queries (B, *S), candidates (B, k, *S) → (B, k); scale 1 is `shift_ncc`.
    = `register_ncc_against` without rotations."""
    ndim = np.ndim(queries) - 1 if not isinstance(queries, torch.Tensor) else queries.ndim - 1
    return register_ncc_against(queries, candidates, rotations=_identity(ndim), scales=scales, max_shift=max_shift,
                                device=device, batch_size=batch_size)


def rotation_matrix(angle_deg: float, ndim: int, axis: int = 0) -> np.ndarray:
    """(ndim, ndim) rotation by `angle_deg` in voxel coordinates (array axis order). 2D: the (row, col) plane;
    3D: about array axis `axis` (the plane of the two other axes)."""
    t = np.deg2rad(angle_deg)
    c, s = np.cos(t), np.sin(t)
    out = np.eye(ndim)
    i, j = (0, 1) if ndim == 2 else tuple(a for a in range(3) if a != axis)
    out[i, i], out[i, j], out[j, i], out[j, j] = c, -s, s, c
    return out


def rotate_images(images: torch.Tensor, matrix: np.ndarray, padding_mode: str = "reflection") -> torch.Tensor:
    """Resample each image of (N, *S) as image(R · (x − centre) + centre) (linear interpolation, borders
    reflected), i.e. the content is rotated by R⁻¹ about the centre. Voxel coordinates, so non-cubic images
    rotate rigidly. An identity matrix returns the images unchanged."""
    if np.allclose(matrix, np.eye(len(matrix))):
        return images
    spatial = tuple(images.shape[1:])
    nd = len(spatial)
    # grid_sample's coordinates are (x, y[, z]) = reversed array axes, normalised to [-1, 1] (align_corners=False:
    # n = (2 p + 1) / S − 1, so p − centre = n · S / 2 with centre (S − 1) / 2)
    rev = matrix[::-1, ::-1]
    half = np.array(spatial[::-1], dtype=np.float64) / 2
    theta = np.zeros((nd, nd + 1))
    theta[:, :nd] = np.diag(1 / half) @ rev @ np.diag(half)
    theta_t = torch.tensor(theta, dtype=images.dtype, device=images.device).expand(len(images), nd, nd + 1)
    grid = F.affine_grid(theta_t, (len(images), 1, *spatial), align_corners=False)
    out = F.grid_sample(images.unsqueeze(1), grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    return out.squeeze(1)


def rotation_grid(ndim: int, max_angle: float = 10.0, step: float = 2.5) -> list[np.ndarray]:
    """Rotations searched by `register_ncc_against`: identity, then ±step, ±2·step, … up to ±max_angle in the
    plane (2D) or about each array axis in turn (3D; no compound rotations, to keep the grid small)."""
    angles = [a for a in np.arange(step, max_angle + 1e-9, step) for a in (a, -a)]
    out = [np.eye(ndim)]
    for axis in (range(3) if ndim == 3 else [0]):
        out += [rotation_matrix(a, ndim, axis) for a in angles]
    return out


@torch.no_grad()
def register_ncc_against(queries, candidates, rotations: list[np.ndarray] | None = None,
                         scales: tuple[float, ...] = (1.0, 1.1, 1.2), max_shift: float = 0.1,
                         device: str | torch.device = "cpu", batch_size: int = 64) -> np.ndarray:
    """Registration-style NCC: for each query and each of its k candidates, the largest overlap NCC over a grid
    of similarity transforms — every rotation of `rotations` applied to the query (default `rotation_grid`:
    ±10° in 2.5° steps; 3D about each axis) × every magnification of `scales` applied to the candidate × every
    integer translation up to `max_shift` × side (masked FFT cross-correlation, as `shift_ncc_against`).
    queries (B, *S), candidates (B, k, *S) → (B, k). The identity pose is included, so the value is never below
    `zoom_shift_ncc_against` with the same scales (nor below plain NCC).

    Cost: the candidates' spectra and overlap sums are computed once per scale, the query's once per rotation;
    each (pair, pose) then costs one inverse FFT."""
    q = _as_tensor(queries, torch.float32, device)
    c = _as_tensor(candidates, torch.float32, device)
    _check_candidates(q, c)
    spatial = tuple(q.shape[1:])
    rotations = rotation_grid(len(spatial)) if rotations is None else rotations
    correlation = MaskedCorrelation(spatial, max_shift, device)
    n_q, k = c.shape[:2]
    out = np.full((n_q, k), -np.inf, dtype=np.float64)
    per_step = max(1, batch_size // k)

    def repeat(t: torch.Tensor, nb: int) -> torch.Tensor:  # each query's tensor once per candidate
        return t.unsqueeze(1).expand(nb, k, *t.shape[1:]).reshape(nb * k, *t.shape[1:])

    for start in range(0, n_q, per_step):
        a0 = q[start:start + per_step]
        nb = len(a0)
        # the query's side per rotation: spectrum and overlap sums (shared by its k candidates)
        query_sides = [tuple(repeat(t, nb) for t in correlation.side(rotate_images(a0, matrix)))
                       for matrix in rotations]
        best = torch.full((nb, k), -float("inf"))
        for factor in scales:
            reference = correlation.side(magnify_centre(c[start:start + nb].reshape(nb * k, *spatial), factor),
                                         reference=True)
            for query in query_sides:
                values = correlation.ncc(query, reference)
                best = torch.maximum(best, values.reshape(nb, k, -1).amax(dim=2).cpu())
        out[start:start + nb] = best.double().numpy()
    return out
