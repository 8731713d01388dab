"""Local similarity (our extension): finds a *copied region* — part of a training image inside an otherwise new
image, the kind of copy Somepalli et al. (CVPR 2023) found in Stable Diffusion outputs — that whole-image scorers
miss, because the rest of the image is new.

``ncc_local`` is a max-over-windows NCC, searched without the dense query × training × position scan:

1. **windows**: every query is cut into windows of `window` (2D: 1/4 of each side, 3D: 3/8) on a grid of
   `query_stride` (half a window); every training image into windows of the same size on a finer grid
   (`train_stride`: 1/8 of a window in 2D, 1/4 in 3D). Windows that are mostly flat (more than `max_flat` of their
   pixels within 0.01 of the window's median) or have no fine detail (detail std < `min_std`) are not searched:
   they match countless others by chance;
2. **shortlist**: each window is described by its area-downsampled content (`descriptor_side`² or ³ values) and
   searched against all training windows with the exact chunked top-k (`audit.search`, NCC);
3. **refine**: for each query window and each of its `k_windows` candidates, template matching within
   `refine_radius` of the candidate position on *detail images* (`detail`: each window / neighbourhood minus its
   own Gaussian low-pass), then the NCC of the window's detail with the detail of the training window at the best
   offset, each filtered on its own — exactly 1 for a copied window, whatever surrounds the copy or its source;
4. **score** = the best window NCC of the query; `nearest` = that training image, and the matched region is
   reported as boxes in the query and in the training image (drawn in pairs.png).

Two options, off by default (measured on the held-out tuning split, session 5: each raised the chance matches of
new images about as much as the copies' scores, docs/replicas.md): `recentre_windows` re-centres the query's best
windows at their match's displacement (a window half outside a pasted region is moved into it, no new search);
`query_scales` also searches the query shrunk by 1/m (a crop-and-resize copy's windows then match at the
training scale).

Why detail images: on raw windows, background windows with a few bright pixels and smooth ramps matched windows
of other images at NCC ≈ 1 by chance (tuning split, dev data: holdout null median 0.979, 99th percentile 1.000);
with detail images and the flat-window rule the null's median was 0.57 and its 99th percentile 0.90, pasted
regions staying at 1.000. A whole-image copy is also a copy of each of its windows, so this scorer sees those too;
its null is the best chance match of one window among all training windows, which is why it is combined with the
whole-image scorers rather than used alone.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from attacks.replicas.base import ReplicaScores, ScorerBase, query_array, training_array
from audit.metrics.similarity import zscore
from audit.registry import Params, Runtime
from audit.search import topk_similarity

WINDOW_FRACTION = {2: 0.25, 3: 0.375}
DESCRIPTOR_SIDE = {2: 8, 3: 4}
DETAIL_SIGMA = {2: 2.0, 3: 1.0}
TRAIN_STRIDE_FRACTION = {2: 0.125, 3: 0.25}  # of the window: the training grid's step
REFINE_BATCH_BYTES = 32 * 2**20


def grid_positions(length: int, window: int, stride: int) -> list[int]:
    """Window starts along an axis: 0, stride, 2·stride, … and the last start (length − window) always."""
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def window_grid(shape: tuple[int, ...], window: tuple[int, ...], stride: tuple[int, ...]) -> np.ndarray:
    """(P, ndim) window starts of a regular grid over an image of `shape`."""
    axes = [grid_positions(s, w, t) for s, w, t in zip(shape, window, stride)]
    return np.array(list(itertools.product(*axes)), dtype=np.int64)


def extract_windows(images: torch.Tensor, starts: np.ndarray, window: tuple[int, ...]) -> torch.Tensor:
    """(B, *S) images, (P, ndim) starts → (B, P, *window)."""
    return torch.stack([images[(slice(None),) + tuple(slice(a, a + w) for a, w in zip(start, window))]
                        for start in starts], dim=1)


def describe_windows(windows: torch.Tensor, side: int) -> torch.Tensor:
    """(B, P, *window) → (B·P, side^ndim) area-downsampled windows (the search z-scores them: NCC)."""
    nd = windows.ndim - 2
    flat = windows.reshape(-1, 1, *windows.shape[2:])
    pool = F.adaptive_avg_pool2d if nd == 2 else F.adaptive_avg_pool3d
    return pool(flat, (side,) * nd).reshape(flat.shape[0], -1)


def box_sums(x: torch.Tensor, window: tuple[int, ...]) -> torch.Tensor:
    """(B, *r) → (B, *(r − w + 1)): the sum over every window position, by cumulative sums (an integral image)."""
    for axis, w in enumerate(window, start=1):
        c = torch.cumsum(x, dim=axis)
        c = torch.cat([torch.zeros_like(c.narrow(axis, 0, 1)), c], dim=axis)
        x = c.narrow(axis, w, c.shape[axis] - w) - c.narrow(axis, 0, c.shape[axis] - w)
    return x


FLAT_TOLERANCE = 0.01  # intensity (of [0, 1]) within which a pixel counts as flat: about 2.5 grey levels of 8 bit


def informative_windows(raw: torch.Tensor, detail: torch.Tensor, min_std: float, max_flat: float) -> np.ndarray:
    """(Q, W, d) raw and detail windows → (Q, W) bool: worth searching. A window that is mostly flat (background)
    or has no fine detail matches countless others by chance: flat background, or the halo a nearby edge leaves
    in the detail image."""
    flat = ((raw - raw.median(dim=2, keepdim=True).values).abs() < FLAT_TOLERANCE).float().mean(dim=2)
    return ((detail.std(dim=2, unbiased=False) >= min_std) & (flat <= max_flat)).numpy()


@torch.no_grad()
def detail(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each item of (B, *S) minus its Gaussian low-pass (σ in px, taps to 3σ, borders reflected *at the item's own
    border*): the fine texture a copied region keeps exactly, without the edges and ramps that any similar edge or
    ramp matches by chance. Filtering each window (or region) on its own makes a copied window's detail identical
    to its source's, whatever surrounds either. σ = 0: the items as they are."""
    if not sigma:
        return x
    nd = x.ndim - 1
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    taps = taps / taps.sum()
    conv = F.conv2d if nd == 2 else F.conv3d
    low = x.unsqueeze(1)
    for axis in range(nd):
        pad = [0, 0] * nd
        pad[2 * (nd - 1 - axis): 2 * (nd - 1 - axis) + 2] = [radius, radius]
        shape = [1, 1] + [1] * nd
        shape[2 + axis] = len(taps)
        low = conv(F.pad(low, pad, mode="reflect"), taps.reshape(shape))
    return x - low.squeeze(1)


@torch.no_grad()
def template_ncc(templates: torch.Tensor, regions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best NCC of each template over every position where it lies wholly inside its region (template matching).

    templates (B, *w), regions (B, *r) with r ≥ w per axis → (best NCC (B,), offset of the best (B, ndim)).
    The numerator is a grouped convolution with the centred template; the region's local sums come from box
    filters, so no patch is materialised."""
    nd = templates.ndim - 1
    w = tuple(templates.shape[1:])
    n, d = len(templates), int(np.prod(w))
    conv = F.conv2d if nd == 2 else F.conv3d
    t = templates.reshape(n, -1)
    t = t - t.mean(dim=1, keepdim=True)
    t_norm = t.norm(dim=1)
    dot = conv(regions.unsqueeze(0), t.reshape(n, 1, *w), groups=n)[0]  # Σ t̃·R per offset (t̃ has zero mean)
    # the region centred first keeps the float32 sums of squares accurate
    r = regions - regions.reshape(n, -1).mean(dim=1).reshape(n, *[1] * nd)
    total, total_sq = box_sums(r, w), box_sums(r * r, w)
    spread = (total_sq - total * total / d).clamp_min(0).sqrt()  # ‖R_o − mean(R_o)‖ per offset
    denominator = spread * t_norm.reshape(n, *[1] * nd)
    values = torch.where(denominator > 1e-6, dot / denominator.clamp_min(1e-30), torch.zeros_like(dot))
    best, where = values.reshape(n, -1).max(dim=1)
    offsets = values.shape[1:]
    offset = torch.stack([(where // int(np.prod(offsets[i + 1:]))) % offsets[i] for i in range(nd)], dim=1)
    return best.clamp(-1.0, 1.0), offset


RECENTRE_WINDOWS = {2: 0, 3: 0}  # off by default: on the tuning split it raised the null as much as the copies
RECENTRE_STEPS = 2  # re-centring offsets: −2..2 steps of a quarter query stride per axis (±half a stride)
QUERY_SCALES: dict[int, tuple[float, ...]] = {2: (), 3: ()}  # magnifications searched besides 1 by default


@torch.no_grad()
def resample_queries(queries: np.ndarray, magnification: float) -> np.ndarray:
    """(Q, *S) → (Q, *round(S / m)): each query shrunk by its magnification m (area-weighted: linear with
    antialiasing), so that a copy magnified by m (a crop resized back) is at the training images' scale again."""
    x = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).unsqueeze(1)
    size = tuple(max(1, int(round(s / magnification))) for s in queries.shape[1:])
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    antialias = x.ndim == 4  # torch antialiases bilinear/bicubic only
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)[:, 0].numpy()


GRAPHICS_RADIUS = 2  # neighbourhood radius (px) of the flatness and cluster tests
GRAPHICS_MIN_RANGE = 8  # grey levels (of 255) the neighbourhood must span: on flat ground values coincide freely
GRAPHICS_MIN_CLUSTER = 3  # graphics pixels in the neighbourhood: strokes are clusters, chance coincidences alone


def burned_in_graphics(images: np.ndarray, need: int, reach: int = 0) -> np.ndarray | None:
    """(N, *S) images in [0, 1] → (N, *S) bool: pixels of graphics burned in at a fixed place, or None.

    A pixel of image i is graphics when its 8-bit value is the value most images have at that position and at
    least `need` images have it there, that value is not the background (the most common value overall, ± 2
    levels), the pixel's neighbourhood is not flat (spans ≥ GRAPHICS_MIN_RANGE levels in image i), and at least
    GRAPHICS_MIN_CLUSTER such pixels lie in that neighbourhood (a stroke, not a lone coincidence). The mask is
    dilated by the neighbourhood radius + `reach` (the halo a stroke leaves in the detail image). Memory: one
    (positions × 256) count table."""
    from scipy.ndimage import binary_dilation, convolve, maximum_filter, minimum_filter

    n, shape = len(images), images.shape[1:]
    nd = len(shape)
    levels = np.clip(np.round(np.asarray(images) * 255), 0, 255).astype(np.uint8).reshape(n, -1)
    n_pixels = levels.shape[1]
    counts = np.zeros((n_pixels, 256), np.int32)  # per position, how many images have each value
    offsets = np.arange(n_pixels, dtype=np.int64) * 256
    for b in range(0, n, 256):
        counts += np.bincount((levels[b:b + 256].astype(np.int64) + offsets).reshape(-1),
                              minlength=n_pixels * 256).reshape(n_pixels, 256).astype(np.int32)
    mode, held = counts.argmax(axis=1).astype(np.uint8), counts.max(axis=1)
    del counts
    background = int(np.bincount(levels.reshape(-1), minlength=256).argmax())
    common = (held >= need) & (np.abs(mode.astype(np.int16) - background) > 2)
    if not common.any():
        return None
    side = (2 * GRAPHICS_RADIUS + 1,) * nd
    dilate = np.ones((2 * (GRAPHICS_RADIUS + reach) + 1,) * nd, bool)
    out = np.zeros((n, *shape), bool)
    for i in np.flatnonzero(((levels == mode) & common).any(axis=1)):
        image = levels[i].reshape(shape)
        on = ((levels[i] == mode) & common).reshape(shape)
        spread = maximum_filter(image, size=side).astype(np.int16) - minimum_filter(image, size=side)
        on &= spread >= GRAPHICS_MIN_RANGE
        on &= convolve(on.astype(np.int32), np.ones(side, np.int32), mode="constant") >= GRAPHICS_MIN_CLUSTER
        if on.any():
            out[i] = binary_dilation(on, dilate)
    return out if out.any() else None


class LocalParams(Params):
    window: int | None = Field(None, ge=4, description="window side in px (None: 1/4 of the side in 2D, 3/8 in 3D)")
    query_stride: int | None = Field(None, ge=1, description="query window step (None: half a window)")
    train_stride: int | None = Field(None, ge=1, description="training window step (None: 1/8 of a window in 2D, "
                                                             "1/4 in 3D)")
    descriptor_side: int | None = Field(None, ge=2, description="downsampled window side of the shortlist "
                                                                "(None: 8 in 2D, 4 in 3D)")
    k_windows: int = Field(5, ge=1, description="training windows shortlisted per query window")
    refine_radius: int | None = Field(None, ge=0, description="px searched around a candidate at full resolution "
                                                              "(None: the training stride)")
    detail_sigma: float | None = Field(None, ge=0, description="windows are compared as detail images (minus a "
                                                                "Gaussian low-pass of this σ in px; None: 2 in 2D, "
                                                                "1 in 3D; 0: raw)")
    min_std: float = Field(0.01, ge=0, description="windows whose detail std is smaller are not searched")
    max_flat: float = Field(0.5, ge=0, le=1, description="windows with a larger share of flat pixels (within 0.01 "
                                                         "of the window's median) are not searched")
    mask_graphics: bool = Field(True, description="mask burned-in graphics (annotation text, markers, overlay lines "
                                                  "at the same position in many training images) out of the local "
                                                  "search")
    graphics_share: float = Field(0.1, gt=0, le=1, description="a pixel value is graphics when at least this share of "
                                                               "the training images has it at that position")
    graphics_min_images: int = Field(3, ge=2, description="... and at least this many training images")
    graphics_energy: float = Field(0.5, gt=0, le=1, description="a training window is masked when at least this "
                                                                "share of its detail energy lies on graphics")
    recentre_windows: int | None = Field(None, ge=0, description="the query's best windows re-centred (None: 0, off, "
                                                                  "in 2D and 3D; e.g. 3): the same query→training "
                                                                  "displacement tried for the window moved by up to "
                                                                  "half a query step, so a window half outside a "
                                                                  "pasted region is moved into it, without a new search")
    query_scales: list[float] | None = Field(None, description="magnifications m (> 0, e.g. 1.25 and 1.6) at which "
                                                               "the query is also searched, shrunk by 1/m (a "
                                                               "magnified crop's windows then match training windows "
                                                               "at the training scale); None or []: only its own "
                                                               "scale (off by default)")

    @field_validator("query_scales")
    @classmethod
    def _positive_scales(cls, scales: list[float] | None) -> list[float] | None:
        if scales is not None and any(not (m > 0) for m in scales):
            raise ValueError(f"query_scales must be positive magnifications, got {scales}")
        return scales


class LocalNCCScorer(ScorerBase):
    """``ncc_local``: the best full-resolution NCC of any window of the query with any window of a training image
    (module docstring); reports the matched boxes."""

    name = "ncc_local"
    level = "local (our extension: copied regions)"
    Params = LocalParams

    def __init__(self, params: LocalParams | None = None, runtime: Runtime | None = None):
        super().__init__(params, runtime)
        self.train: np.ndarray | None = None
        self.train_index: np.ndarray | None = None  # (N·P, d) window descriptors
        self.train_starts: np.ndarray | None = None  # (P, ndim)
        self.index_ids: np.ndarray | None = None  # (M,) flat window id (image · P + start) of each index row
        self.shared_images: np.ndarray = np.zeros(0, np.int64)  # training images holding shared graphics
        self.shared_masks: np.ndarray | None = None  # (K, *S) bool: their shared pixels
        self._shared_fraction: dict[int, torch.Tensor] = {}

    def geometry(self, shape: tuple[int, ...]) -> dict[str, Any]:
        """Window, strides, descriptor side and refine radius resolved for images of `shape`."""
        p, nd = self.params, len(shape)
        window = tuple(min(s, p.window or max(4, int(round(WINDOW_FRACTION[nd] * s)))) for s in shape)
        query_stride = tuple(p.query_stride or max(1, w // 2) for w in window)
        train_stride = tuple(p.train_stride or max(1, int(round(TRAIN_STRIDE_FRACTION[nd] * w))) for w in window)
        radius = p.refine_radius if p.refine_radius is not None else max(train_stride)
        return {"window": window, "query_stride": query_stride, "train_stride": train_stride,
                "descriptor_side": min(p.descriptor_side or DESCRIPTOR_SIDE[nd], min(window)),
                "refine_radius": int(radius),
                "detail_sigma": DETAIL_SIGMA[nd] if p.detail_sigma is None else p.detail_sigma}

    def unsupported(self, shape: tuple[int, ...]) -> str | None:
        """Windows must be wider than the detail filter's reach (3σ, rounded up) on every axis: the filter reflects
        each window at its own border, and a window no wider than its low-pass has no detail left to compare. So
        small images (2D at the defaults: under 27 px a side) have no local level."""
        g = self.geometry(tuple(shape))
        reach = int(np.ceil(3 * g["detail_sigma"])) if g["detail_sigma"] else 0
        if min(g["window"]) > reach:
            return None
        need = next((s for s in range(min(shape), 100 * (reach + 1))
                     if min(self.geometry((s,) * len(shape))["window"]) > reach), None)
        at_least = f"images of at least {need} px a side, or " if need is not None else ""
        return (f"images of {'x'.join(map(str, shape))} px give windows of {'x'.join(map(str, g['window']))} px, not "
                f"wider than the detail filter's reach ({reach} px = 3 x detail_sigma {g['detail_sigma']:g}); the "
                f"local level needs windows > {reach} px ({at_least}--option ncc_local.window / "
                f"ncc_local.detail_sigma)")

    @torch.no_grad()
    def fit(self, train: np.ndarray) -> "LocalNCCScorer":
        train = training_array(self.name, train)
        g = self.geometry(train.shape[1:])
        self.train_starts = window_grid(train.shape[1:], g["window"], g["train_stride"])
        per_batch = max(1, 4096 // len(self.train_starts))
        parts = [describe_windows(extract_windows(torch.from_numpy(np.ascontiguousarray(train[i:i + per_batch])),
                                                  self.train_starts, g["window"]), g["descriptor_side"]).numpy()
                 for i in range(0, len(train), per_batch)]
        self.train_index = np.concatenate(parts)
        self.train = np.ascontiguousarray(train)
        self.index_ids = np.arange(len(self.train_index), dtype=np.int64)
        self.shared_images, self.shared_masks, self._shared_fraction = np.zeros(0, np.int64), None, {}
        if self.params.mask_graphics and len(train) > 1:
            self._mask_shared_graphics(g)
        return self

    @torch.no_grad()
    def _mask_shared_graphics(self, g: dict[str, Any]) -> None:
        """Burned-in graphics — annotation text, markers, overlay lines written into the pixels at the same place in
        many images (a scanner's or an exporter's) — make any new image carrying them match a training window at
        NCC 1: a real shared region, but not a copy of a patient's image. They are found without any search
        (`burned_in_graphics`): a pixel value held at the same position by at least `graphics_share` of the
        training images (and `graphics_min_images`), not background, in a non-flat neighbourhood, clustered into
        strokes. A training window whose detail energy lies mostly (≥
        `graphics_energy`) on graphics leaves the index, and the refine step rejects a match that slid onto one.
        Anatomy is not masked this way even where two training images share it at different places (duplicated
        images are what a generator memorises most: they must stay searchable)."""
        n = len(self.train)
        need = max(self.params.graphics_min_images, int(np.ceil(self.params.graphics_share * n)))
        masks = burned_in_graphics(self.train, need, reach=int(np.ceil(3 * g["detail_sigma"])))
        if masks is None:
            return
        self.shared_images = np.flatnonzero(masks.reshape(n, -1).any(axis=1)).astype(np.int64)
        self.shared_masks = masks[self.shared_images]
        self._drop_shared_windows()

    def _shared_fractions(self, image: int) -> torch.Tensor | None:
        """(*(S − w + 1)) share of the detail energy on graphics pixels of the window starting at each position of
        a training image (its detail image filtered whole), or None when it holds no graphics."""
        if image not in self._shared_fraction:
            at = np.searchsorted(self.shared_images, image)
            if at == len(self.shared_images) or self.shared_images[at] != image:
                return None
            g = self.geometry(self.train.shape[1:])
            energy = detail(torch.from_numpy(self.train[image])[None], g["detail_sigma"]) ** 2
            mask = torch.from_numpy(self.shared_masks[at]).float()[None]
            on = box_sums(energy * mask, g["window"])[0]
            self._shared_fraction[image] = on / box_sums(energy, g["window"])[0].clamp_min(1e-12)
        return self._shared_fraction[image]

    def _drop_shared_windows(self) -> None:
        """Training windows mostly on graphics leave the index (`index_ids` maps its rows to flat window ids)."""
        n_starts = len(self.train_starts)
        keep = np.ones(len(self.train_index), bool)
        for image in self.shared_images:
            fraction = self._shared_fractions(int(image))
            at_starts = fraction[tuple(torch.from_numpy(self.train_starts).T)].numpy()
            keep[image * n_starts:(image + 1) * n_starts] = at_starts < self.params.graphics_energy
        self.index_ids = np.flatnonzero(keep).astype(np.int64)
        self.train_index = self.train_index[keep]

    def _query_windows(self, queries: np.ndarray, starts: np.ndarray, g: dict[str, Any]):
        """(raw windows (Q, W, *w), detail windows (Q, W, *w), flat (query, window) rows worth searching)."""
        window = g["window"]
        n_q, n_w = len(queries), len(starts)
        raw = extract_windows(torch.from_numpy(np.ascontiguousarray(queries)), starts, window)  # (Q, W, *w)
        windows = detail(raw.reshape(n_q * n_w, *window), g["detail_sigma"]).reshape(raw.shape)
        informative = informative_windows(raw.reshape(n_q, n_w, -1), windows.reshape(n_q, n_w, -1),
                                          self.params.min_std, self.params.max_flat)
        return raw, windows, np.flatnonzero(informative.reshape(-1))

    def resolved_recentre(self, ndim: int) -> int:
        """How many of each query's best windows are re-centred (`recentre_windows`; None: RECENTRE_WINDOWS)."""
        n = self.params.recentre_windows
        return RECENTRE_WINDOWS[ndim] if n is None else int(n)

    def resolved_query_scales(self, ndim: int) -> list[float]:
        """The magnifications searched besides 1 (`query_scales`; None: QUERY_SCALES of the dimension)."""
        scales = self.params.query_scales
        return [float(m) for m in (QUERY_SCALES[ndim] if scales is None else scales)]

    @torch.no_grad()
    def score(self, queries: np.ndarray) -> ReplicaScores:
        queries = query_array(self.name, queries, None if self.train is None else self.train.shape[1:])
        shape = queries.shape[1:]
        g = self.geometry(shape)
        nd, window = len(shape), g["window"]
        n_q = len(queries)
        # per scale: (best (Q, W), best training image, best training start, each query's window starts in its
        # own pixels (Q, W, ndim; float), window side in the query's pixels)
        found = []
        for m in [1.0] + self.resolved_query_scales(nd):
            resampled = queries if m == 1.0 else resample_queries(queries, m)
            if any(s < w for s, w in zip(resampled.shape[1:], window)):
                continue  # too small at this magnification for one window
            best, best_train, best_start, starts = self._search(resampled, g)
            found.append((best, best_train, best_start, starts * m, np.array(window) * m))
        best = np.concatenate([f[0] for f in found], axis=1)  # (Q, all windows of all scales)
        top_window = np.argmax(best, axis=1)
        scores = best[np.arange(n_q), top_window]
        has_match = np.isfinite(scores)
        scores = np.where(has_match, scores, 0.0)  # a query with no informative window: NCC 0, "no match"
        nearest = np.zeros(n_q, np.int64)
        query_box = np.zeros((n_q, 2, nd), np.int64)
        train_box = np.zeros((n_q, 2, nd), np.int64)
        offset = 0
        for f_best, f_train, f_start, f_starts, f_size in found:
            n_w = f_best.shape[1]
            here = np.flatnonzero((top_window >= offset) & (top_window < offset + n_w))
            local = top_window[here] - offset
            nearest[here] = f_train[here, local]
            q_start = np.round(f_starts[here, local]).astype(np.int64)
            q_end = np.minimum(np.round(f_starts[here, local] + f_size).astype(np.int64), np.array(shape))
            query_box[here] = np.stack([q_start, q_end], axis=1)
            t_start = f_start[here, local]
            train_box[here] = np.stack([t_start, t_start + np.array(window)], axis=1)
            offset += n_w
        return ReplicaScores(scores=scores.astype(np.float64), nearest=nearest.astype(np.int64),
                             query_box=query_box, train_box=train_box)

    def _search(self, queries: np.ndarray, g: dict[str, Any]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every window of `queries` (on the query grid of their own shape) shortlisted and refined against the
        training windows → (best NCC (Q, W), its training image (Q, W), its training start (Q, W, ndim), each
        query's window starts (Q, W, ndim)); W includes the re-centred windows (`_recentre`)."""
        shape = queries.shape[1:]
        nd, window = len(shape), g["window"]
        starts = window_grid(shape, window, g["query_stride"])
        n_q, n_w = len(queries), len(starts)
        raw, windows, rows = self._query_windows(queries, starts, g)  # rows: (query, window) flattened
        best = np.full(n_q * n_w, -np.inf)
        best_train = np.zeros(n_q * n_w, np.int64)
        best_start = np.zeros((n_q * n_w, nd), np.int64)
        if len(rows):
            descriptors = describe_windows(raw.reshape(n_q * n_w, 1, *window)[torch.from_numpy(rows)],
                                           g["descriptor_side"]).numpy()
            k = min(self.params.k_windows, len(self.train_index))
            _, hits = topk_similarity(descriptors, self.train_index, k=k, metric="ncc", device=self.runtime.device)
            self._refine(windows.reshape(n_q * n_w, *window), rows, self.index_ids[hits], g, best, best_train,
                         best_start)
        best, best_train = best.reshape(n_q, n_w), best_train.reshape(n_q, n_w)
        best_start = best_start.reshape(n_q, n_w, nd)
        query_starts = np.broadcast_to(starts[None], (n_q, n_w, nd))
        n_recentre = self.resolved_recentre(nd)
        if n_recentre and len(rows):
            extra = self._recentre(queries, best, best_train, best_start, starts, g, min(n_recentre, n_w))
            best = np.concatenate([best, extra[0]], axis=1)
            best_train = np.concatenate([best_train, np.take_along_axis(best_train, extra[3], axis=1)], axis=1)
            best_start = np.concatenate([best_start, extra[1]], axis=1)
            query_starts = np.concatenate([query_starts, extra[2]], axis=1)
        return best, best_train, best_start, query_starts.astype(np.float64)

    @torch.no_grad()
    def _recentre(self, queries: np.ndarray, best: np.ndarray, best_train: np.ndarray, best_start: np.ndarray,
                  starts: np.ndarray, g: dict[str, Any], n_top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The windows of a pasted region all share its displacement (query → training). For each query's `n_top`
        best windows, the window moved by every offset of −RECENTRE_STEPS..RECENTRE_STEPS quarter query strides
        per axis is compared (detail NCC, each filtered on its own, as in the refine) with the training window at
        the same displacement — no new search, so a chance match gains only the few windows around it. Moves
        that leave either image, land on an uninformative query window or on masked graphics count −inf.
        → (NCC (Q, R), training start (Q, R, ndim), query start (Q, R, ndim), source window column (Q, R))."""
        shape, window, sigma = queries.shape[1:], g["window"], g["detail_sigma"]
        nd, n_q = len(shape), len(queries)
        step = [max(1, s // 4) for s in g["query_stride"]]
        moves = np.array([m for m in itertools.product(range(-RECENTRE_STEPS, RECENTRE_STEPS + 1), repeat=nd)
                          if any(m)], np.int64) * np.array(step)  # (M, nd)
        top = np.argsort(-best, axis=1, kind="stable")[:, :n_top]  # (Q, T)
        column = np.repeat(top, len(moves), axis=1)  # (Q, T·M)
        q_start = starts[column] + np.tile(moves, (n_top, 1))[None]  # (Q, T·M, nd)
        t_start = np.take_along_axis(best_start, column[..., None], axis=1) + (q_start - starts[column])
        limit_q, limit_t = np.array(shape) - np.array(window), np.array(self.train.shape[1:]) - np.array(window)
        valid = (np.isfinite(np.take_along_axis(best, column, axis=1))
                 & (q_start >= 0).all(-1) & (q_start <= limit_q).all(-1)
                 & (t_start >= 0).all(-1) & (t_start <= limit_t).all(-1))
        q_start, t_start = np.clip(q_start, 0, limit_q), np.clip(t_start, 0, limit_t)
        values = np.full(column.shape, -np.inf)
        query_index = np.broadcast_to(np.arange(n_q)[:, None], column.shape)
        pairs = np.flatnonzero(valid.reshape(-1))
        if len(pairs):
            qi = query_index.reshape(-1)[pairs]
            qs, ts = q_start.reshape(-1, nd)[pairs], t_start.reshape(-1, nd)[pairs]
            image = best_train[qi, column.reshape(-1)[pairs]]
            qt, tt = torch.from_numpy(np.ascontiguousarray(queries)), torch.from_numpy(self.train)
            d = int(np.prod(window))
            out = np.empty(len(pairs))
            per_batch = max(1, REFINE_BATCH_BYTES // max(1, 8 * d))
            for b in range(0, len(pairs), per_batch):
                sl = slice(b, b + per_batch)
                raw = torch.stack([qt[i][tuple(slice(a, a + w) for a, w in zip(c, window))]
                                   for i, c in zip(qi[sl], qs[sl])])
                mine = detail(raw, sigma)
                keep = informative_windows(raw.reshape(1, len(raw), -1), mine.reshape(1, len(raw), -1),
                                           self.params.min_std, self.params.max_flat)[0]
                theirs = detail(torch.stack([tt[i][tuple(slice(a, a + w) for a, w in zip(c, window))]
                                             for i, c in zip(image[sl], ts[sl])]), sigma)
                za = zscore(mine.reshape(len(mine), -1), 1, scale=float(np.sqrt(d)))
                zb = zscore(theirs.reshape(len(theirs), -1), 1, scale=float(np.sqrt(d)))
                out[sl] = np.where(keep, (za * zb).sum(dim=1).double().numpy(), -np.inf)
            if len(self.shared_images):
                for p in np.flatnonzero(np.isin(image, self.shared_images)):
                    if self._shared_fractions(int(image[p]))[tuple(ts[p])] >= self.params.graphics_energy:
                        out[p] = -np.inf
            values.reshape(-1)[pairs] = out
        return values, t_start, q_start, column

    def _refine(self, windows: torch.Tensor, rows: np.ndarray, hits: np.ndarray, g: dict[str, Any],
                best: np.ndarray, best_train: np.ndarray, best_start: np.ndarray) -> None:
        """For each searched window (its detail in `windows`) and each candidate (`hits`: flat window ids): the
        refined detail NCC (`_refine_pairs`); keeps the best candidate per window (in place)."""
        pair_rows = np.repeat(rows, hits.shape[1])
        values, image, matched = self._refine_pairs(windows, pair_rows, hits.reshape(-1), g)
        # per searched window, its best pair (ties: the first candidate)
        order = np.lexsort((-values, pair_rows))
        first = order[np.r_[True, pair_rows[order][1:] != pair_rows[order][:-1]]]
        row = pair_rows[first]
        best[row], best_train[row], best_start[row] = values[first], image[first], matched[first]

    def _refine_pairs(self, windows: torch.Tensor, pair_rows: np.ndarray, hits: np.ndarray, g: dict[str, Any]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each (query window row, candidate flat window id) pair: the offset within `refine_radius` of the
        candidate where the window's detail best matches the candidate neighbourhood's detail (template NCC),
        then the NCC of the window's detail with the detail of the training window at that offset, each filtered
        on its own — exactly 1 for a copied window. A match that landed mostly on masked shared graphics counts
        −inf. → (values, training image, matched window start) per pair."""
        window, radius, sigma = g["window"], g["refine_radius"], g["detail_sigma"]
        shape = self.train.shape[1:]
        n_starts = len(self.train_starts)
        region = tuple(min(s, w + 2 * radius) for s, w in zip(shape, window))
        corner = np.clip(self.train_starts[hits % n_starts] - radius, 0,
                         np.array(shape) - np.array(region)).reshape(-1, len(shape))  # region starts in the image
        image = (hits // n_starts).reshape(-1)
        per_batch = max(1, REFINE_BATCH_BYTES // max(1, 4 * (int(np.prod(region)) + int(np.prod(window)))))
        train = torch.from_numpy(self.train)
        d = int(np.prod(window))
        values = np.empty(len(pair_rows))
        matched = np.empty((len(pair_rows), len(shape)), np.int64)
        for s in range(0, len(pair_rows), per_batch):
            sl = slice(s, s + per_batch)
            templates = windows[torch.from_numpy(pair_rows[sl])]
            regions = torch.stack([train[i][tuple(slice(a, a + r) for a, r in zip(c, region))]
                                   for i, c in zip(image[sl], corner[sl])])
            _, offset = template_ncc(templates, detail(regions, sigma))
            where = corner[sl] + offset.numpy()
            sources = detail(torch.stack([train[i][tuple(slice(a, a + w) for a, w in zip(c, window))]
                                          for i, c in zip(image[sl], where)]), sigma)
            zt = zscore(templates.reshape(len(templates), -1), 1, scale=float(np.sqrt(d)))
            zs = zscore(sources.reshape(len(sources), -1), 1, scale=float(np.sqrt(d)))
            values[sl], matched[sl] = (zt * zs).sum(dim=1).double().numpy(), where
        if len(self.shared_images):
            for p in np.flatnonzero(np.isin(image, self.shared_images)):
                fraction = self._shared_fractions(int(image[p]))
                if fraction[tuple(matched[p])] >= self.params.graphics_energy:
                    values[p] = -np.inf
        return values, image, matched

    def components(self) -> dict:
        out: dict[str, Any] = {"level": self.level,
                               "score": "best full-resolution NCC of a query window with a training window",
                               "shortlist": "NCC of downsampled window descriptors, exact chunked top-k"}
        if self.train is not None:
            g = self.geometry(self.train.shape[1:])
            out["resolved"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
            nd = self.train.ndim - 1
            out["resolved"]["recentre_windows"] = self.resolved_recentre(nd)
            out["resolved"]["query_scales"] = self.resolved_query_scales(nd)
            out["training_windows"] = int(len(self.train_index))
            out["burned_in_graphics"] = {"masked": bool(self.params.mask_graphics),
                                         "training_images_with_graphics": int(len(self.shared_images)),
                                         "training_windows_masked": int(len(self.train_starts) * len(self.train)
                                                                        - len(self.train_index))}
        return out

    def fitted_state(self) -> dict[str, np.ndarray]:
        masks = self.shared_masks if self.shared_masks is not None else np.zeros((0, *self.train.shape[1:]), bool)
        return {"train": self.train, "train_index": self.train_index, "train_starts": self.train_starts,
                "index_ids": self.index_ids, "shared_images": self.shared_images, "shared_masks": masks}

    def restore(self, state: dict[str, np.ndarray]) -> "LocalNCCScorer":
        self.train = np.ascontiguousarray(state["train"])
        self.train_index, self.train_starts = np.asarray(state["train_index"]), np.asarray(state["train_starts"])
        self.index_ids = np.asarray(state["index_ids"], np.int64)
        self.shared_images = np.asarray(state["shared_images"], np.int64)
        self.shared_masks, self._shared_fraction = np.asarray(state["shared_masks"], bool), {}
        return self
