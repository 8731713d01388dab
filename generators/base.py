"""The generator protocol every other part of the suite uses, and the condition a synthetic image is made from.

A generator turns a list of `Condition`s and a seed into images (float32 in [0, 1], the dataset's shape). Each
image's randomness depends only on (seed, its index), never on how the list was cut into batches, so a rerun of
part of a job reproduces exactly the images of a full run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch

from audit.data.records import Box, Record


@dataclass(frozen=True)
class Condition:
    """What a synthetic image should show. Boxes are in output pixels of the generator's shape (2D)."""

    birads: int | None = None
    density: str | None = None
    view: str | None = None
    laterality: str | None = None
    findings: tuple[str, ...] = ()
    boxes: tuple[Box, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()  # dataset-specific labels (3D manifests)
    source_id: str | None = None  # id of the training record this condition was taken from
    ref: str | None = None  # FolderGenerator: the pre-made file this condition belongs to

    @classmethod
    def from_record(cls, record: Record, boxes: np.ndarray | None = None) -> "Condition":
        """The condition of a real record. `boxes` are the dataset's output-pixel boxes (ImageDataset.load)."""
        out_boxes: tuple[Box, ...] = ()
        if boxes is not None and len(boxes):
            # the data layer returns boxes in record order; keep each box's category when the counts agree
            cats = [b.category for b in record.boxes] if len(record.boxes) == len(boxes) else []
            out_boxes = tuple(Box(*map(float, b[:4]), category=cats[i] if cats else "Mass")
                              for i, b in enumerate(np.asarray(boxes).reshape(-1, 4)))
        labels = record.labels
        return cls(birads=labels.birads, density=labels.density, view=record.view, laterality=record.laterality,
                   findings=tuple(labels.findings), boxes=out_boxes,
                   extra=tuple((str(k), str(v)) for k, v in labels.extra), source_id=record.id)

    def value(self, name: str) -> str | None:
        """A label as a string, by field name; None when unknown. `finding` is the primary finding category."""
        if name == "finding":
            real = [f for f in self.findings if f and f != "No Finding"]
            if real:
                return real[0]
            return "No Finding" if (self.findings or self.birads is not None) else None
        if name == "birads":
            return None if self.birads is None else str(int(self.birads))
        if name in ("density", "view", "laterality"):
            value = getattr(self, name)
            return None if value in (None, "") else str(value)
        return dict(self.extra).get(name) or None


@dataclass
class Denoiser:
    """White-box access for membership attacks.

    `predict_noise(x_t, t, conditions)` is the model's ε-prediction in its own space (latents for an LDM);
    `conditions=None` asks for the unconditional (classifier-free null) prediction. `encode` maps images
    (N, *shape) float32 [0, 1] to x0 in that space, deterministically (posterior mean).
    """

    predict_noise: Callable[[torch.Tensor, torch.Tensor, Sequence[Condition] | None], torch.Tensor]
    encode: Callable[[np.ndarray | torch.Tensor], torch.Tensor]
    alphas_cumprod: torch.Tensor  # (num_train_timesteps,), float32, on CPU
    scheduler: Any  # the training noise scheduler object (diffusers or MONAI DDPM)
    space: str  # "latent" or "pixel"

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t)·x0 + sqrt(1-ᾱ_t)·ε (the DDPM forward process)."""
        a = self.alphas_cumprod.to(x0.device)[t.long()].view(-1, *([1] * (x0.ndim - 1)))
        return a.sqrt() * x0 + (1 - a).sqrt() * noise


@runtime_checkable
class Generator(Protocol):
    kind: str
    shape: tuple[int, ...]

    def sample(self, conditions: Sequence[Condition], seed: int, first_index: int = 0) -> np.ndarray:
        """Images (N, *shape) float32 in [0, 1]; image j uses the randomness of index first_index + j."""
        ...

    def describe(self) -> dict: ...

    def default_conditions(self, n: int, seed: int) -> list[Condition]:
        """n conditions following the training set's label distribution (with their source_id)."""
        ...

    def denoiser(self) -> Denoiser | None: ...


def image_seed(seed: int, index: int) -> int:
    """The seed of one image: a hash of (seed, index), so it does not depend on batch composition."""
    state = np.random.SeedSequence([int(seed) % (1 << 63), int(index)]).generate_state(1, np.uint64)[0]
    return int(state) & 0x7FFF_FFFF_FFFF_FFFF


def per_image_noise(shape: Sequence[int], seed: int, indices: Sequence[int], device="cpu") -> torch.Tensor:
    """Standard normal noise (len(indices), *shape), each row drawn from its own (seed, index) generator."""
    rows = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(image_seed(seed, i)))
            for i in indices]
    return torch.stack(rows).to(device) if rows else torch.empty((0, *shape), device=device)
