"""A conditional latent diffusion model as a `Generator`. The networks live in a backend (diffusers 2D or MONAI
3D, see ldm2d.py / ldm3d.py); this class holds what both share: the label vocabulary, the latent scale, the
training conditions, sampling, white-box access, saving and loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import torch

from audit.errors import AuditInputError
from generators.base import Condition, Denoiser, per_image_noise
from generators.checkpoint import FORMAT, GENERATOR_FILE, folder_hash, read_json, write_json
from generators.conditions import (LabelVocabulary, box_mask, condition_to_row, cycle_conditions,
                                   read_conditions_csv, write_rows_csv)
from generators.config import GeneratorConfig
from generators.sampling import ConditionBatch, StepFn, ddim_sample

FORMAT_VERSION = 1
TRAINING_CONDITIONS_FILE = "training_conditions.csv"


class LatentBackend(Protocol):
    """The networks of one LDM family. Images enter as (N, 1, *shape) in [0, 1]; latents are unscaled."""

    autoencoder: torch.nn.Module
    unet: torch.nn.Module
    diffusion_modules: tuple[torch.nn.Module, ...]  # trained in the diffusion stage
    train_scheduler: Any  # DDPM: add_noise(x0, noise, t), alphas_cumprod
    uses_box_mask: bool

    def latent_shape(self) -> tuple[int, ...]: ...
    def autoencoder_loss(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor: ...
    def encode(self, images: torch.Tensor) -> torch.Tensor: ...
    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...
    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: ConditionBatch) -> torch.Tensor: ...
    def ddim(self, num_inference_steps: int) -> tuple[list[int], StepFn]: ...
    def save(self, folder: Path) -> None: ...
    def to(self, device) -> "LatentBackend": ...


def backend_class(kind: str):
    """Backends by kind, imported on use (the 3D model must not need diffusers' 2D nets and vice versa)."""
    if kind == "ldm2d":
        from generators.ldm2d import Diffusers2DBackend
        return Diffusers2DBackend
    if kind == "ldm3d":
        from generators.ldm3d import Monai3DBackend
        return Monai3DBackend
    raise AuditInputError(None, f"unknown generator kind '{kind}' (known: ldm2d, ldm3d)")


class LatentDiffusionGenerator:
    def __init__(self, config: GeneratorConfig, shape: Sequence[int], vocabulary: LabelVocabulary,
                 backend: LatentBackend, latent_scale: float = 1.0,
                 training_conditions: Sequence[Condition] = (), info: dict | None = None,
                 checkpoint_hash: str | None = None, device: str = "cpu"):
        self.config = config
        self.kind = config.kind
        self.shape = tuple(int(s) for s in shape)
        self.vocabulary = vocabulary
        self.backend = backend.to(device)
        self.latent_scale = float(latent_scale)
        self.training_conditions = list(training_conditions)
        self.info = dict(info or {})
        self.checkpoint_hash = checkpoint_hash
        self.device = torch.device(device)

    @classmethod
    def create(cls, config: GeneratorConfig, shape: Sequence[int], vocabulary: LabelVocabulary,
               training_conditions: Sequence[Condition] = (), device: str = "cpu") -> "LatentDiffusionGenerator":
        backend = backend_class(config.kind).build(config, tuple(shape), vocabulary)
        return cls(config, shape, vocabulary, backend, 1.0, training_conditions, device=device)

    # --- conditions -------------------------------------------------------------------------------------------
    def encode_conditions(self, conditions: Sequence[Condition]) -> ConditionBatch:
        labels = self.vocabulary.indices(conditions)
        mask = None
        if self.backend.uses_box_mask:
            mask = box_mask(conditions, self.shape, self.backend.latent_shape()[1:])
        return ConditionBatch(labels, mask).to(self.device)

    def default_conditions(self, n: int, seed: int, first_index: int = 0) -> list[Condition]:
        return cycle_conditions(self.training_conditions, n, seed, first_index)

    # --- sampling ---------------------------------------------------------------------------------------------
    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: ConditionBatch) -> torch.Tensor:
        return self.backend.predict_noise(x_t, t, cond)

    @torch.no_grad()
    def sample(self, conditions: Sequence[Condition], seed: int, first_index: int = 0,
               num_inference_steps: int | None = None, guidance_scale: float | None = None) -> np.ndarray:
        """Images (N, *shape) float32 in [0, 1]; image j is a function of (seed, first_index + j, condition j)."""
        if not conditions:
            return np.zeros((0, *self.shape), np.float32)
        steps = num_inference_steps or self.config.sampling.num_inference_steps
        scale = self.config.sampling.guidance_scale if guidance_scale is None else float(guidance_scale)
        noise = per_image_noise(self.backend.latent_shape(), seed, range(first_index, first_index + len(conditions)),
                                self.device)
        timesteps, step = self.backend.ddim(steps)
        latents = ddim_sample(self.predict_noise, noise, self.encode_conditions(conditions), timesteps, step, scale)
        images = self.backend.decode(latents / self.latent_scale)
        return images[:, 0].clamp(0, 1).float().cpu().numpy()

    def with_sampling(self, **updates) -> "LatentDiffusionGenerator":
        """The same model with other sampling settings (num_inference_steps, guidance_scale); weights shared."""
        import copy

        from audit.config import validate
        from generators.config import SamplingConfig

        sampling = validate(SamplingConfig, {**self.config.sampling.model_dump(), **updates}, "sampling options")
        clone = copy.copy(self)
        clone.config = self.config.model_copy(update={"sampling": sampling})
        return clone

    # --- white box --------------------------------------------------------------------------------------------
    def encode_images(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """x0 of the diffusion: scaled posterior-mean latents of images (N, *shape) in [0, 1]."""
        x = torch.as_tensor(np.asarray(images, np.float32) if not torch.is_tensor(images) else images)
        x = x.to(self.device, torch.float32)
        if tuple(x.shape[1:]) != self.shape:
            raise AuditInputError(None, f"images of shape {tuple(x.shape[1:])} given to a {self.shape} generator")
        with torch.no_grad():
            return self.backend.encode(x[:, None]) * self.latent_scale

    def denoiser(self) -> Denoiser:
        def predict(x_t: torch.Tensor, t, conditions: Sequence[Condition] | None) -> torch.Tensor:
            batch = x_t.shape[0]
            cond = self.encode_conditions(conditions) if conditions is not None else \
                self.encode_conditions([Condition()] * batch).null()
            t = torch.as_tensor(t, device=self.device).long().expand(batch)  # a scalar t applies to all rows
            with torch.no_grad():
                return self.backend.predict_noise(x_t.to(self.device), t, cond)

        alphas = torch.as_tensor(self.backend.train_scheduler.alphas_cumprod, dtype=torch.float32).cpu()
        return Denoiser(predict_noise=predict, encode=self.encode_images, alphas_cumprod=alphas,
                        scheduler=self.backend.train_scheduler, space="latent")

    # --- description, save, load ------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {"kind": self.kind, "shape": list(self.shape), "config": self.config.model_dump(mode="json"),
                "conditioning_fields": list(self.vocabulary.fields), "latent_shape": list(self.backend.latent_shape()),
                "latent_scale": self.latent_scale, "checkpoint_hash": self.checkpoint_hash,
                "n_training_conditions": len(self.training_conditions), **self.info}

    def save(self, folder: Path, info: dict | None = None) -> None:
        """Write the model into `folder` (an empty scratch folder; use checkpoint.atomic_folder around it)."""
        folder = Path(folder)
        self.backend.save(folder)
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "kind": self.kind, "shape": list(self.shape),
                "config": self.config.model_dump(mode="json"), "vocabulary": self.vocabulary.to_json(),
                "latent_scale": self.latent_scale, "info": {**self.info, **(info or {})}}
        write_json(folder / GENERATOR_FILE, meta)
        rows = [condition_to_row(c) for c in self.training_conditions]
        write_rows_csv(folder / TRAINING_CONDITIONS_FILE, rows, ("source_id", "view", "laterality", "birads",
                                                                 "density", "findings", "boxes"))

    @classmethod
    def load(cls, folder: Path, device: str = "cpu") -> "LatentDiffusionGenerator":
        folder = Path(folder)
        meta = read_json(folder / GENERATOR_FILE)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise AuditInputError(folder / GENERATOR_FILE, "not a synth-audit generator checkpoint")
        if meta.get("version") != FORMAT_VERSION:
            raise AuditInputError(folder / GENERATOR_FILE, f"checkpoint format version {meta.get('version')} "
                                                           f"is not supported (this suite reads {FORMAT_VERSION})")
        from audit.config import validate
        try:
            config = validate(GeneratorConfig, meta["config"], folder / GENERATOR_FILE)
            vocabulary = LabelVocabulary.from_json(meta["vocabulary"])
            shape, latent_scale, info = meta["shape"], float(meta["latent_scale"]), meta.get("info", {})
        except (KeyError, TypeError, ValueError) as err:
            raise AuditInputError(folder / GENERATOR_FILE, f"incomplete generator description ({err})") from None
        backend = backend_class(config.kind).load(folder, config, tuple(shape), vocabulary)
        conditions_file = folder / TRAINING_CONDITIONS_FILE
        pool = read_conditions_csv(conditions_file) if conditions_file.is_file() else []
        return generator_class(config.kind)(config, shape, vocabulary, backend, latent_scale, pool, info,
                                            folder_hash(folder), device)


class LDM2D(LatentDiffusionGenerator):
    """2D conditional LDM on diffusers blocks (see ldm2d.Diffusers2DBackend)."""


class LDM3D(LatentDiffusionGenerator):
    """3D label-conditioned LDM on MONAI blocks (see ldm3d.Monai3DBackend)."""


def generator_class(kind: str) -> type[LatentDiffusionGenerator]:
    return {"ldm2d": LDM2D, "ldm3d": LDM3D}[kind]
