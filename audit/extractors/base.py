"""What every fidelity feature extractor is: a registry component mapping a batch of float32 [0, 1] images to
feature rows, and naming itself precisely enough that two FIDs computed with it are comparable.

An extractor says
- `identity()`: its name, declared parameters, the SHA-256 of its weights (None when it has none) and the version
  of its feature code — the key of every cached feature set and the `extractor` block of `fidelity.json`;
- `ndims`: the image dimensionalities it takes natively (2, 3). A 2D-only extractor takes volumes as **2.5D**:
  `slices_per_plane` slices through the centre of each of the three orthogonal planes, each through the 2D
  extractor, features averaged over the slices of a plane and concatenated over the planes (3·d features);
- `standardise_against_reference`: whether features are z-scored against the reference (real) set before any
  metric (hand-crafted features live on unrelated scales; FRD does this);
- `prepare(reference, cache)`: anything it must learn from the real training images first (the `domain`
  encoder trains there); weight-free and pretrained extractors do nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from audit.errors import AuditInputError
from audit.parallel import Source
from audit.registry import Params, Runtime

PLANE_AXES = (0, 1, 2)  # axial-like (fix D), coronal-like (fix H), sagittal-like (fix W) of a (D, H, W) volume


class VolumeParams(Params):
    """Options of extractors that can read volumes as 2.5D (three orthogonal planes)."""

    slices_per_plane: int = 1  # slices per plane through the middle half of the volume, features averaged

    def model_post_init(self, __context: Any) -> None:
        if self.slices_per_plane < 1:
            raise ValueError("slices_per_plane must be >= 1")


def plane_positions(size: int, count: int) -> list[int]:
    """`count` slice indices spread over the middle half of an axis (count 1 = the central slice)."""
    return [min(size - 1, int(size * (0.25 + 0.5 * (j + 1) / (count + 1)))) for j in range(count)]


def plane_slices(volumes: np.ndarray, axis: int, count: int) -> np.ndarray:
    """(B, D, H, W) → (B·count, h, w): `count` slices perpendicular to `axis` of every volume, volume-major."""
    positions = plane_positions(volumes.shape[axis + 1], count)
    slices = np.take(volumes, positions, axis=axis + 1)  # (B, ..count.., ...) with count at axis+1
    slices = np.moveaxis(slices, axis + 1, 1)  # (B, count, h, w)
    return np.ascontiguousarray(slices.reshape(-1, *slices.shape[2:]))


@dataclass(frozen=True)
class ExtractorSource(Source):
    """How a worker rebuilds an extractor: its registry name, declared parameters (weights as a path) and a
    runtime that keeps the work in that worker."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    runtime: Runtime = Runtime()

    def load(self) -> "FeatureExtractor":
        from audit.extractors import EXTRACTORS

        return EXTRACTORS.create(self.name, self.options, self.runtime)


class FeatureExtractor:
    """Base class: subclasses set `name`, `version`, `ndims`, and implement `extract_native`."""

    name: ClassVar[str] = "extractor"
    version: ClassVar[str] = "1"  # bump when the features a given configuration yields change
    ndims: ClassVar[tuple[int, ...]] = (2,)
    standardise_against_reference: ClassVar[bool] = False

    def __init__(self, params: Params, runtime: Runtime):
        self.params = params
        self.runtime = runtime

    # --- what it is --------------------------------------------------------------------------------------------
    @property
    def display_name(self) -> str:
        return self.name

    def weights_sha256(self) -> str | None:
        return None

    def identity(self) -> dict[str, Any]:
        # the weights' path is left out: their hash says what they are, wherever the file lives
        params = {k: v for k, v in self.params.model_dump(mode="json").items() if k != "weights"}
        return {"name": self.display_name, "version": self.version, "weights_sha256": self.weights_sha256(),
                "params": params,
                "standardised_against_reference": self.standardise_against_reference}

    def describe(self) -> dict[str, Any]:
        return self.identity()

    def source(self) -> ExtractorSource:
        """The recipe a worker rebuilds this extractor from (features equal to this one's, row for row)."""
        return ExtractorSource(self.name, self.params.model_dump(mode="json"),
                               self.runtime.with_(executor=None, progress=False))

    def feature_names(self) -> list[str] | None:
        """Names of the feature columns when they mean something on their own (hand-crafted features)."""
        return None

    # --- what it needs first -----------------------------------------------------------------------------------
    def prepare(self, reference, cache) -> None:
        """Learn what the extractor needs from the real reference images (default: nothing)."""

    # --- features ----------------------------------------------------------------------------------------------
    def check_ndim(self, ndim: int) -> None:
        if (ndim == 3 and self.reads_volumes_as_planes) or (ndim in self.ndims and ndim in (2, 3)):
            return
        raise AuditInputError(None, f"extractor '{self.display_name}' takes {'/'.join(map(str, self.ndims))}D "
                                    f"images, not {ndim}D")

    @property
    def reads_volumes_as_planes(self) -> bool:
        """True when volumes go through the 2D features as 2.5D (always for a 2D-only extractor)."""
        return 3 not in self.ndims and 2 in self.ndims and isinstance(self.params, VolumeParams)

    def extract(self, images: np.ndarray) -> np.ndarray:
        """(B, *S) float32 [0, 1] → (B, d) float32. Each row depends only on its own image."""
        images = np.asarray(images, dtype=np.float32)
        ndim = images.ndim - 1
        self.check_ndim(ndim)
        if ndim == 3 and self.reads_volumes_as_planes:
            return self.extract_planes(images)
        return np.asarray(self.extract_native(images), dtype=np.float32)

    def extract_planes(self, volumes: np.ndarray) -> np.ndarray:
        count = self.params.slices_per_plane
        parts = []
        for axis in PLANE_AXES:
            features = np.asarray(self.extract_native(plane_slices(volumes, axis, count)), np.float32)
            parts.append(features.reshape(len(volumes), count, -1).mean(axis=1))
        return np.concatenate(parts, axis=1)

    def extract_native(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError
