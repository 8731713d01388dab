"""Voxel-level replica scorers (RELICT's image level — our re-implementation; RELICT published no code, so the
downsampling, shortlist size and measures below are our choices), built from injected components in the
pytorch-metric-learning way: a scorer is a *prefilter*, an *orientation policy* and, per orientation, a
*searcher* that returns each query's best training images with their scores. The NCC family's searcher is a
`Cascade`:

1. a **shortlist** (`Shortlist`): the `k` nearest training images by a cheap signature — NCC (or L2) of
   area-downsampled images (32² for 2D, 16³ for 3D) through the chunked exact search (`audit.search`), never Q×N;
   or the transformation-tolerant `RobustShortlist` (NCC ∪ Fourier-modulus signature against magnified training
   images, optionally over coarse rotations of the query);
2. a **first stage** (`PairMeasure`) scoring every shortlisted (query, training image) pair at full resolution:
   NCC of the z-scored images, or the best overlap NCC over shifts (`ShiftNCC`), shifts × magnifications
   (`ZoomShiftNCC`) or shifts × magnifications × rotations (`RegisteredNCC`, masked FFT correlation);
3. **re-ranking stages** (`Refine`): a dearer measure on the first stage's best `top` candidates, kept when it
   is higher (the registration of `ncc_reg`).

The `ssim` scorer's searcher is the SSIM search (`audit.ssim_search.SSIMSearch`: SSIM-embedding shortlist →
sampled SSIM → exact SSIM of the survivors), the path whose agreement with brute-force SSIM is measured in
`benchmarks/bench_search_speed.py` — not an NCC shortlist re-ranked by SSIM (that agreed on 61.8% of queries).

Registered scorers (`attacks.replicas.registry`), each a class with declared `Params`:
- ``ncc``: NCC shortlist → NCC;
- ``ssim``: SSIM search (exact SSIM, 11-tap Gaussian, data range 1);
- ``ncc_shift`` (our extension): NCC shortlist → best overlap NCC over translations ≤ 10% of each side;
- ``ncc_zoom`` (our extension): ``ncc_shift`` also over magnifications 1.1×, 1.2× of the training image;
- ``ncc_reg`` (our extension, registration): robust shortlist → shift NCC (2D, as-is query: over rotations 0,
  ±5°, ±10° too) → the full pose grid (rotations ±10° × magnifications 1.0–1.25 × shifts ≤ 10%) on the first
  stage's best 5 (2D) / 10 (3D) candidates, and in 3D per-axis magnifications on the best 3; 2D images low-pass
  filtered (Gaussian σ = 1 px) first. Every grid is a declared parameter (`--option ncc_reg.max_angle=20`).

The score is the best value and `nearest` the training image reaching it (ties: orientation, then shortlist
order). Orientations (`flips=True`, our extension beyond RELICT): the query is also searched mirrored along each
spatial axis (2D: 3 orientations, 3D: 4) and the best counts, because a mirrored copy is still a copy; holdout
images go through the same maximum, so calibration accounts for the extra chances. A shortlist miss only lowers
a score, never raises one, so scores stay conservative for calibration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from scipy.ndimage import gaussian_filter

from attacks.replicas.base import ReplicaScores, ScorerBase, query_array, training_array
from audit.metrics.similarity import (magnify_centre, ncc_against, register_ncc_against, rotate_images,
                                      rotation_grid)
from audit.registry import Params
from audit.search import topk_similarity

SHORTLIST_SIDE = {2: 32, 3: 16}
MAX_SHIFT = 0.1
ZOOM_SCALES = (1.0, 1.1, 1.2)
REG_MAX_ANGLE = 10.0
REG_STEP = {2: 2.5, 3: 5.0}
# magnifications of the candidate: 2D one factor per axis (5 × 5, a crop need not keep the aspect ratio; 1.0–1.25
# in even log steps of 1.25^(1/4) ≈ 1.057, i.e. crops down to 80% per axis), 3D one isotropic factor with every
# rotation, plus the same per-axis grid (5³ = 125) for the unrotated query against its REG_ANISO_REFINE best
# first-stage candidates (crossing all 125 with the 13 rotations would cost 20× more)
_GRID_2D = (1.0, 1.057, 1.118, 1.182, 1.25)
REG_SCALES = {2: tuple((a, b) for a in _GRID_2D for b in _GRID_2D), 3: (1.0, 1.05, 1.1, 1.15, 1.2, 1.25)}
REG_REFINE = {2: 5, 3: 10}  # first-stage candidates per query that the full pose grid re-scores
REG_ANISO_3D = tuple((a, b, c) for a in _GRID_2D for b in _GRID_2D for c in _GRID_2D)
REG_ANISO_REFINE = {2: 0, 3: 3}
# ncc_reg's shortlist and first stage for the as-is query also try it rotated by ±step, ±2·step up to
# REG_MAX_ANGLE (2D: 0, ±5°, ±10°), so that a rotated copy's source is shortlisted and among the REG_REFINE
# candidates the full grid re-scores. Without: on three benchmark splits 3 of 300 rotated copies had their source
# outside the shortlist and 3 ranked 7th–10th by the shift-only first stage; with it every one of the 300 sources
# ranks first by the rotated 32² NCC. 3D: off (rotated copies' sources were found on every split, and 13 coarse
# 3D rotations would make the 3D first stage 13× dearer).
FIRST_STAGE_ROTATION_STEP = {2: 5.0, 3: 0.0}
# ncc_reg compares images low-pass filtered by a Gaussian of this σ (pixels; scipy's gaussian_filter, reflected
# border), every stage: noise, JPEG blocks, blur and the interpolation of a rotation or crop change the finest
# scales most, and a copy need not keep them. Chosen on the tuning split (seed 1, 2D): ncc_reg AUC blur 0.990 →
# 1.000, noise 0.999 → 1.000, rotation 0.998 → 1.000, crop 0.997 → 0.999. 3D: off — not evaluated.
REG_PREFILTER_SIGMA = {2: 1.0, 3: 0.0}
# "robust" (default of ncc_reg): the union of the NCC shortlist and a shortlist on a translation- and
# magnification-tolerant signature — log(1 + |Fourier transform|) of the centred downsampled image (its modulus
# ignores translations) searched against the training images magnified 1×, 1.1×, 1.2× (each maps back to its
# source); half of the k candidates from each. On a tuning split (seed 1) of the benchmark the source of a 3D
# shifted copy was in the NCC top-10 for 60% of the copies, in this union for 100% (crop-and-resize: 73% → 100%;
# 2D shift: 87% → 100%). "l2": raw intensities (closer to SSIM, which also compares luminance and contrast).
SHORTLIST_METRICS = ("ncc", "l2", "robust")
FOURIER_SCALES = (1.0, 1.1, 1.2)
MAX_PAIR_BYTES = 256 * 2**20  # bounds the gathered (query, candidate) pairs a stage holds at once


# ============================================================================================ pure helpers


@torch.no_grad()
def downsample(images: np.ndarray, side: int, batch_size: int = 256) -> np.ndarray:
    """Area-average every image to side^ndim (sides already smaller are kept): (N, *shape) → (N, d) float32."""
    spatial = images.shape[1:]
    target = tuple(min(side, s) for s in spatial)
    pool = F.adaptive_avg_pool2d if len(spatial) == 2 else F.adaptive_avg_pool3d
    out = np.empty((len(images), int(np.prod(target))), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32))
        out[start:start + len(batch)] = pool(batch.unsqueeze(1), target).reshape(len(batch), -1).numpy()
    return out


@torch.no_grad()
def fourier_signature(images: np.ndarray, side: int) -> np.ndarray:
    """log(1 + |FFT|) of the centred, area-downsampled image: (N, *S) → (N, d) float32; invariant to circular
    translations, nearly so to translations with a reflected border."""
    small = downsample(images, side)
    shape = tuple(min(side, s) for s in images.shape[1:])
    small = (small - small.mean(axis=1, keepdims=True)).reshape(len(images), *shape)
    modulus = np.abs(np.fft.rfftn(small, axes=tuple(range(1, len(shape) + 1))))
    return np.log1p(modulus).reshape(len(images), -1).astype(np.float32)


def merge_shortlists(first: np.ndarray, second: np.ndarray, k: int) -> np.ndarray:
    """Row-wise: alternate the two ranked lists, drop repeats, keep the first k (rows short of k distinct
    candidates are padded with their last one)."""
    out = np.empty((len(first), k), dtype=np.int64)
    for row in range(len(first)):
        merged = np.empty(first.shape[1] + second.shape[1], dtype=np.int64)
        n = min(first.shape[1], second.shape[1])
        merged[0:2 * n:2], merged[1:2 * n:2] = first[row, :n], second[row, :n]
        merged[2 * n:] = np.r_[first[row, n:], second[row, n:]]
        _, pos = np.unique(merged, return_index=True)
        keep = merged[np.sort(pos)][:k]
        out[row] = np.pad(keep, (0, k - len(keep)), mode="edge")
    return out


@torch.no_grad()
def rotated_topk(queries: np.ndarray, references_small: np.ndarray, side: int, rotations: list[np.ndarray], k: int,
                 device: str = "cpu", batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Top-k references by the best NCC over `rotations` of each query (rotated at full resolution, borders
    reflected, then area-downsampled to `side`): (Q, k) scores and indices. Exact: a reference in the top k of
    the maximum is in the top k of the rotation where it reaches its maximum, so merging the per-rotation top-k
    lists by their best score loses nothing."""
    k = min(k, len(references_small))
    scores, index = [], []
    for matrix in rotations:
        turned = np.concatenate([rotate_images(torch.from_numpy(np.ascontiguousarray(queries[i:i + batch_size])),
                                               matrix).numpy() for i in range(0, len(queries), batch_size)])
        s, i = topk_similarity(downsample(turned, side), references_small, k=k, metric="ncc", device=device)
        scores.append(s)
        index.append(i)
    scores, index = np.concatenate(scores, axis=1), np.concatenate(index, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return best_per_reference(np.take_along_axis(scores, order, 1), np.take_along_axis(index, order, 1), k)


def best_per_reference(scores: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by score: keep each training index once (its best orientation), then the first k; rows
    with fewer distinct candidates are padded with their last entry."""
    out_s = np.empty((len(scores), k), dtype=scores.dtype)
    out_i = np.empty((len(scores), k), dtype=index.dtype)
    for row in range(len(scores)):
        _, first = np.unique(index[row], return_index=True)
        keep = np.sort(first)[:k]
        keep = np.pad(keep, (0, k - len(keep)), mode="edge")
        out_s[row], out_i[row] = scores[row, keep], index[row, keep]
    return out_s, out_i


def orientations(ndim: int, flips: bool) -> list[tuple[int, ...]]:
    """Axes of a (N, *S) batch to mirror: () is the image as it is, then each spatial axis alone."""
    return [()] + ([(axis,) for axis in range(1, ndim + 1)] if flips else [])


def merge_orientations(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> ReplicaScores:
    """Per-orientation (scores (Q, m), index (Q, m)) → the best k distinct training images over all of them
    (stable: ties keep orientation, then shortlist order)."""
    scores = np.concatenate([p[0] for p in parts], axis=1)
    index = np.concatenate([p[1] for p in parts], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    scores, index = np.take_along_axis(scores, order, 1), np.take_along_axis(index, order, 1)
    scores, index = best_per_reference(scores, index, k)
    return ReplicaScores(scores=scores[:, 0].astype(np.float64), nearest=index[:, 0].astype(np.int64),
                         topk_scores=scores, topk_index=index)


# ============================================================================================ components


class Prefilter(Protocol):
    def __call__(self, images: np.ndarray) -> np.ndarray: ...

    def describe(self) -> Any: ...


class NoPrefilter:
    def __call__(self, images: np.ndarray) -> np.ndarray:
        return images

    def describe(self) -> str:
        return "none"


@dataclass(frozen=True)
class GaussianLowPass:
    """Each image low-pass filtered by a Gaussian of σ pixels (scipy, reflected border)."""

    sigma: float

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.stack([gaussian_filter(image, self.sigma) for image in images]).astype(np.float32)

    def describe(self) -> str:
        return f"Gaussian low-pass, sigma {self.sigma} px"


class Shortlist(Protocol):
    def fit(self, train: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int, rotations: list[np.ndarray] | None = None) -> np.ndarray:
        """(Q, k') training indices, best first."""
        ...

    def describe(self) -> dict: ...


class DownsampledShortlist:
    """NCC (or −L2) between area-downsampled images: exact chunked top-k (`audit.search`)."""

    def __init__(self, side: int | None = None, metric: str = "ncc", device: str = "cpu"):
        self.side, self.metric, self.device = side, metric, device
        self.train_small: np.ndarray | None = None
        self.fitted_on: int | None = None

    def resolved_side(self, ndim: int) -> int:
        return self.side or SHORTLIST_SIDE[ndim]

    def fit(self, train: np.ndarray) -> None:
        if self.fitted_on == id(train):  # shared by several cascades of one scorer
            return
        self.train_small = downsample(train, self.resolved_side(train.ndim - 1))
        self.fitted_on = id(train)

    def search(self, queries: np.ndarray, k: int, rotations: list[np.ndarray] | None = None) -> np.ndarray:
        side = self.resolved_side(queries.ndim - 1)
        return topk_similarity(downsample(queries, side), self.train_small, k=k, metric=self.metric,
                               device=self.device)[1]

    def state(self) -> dict[str, np.ndarray]:
        return {"train_small": self.train_small}

    def restore(self, state: dict[str, np.ndarray], train: np.ndarray) -> None:
        self.train_small, self.fitted_on = state["train_small"], id(train)

    def describe(self) -> dict:
        return {"kind": f"{self.metric} of images area-downsampled", "side": self.side or SHORTLIST_SIDE}


class RobustShortlist(DownsampledShortlist):
    """Half NCC of downsampled images (with `rotations`: the best NCC over those rotations of the query, exact —
    `rotated_topk`), half a Fourier-modulus signature against the training images magnified by `FOURIER_SCALES`;
    alternated, duplicates replaced by the next candidates."""

    def __init__(self, side: int | None = None, device: str = "cpu"):
        super().__init__(side, "ncc", device)
        self.train_fourier: np.ndarray | None = None
        self.n_train = 0

    def fit(self, train: np.ndarray) -> None:
        if self.fitted_on == id(train):
            return
        super().fit(train)
        side = self.resolved_side(train.ndim - 1)
        self.n_train = len(train)
        self.train_fourier = np.concatenate([  # rows: scale-major, row r is training image r % N
            fourier_signature(magnify_centre(torch.from_numpy(train[i:i + 256]), f).numpy(), side)
            for f in FOURIER_SCALES for i in range(0, len(train), 256)])

    def search(self, queries: np.ndarray, k: int, rotations: list[np.ndarray] | None = None) -> np.ndarray:
        side = self.resolved_side(queries.ndim - 1)
        n = self.n_train
        k = min(k, n)
        if rotations:  # its identity rotation is the plain NCC shortlist
            _, by_ncc = rotated_topk(queries, self.train_small, side, rotations, k, self.device)
        else:
            _, by_ncc = topk_similarity(downsample(queries, side), self.train_small, k=k, metric="ncc",
                                        device=self.device)
        _, by_fourier = topk_similarity(fourier_signature(queries, side), self.train_fourier,
                                        k=min(k * len(FOURIER_SCALES), len(self.train_fourier)), metric="ncc",
                                        device=self.device)
        by_fourier = merge_shortlists(by_fourier % n, by_fourier[:, :0] % n, by_fourier.shape[1])  # distinct ids
        return merge_shortlists(by_ncc, by_fourier, k)

    def state(self) -> dict[str, np.ndarray]:
        return {**super().state(), "train_fourier": self.train_fourier}

    def restore(self, state: dict[str, np.ndarray], train: np.ndarray) -> None:
        super().restore(state, train)
        self.train_fourier, self.n_train = state["train_fourier"], len(train)

    def describe(self) -> dict:
        return {"kind": "robust: NCC of downsampled images (rotated queries when the cascade says so) ∪ "
                        "log(1+|FFT|) signature against magnified training images", "side": self.side or SHORTLIST_SIDE,
                "fourier_scales": list(FOURIER_SCALES)}


class PairMeasure(Protocol):
    def __call__(self, queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """queries (B, *S), candidates (B, k, *S) → (B, k) float64, higher = more similar."""
        ...

    def describe(self) -> dict: ...


@dataclass
class NCCMeasure:
    device: str = "cpu"

    def __call__(self, queries, candidates):
        return ncc_against(queries, candidates, device=self.device)

    def describe(self) -> dict:
        return {"measure": "NCC of the z-scored images at full resolution"}


@dataclass
class RegisteredNCC:
    """Largest overlap NCC over rotations of the query × magnifications of the candidate × shifts up to
    `max_shift` of each side (`audit.metrics.similarity.register_ncc_against`). One rotation (identity) and one
    scale (1.0): shift-tolerant NCC; identity and several scales: zoom-and-shift NCC."""

    rotations: list[np.ndarray]
    scales: tuple
    max_shift: float = MAX_SHIFT
    device: str = "cpu"
    batch_size: int = 64
    label: str = "registration"

    def __call__(self, queries, candidates):
        return register_ncc_against(queries, candidates, rotations=self.rotations, scales=self.scales,
                                    max_shift=self.max_shift, device=self.device, batch_size=self.batch_size)

    def describe(self) -> dict:
        return {"measure": f"{self.label}: best overlap NCC over poses (masked FFT correlation)",
                "rotations": len(self.rotations), "scales": [list(s) if isinstance(s, tuple) else s
                                                             for s in self.scales],
                "max_shift": self.max_shift}


@dataclass
class Refine:
    """A re-ranking stage: `measure` on the first stage's best `top` candidates of each query; a candidate keeps
    the higher of its first-stage value and this one. Candidates are chosen by the *first* stage, so every
    re-ranking stage sees the same candidates whatever ran before it."""

    measure: PairMeasure
    top: int

    def describe(self) -> dict:
        return {"top": self.top, **self.measure.describe()}


class Searcher(Protocol):
    def fit(self, train: np.ndarray) -> None: ...

    def topk(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, m), training indices (Q, m)) of each query's candidates (any order)."""
        ...

    def describe(self) -> dict: ...


class Cascade:
    """Shortlist → first stage on every shortlisted pair → re-ranking stages on the first stage's best few."""

    def __init__(self, shortlist: Shortlist, first: PairMeasure, refine: list[Refine] | None = None,
                 shortlist_rotations: list[np.ndarray] | None = None, max_pair_bytes: int = MAX_PAIR_BYTES):
        self.shortlist, self.first, self.refine = shortlist, first, list(refine or [])
        self.shortlist_rotations = shortlist_rotations
        self.max_pair_bytes = max_pair_bytes
        self.train: np.ndarray | None = None

    def fit(self, train: np.ndarray) -> None:
        self.train = train
        self.shortlist.fit(train)

    def _pairs(self, measure: PairMeasure, queries: np.ndarray, index: np.ndarray) -> np.ndarray:
        """measure(query, its indexed training images) in batches whose gathered candidates stay within
        `max_pair_bytes` (the measure's intermediates are a few times that)."""
        n_q, k = index.shape
        per_image = int(np.prod(queries.shape[1:])) * 4
        step = max(1, self.max_pair_bytes // max(1, 8 * k * per_image))
        out = np.empty((n_q, k), dtype=np.float64)
        for start in range(0, n_q, step):
            idx = index[start:start + step]
            out[start:start + len(idx)] = measure(queries[start:start + len(idx)], self.train[idx])
        return out

    def topk(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        index = self.shortlist.search(queries, k, self.shortlist_rotations)
        first = self._pairs(self.first, queries, index)
        scores = first.copy()
        for stage in self.refine:
            m = min(stage.top, index.shape[1])
            if m < 1:
                continue
            top = np.argsort(-first, axis=1, kind="stable")[:, :m]
            values = self._pairs(stage.measure, queries, np.take_along_axis(index, top, 1))
            np.put_along_axis(scores, top, np.maximum(np.take_along_axis(scores, top, 1), values), 1)
        return scores, index

    def state(self) -> dict[str, np.ndarray]:
        return self.shortlist.state()

    def restore(self, state: dict[str, np.ndarray], train: np.ndarray) -> None:
        self.shortlist.restore(state, train)
        self.train = train

    def describe(self) -> dict:
        return {"shortlist": {**self.shortlist.describe(),
                              "query_rotations": len(self.shortlist_rotations or []) or None},
                "first_stage": self.first.describe(), "refine": [s.describe() for s in self.refine]}


# ============================================================================================ scorers


class VoxelParams(Params):
    k: int = Field(10, ge=1, description="training images shortlisted per query and orientation")
    flips: bool = Field(True, description="also search the query mirrored along each axis")
    shortlist_side: int | None = Field(None, ge=2, description="downsampled side (None: 32 in 2D, 16 in 3D)")
    shortlist_metric: Literal["ncc", "l2", "robust"] = "ncc"


class VoxelScorer(ScorerBase):
    """A prefilter, an orientation policy and a searcher per orientation ("as_is", "mirrored"); subclasses say
    which (`components(ndim)`), built at `fit` when the image dimension is known."""

    name = "voxel"
    level = "voxel (RELICT image level, re-implementation)"
    Params = VoxelParams

    def __init__(self, params: Params | None = None, runtime=None):
        super().__init__(params, runtime)
        self.prefilter: Prefilter = NoPrefilter()
        self.searchers: dict[str, Searcher] | None = None
        self.train: np.ndarray | None = None

    # --- what subclasses choose ----------------------------------------------------------------------------
    def make_prefilter(self, ndim: int) -> Prefilter:
        return NoPrefilter()

    def make_shortlist(self) -> Shortlist:
        p = self.params
        if p.shortlist_metric == "robust":
            return RobustShortlist(p.shortlist_side, device=self.runtime.device)
        return DownsampledShortlist(p.shortlist_side, p.shortlist_metric, device=self.runtime.device)

    def make_searchers(self, ndim: int) -> dict[str, Searcher]:
        """{"as_is": searcher, "mirrored": searcher} (may be the same object)."""
        raise NotImplementedError

    # --- the contract ----------------------------------------------------------------------------------------
    def fit(self, train: np.ndarray) -> "VoxelScorer":
        train = training_array(self.name, train)
        if train.ndim not in (3, 4):
            from audit.errors import AuditInputError

            raise AuditInputError(None, f"{self.name} scorer: expected (N, H, W) or (N, D, H, W) training images, "
                                        f"got shape {train.shape}")
        ndim = train.ndim - 1
        self.prefilter = self.make_prefilter(ndim)
        self.train = self.prefilter(train)
        self.searchers = self.make_searchers(ndim)
        for searcher in {id(s): s for s in self.searchers.values()}.values():
            searcher.fit(self.train)
        return self

    def score(self, queries: np.ndarray) -> ReplicaScores:
        queries = query_array(self.name, queries, None if self.train is None else self.train.shape[1:])
        queries = self.prefilter(queries)
        k = min(self.params.k, len(self.train))
        parts = []
        for axes in orientations(queries.ndim - 1, self.params.flips):
            oriented = np.ascontiguousarray(np.flip(queries, axis=axes)) if axes else queries
            parts.append(self.searchers["mirrored" if axes else "as_is"].topk(oriented, k))
        return merge_orientations(parts, k)

    def components(self) -> dict:
        out: dict[str, Any] = {"level": self.level, "prefilter": self.prefilter.describe(),
                               "orientations": "as is + mirrored along each axis" if self.params.flips else "as is"}
        if self.searchers is not None:
            out["searchers"] = {k: v.describe() for k, v in self.searchers.items()}
        return out

    def fitted_state(self) -> dict[str, np.ndarray]:
        out = {"train": self.train}
        for key, searcher in self.searchers.items():
            state = getattr(searcher, "state", None)
            if state is not None:
                out.update({f"{key}.{name}": value for name, value in state().items()})
        return out

    def restore(self, state: dict[str, np.ndarray]) -> "VoxelScorer":
        train = state["train"]
        ndim = train.ndim - 1
        self.prefilter, self.train = self.make_prefilter(ndim), train
        self.searchers = self.make_searchers(ndim)
        for key, searcher in self.searchers.items():
            own = {name.partition(".")[2]: v for name, v in state.items() if name.startswith(key + ".")}
            searcher.restore(own, train)
        return self


class NCCCascadeScorer(VoxelScorer):
    """One cascade for both orientations: the scorer's shortlist and first-stage measure, no re-ranking."""

    def first_measure(self, ndim: int) -> PairMeasure:
        raise NotImplementedError

    def make_searchers(self, ndim: int) -> dict[str, Searcher]:
        cascade = Cascade(self.make_shortlist(), self.first_measure(ndim))
        return {"as_is": cascade, "mirrored": cascade}


class NCCScorer(NCCCascadeScorer):
    """``ncc``: NCC shortlist on downsampled images → NCC of the z-scored images at full resolution."""

    name = "ncc"

    def first_measure(self, ndim: int) -> PairMeasure:
        return NCCMeasure(self.runtime.device)


class ShiftParams(VoxelParams):
    max_shift: float = Field(MAX_SHIFT, gt=0, lt=1, description="largest translation, as a fraction of each side")


class ShiftNCCScorer(NCCCascadeScorer):
    """``ncc_shift``: NCC shortlist → the best overlap NCC over translations up to `max_shift` of each side."""

    name = "ncc_shift"
    level = "voxel, geometric (our extension)"
    Params = ShiftParams

    def first_measure(self, ndim: int) -> PairMeasure:
        return RegisteredNCC([np.eye(ndim)], (1.0,), self.params.max_shift, self.runtime.device,
                             self.runtime.batch_size, label="shift")


class ZoomParams(ShiftParams):
    scales: tuple[float, ...] = Field(ZOOM_SCALES, min_length=1, description="magnifications of the candidate")


class ZoomNCCScorer(NCCCascadeScorer):
    """``ncc_zoom``: ``ncc_shift`` maximised also over magnifications of the training image about its centre."""

    name = "ncc_zoom"
    level = "voxel, geometric (our extension)"
    Params = ZoomParams

    def first_measure(self, ndim: int) -> PairMeasure:
        return RegisteredNCC([np.eye(ndim)], tuple(self.params.scales), self.params.max_shift, self.runtime.device,
                             self.runtime.batch_size, label="zoom and shift")


class RegistrationParams(ShiftParams):
    """ncc_reg's grids. None = the per-dimension default (module constants); 0 turns a stage off."""

    shortlist_metric: Literal["ncc", "l2", "robust"] = "robust"
    max_angle: float = Field(REG_MAX_ANGLE, ge=0, description="largest rotation searched (degrees)")
    angle_step: float | None = Field(None, gt=0, description="rotation step (None: 2.5° in 2D, 5° in 3D)")
    scales: list[float | tuple[float, ...]] | None = Field(
        None, description="magnifications (a factor, or one per axis; None: 2D 5×5 per-axis grid 1.0–1.25, "
                          "3D isotropic 1.0–1.25)")
    refine: int | None = Field(None, ge=0, description="first-stage candidates registered (None: 5 in 2D, 10 in 3D)")
    first_stage_rotation_step: float | None = Field(
        None, ge=0, description="coarse rotations of the as-is query in the shortlist and first stage (None: 5° in "
                                "2D, off in 3D; 0: off)")
    prefilter_sigma: float | None = Field(None, ge=0, description="Gaussian low-pass σ in px (None: 1 in 2D, "
                                                                  "off in 3D; 0: off)")
    aniso_refine: int | None = Field(None, ge=0, description="first-stage candidates re-scored with per-axis "
                                                             "magnifications, unrotated (None: 0 in 2D, 3 in 3D)")


class RegisteredNCCScorer(VoxelScorer):
    """``ncc_reg``: robust shortlist → shift NCC (as-is query in 2D: over coarse rotations too) → for the as-is
    query, the full pose grid on the first stage's best candidates. Mirrored queries get the first stage only:
    choosing the orientation by the first stage picked a mirrored one for symmetric 3D phantoms and lost
    crop-and-resize copies (tuning split, seed 1); a mirrored copy is an exact match at the first stage anyway."""

    name = "ncc_reg"
    level = "voxel, geometric (our extension: registration)"
    Params = RegistrationParams

    def resolved(self, ndim: int) -> dict[str, Any]:
        p = self.params

        def pick(value, default):
            return default if value is None else value

        return {"angle_step": pick(p.angle_step, REG_STEP[ndim]),
                "scales": tuple(tuple(s) if isinstance(s, (list, tuple)) else s
                                for s in pick(p.scales, REG_SCALES[ndim])),
                "refine": pick(p.refine, REG_REFINE[ndim]),
                "first_stage_rotation_step": pick(p.first_stage_rotation_step, FIRST_STAGE_ROTATION_STEP[ndim]),
                "prefilter_sigma": pick(p.prefilter_sigma, REG_PREFILTER_SIGMA[ndim]),
                "aniso_refine": pick(p.aniso_refine, REG_ANISO_REFINE[ndim])}

    def make_prefilter(self, ndim: int) -> Prefilter:
        sigma = self.resolved(ndim)["prefilter_sigma"]
        return GaussianLowPass(sigma) if sigma else NoPrefilter()

    def make_searchers(self, ndim: int) -> dict[str, Searcher]:
        r, p, rt = self.resolved(ndim), self.params, self.runtime
        identity = [np.eye(ndim)]
        coarse = (rotation_grid(ndim, p.max_angle, r["first_stage_rotation_step"])
                  if r["first_stage_rotation_step"] and p.max_angle else None)
        shortlist = self.make_shortlist()
        shift = RegisteredNCC(identity, (1.0,), p.max_shift, rt.device, rt.batch_size, label="shift")
        first = (RegisteredNCC(coarse, (1.0,), p.max_shift, rt.device, rt.batch_size, label="shift over coarse rotations")
                 if coarse else shift)
        grid = rotation_grid(ndim, p.max_angle, r["angle_step"]) if p.max_angle else identity
        refine = [Refine(RegisteredNCC(grid, r["scales"], p.max_shift, rt.device, rt.batch_size), r["refine"])]
        if r["aniso_refine"] and ndim == 3:
            refine.append(Refine(RegisteredNCC(identity, REG_ANISO_3D, p.max_shift, rt.device, rt.batch_size,
                                               label="per-axis magnifications"), r["aniso_refine"]))
        as_is = Cascade(shortlist, first, refine, shortlist_rotations=coarse)
        mirrored = Cascade(shortlist, shift)
        return {"as_is": as_is, "mirrored": mirrored}

    def components(self) -> dict:
        out = super().components()
        if self.train is not None:
            out["resolved"] = {k: (list(v) if isinstance(v, tuple) else v)
                               for k, v in self.resolved(self.train.ndim - 1).items()}
        return out


# the coarse scale of the multi-scale registration level: copies that lost their fine scales (resolution loss,
# heavy blur, heavy noise, strong JPEG) are compared where they still hold the source's content
COARSE_PREFILTER_SIGMA = {2: 3.0, 3: 1.5}


class CoarseRegisteredNCCScorer(RegisteredNCCScorer):
    """``ncc_reg_coarse``: ``ncc_reg`` (same shortlist, first stage and pose grid) on images low-passed at a coarse
    scale (σ 3 px in 2D, 1.5 voxels in 3D by default). The 2D ``ncc_reg`` compares at σ = 1 px, chosen for blur
    ≤ 1.5 px: a copy that lost its fine scales (held-out families resolution_loss 2.5–4×, blur_heavy σ 2–3 px)
    differs from its source there, and so did noisy copies. It is its own scorer — its own null, its own place
    in the whole-image combination — because a coarse NCC is higher for every image (new ones too): the maximum of
    raw NCCs across scales would be the coarse one's null."""

    name = "ncc_reg_coarse"
    level = "voxel, geometric, coarse scale (our extension: multi-scale registration)"

    def resolved(self, ndim: int) -> dict[str, Any]:
        out = super().resolved(ndim)
        if self.params.prefilter_sigma is None:
            out["prefilter_sigma"] = COARSE_PREFILTER_SIGMA[ndim]
        return out


class SSIMParams(Params):
    k: int = Field(10, ge=1, description="training images returned per query and orientation")
    flips: bool = True
    candidates: int = Field(200, ge=1, description="SSIM-embedding shortlist size")
    verify: int = Field(5, ge=1, description="sampled-SSIM survivors given an exact SSIM")
    stride: int = Field(4, ge=1, description="sampled SSIM: every stride-th window position per axis")
    pool: int = Field(2, ge=1, description="SSIM embedding: window positions average-pooled by this")
    luminance_rank: int | None = Field(6, ge=1, description="rank of the luminance factorisation")


class SSIMScorer(VoxelScorer):
    """``ssim``: exact SSIM of each query's nearest training images found by the SSIM search
    (`audit.ssim_search.SSIMSearch` — its measured path: 99.6% top-1 agreement with brute-force SSIM at 116× less
    time in benchmarks/bench_search_speed.py), for every orientation."""

    name = "ssim"
    Params = SSIMParams

    def make_searchers(self, ndim: int) -> dict[str, Searcher]:
        search = SSIMSearcher(self.params, self.runtime)
        return {"as_is": search, "mirrored": search}


class SSIMSearcher:
    """`SSIMSearch` as a searcher: each query's min(k, verify) best training images by exact SSIM — the top-k the
    speed benchmark measures (verify survivors of the sampled stage, exactly re-scored)."""

    def __init__(self, params: SSIMParams, runtime):
        from audit.ssim_search import SSIMSearch

        self.params = params
        self.search = SSIMSearch(candidates=params.candidates, verify=params.verify, stride=params.stride,
                                 pool=params.pool, luminance_rank=params.luminance_rank, device=runtime.device)

    def fit(self, train: np.ndarray) -> None:
        self.search.fit(train)

    def topk(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.search.topk(queries, min(k, self.params.verify))

    def state(self) -> dict[str, np.ndarray]:
        return {"embeddings": self.search.embeddings, "sampled_moments": self.search.sampled_moments.numpy()}

    def restore(self, state: dict[str, np.ndarray], train: np.ndarray) -> None:
        self.search.references = np.ascontiguousarray(train, dtype=np.float32)
        self.search.embeddings = state["embeddings"]
        self.search.sampled_moments = torch.from_numpy(np.ascontiguousarray(state["sampled_moments"]))

    def describe(self) -> dict:
        p = self.params
        return {"kind": "SSIM search (audit.ssim_search): SSIM-embedding dot-product shortlist → sampled SSIM → "
                        "exact SSIM", "candidates": p.candidates, "verify": p.verify, "stride": p.stride,
                "pool": p.pool, "luminance_rank": p.luminance_rank,
                "score": "exact SSIM (11-tap Gaussian σ 1.5, data range 1)"}
