"""DiffusersPipelineGenerator: a diffusers pipeline folder (save_pretrained; e.g. DDPMPipeline, DDIMPipeline),
loaded from local files only and sampled by our own loop so that each image's noise comes from its own
(seed, index) generator — image i equals what the pipeline makes at batch size 1 with that generator.

Unconditional: conditions only travel into the manifest. Pixel-space: `denoiser()` gives the UNet, the scheduler
and encode = the pipeline's [-1, 1] scaling.
"""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from audit.errors import AuditInputError
from generators.base import Condition, Denoiser, image_seed
from audit.checkpoints import PICKLE_SUFFIXES, refuse_pickle
from generators.checkpoint import folder_hash, read_json


def refuse_pickled_weights(folder: Path) -> None:
    """Checked before diffusers opens any file: a weight file that is a pickle by content (also under the
    .safetensors name) is refused, and so is a pickle-suffixed file with no safetensors twin (diffusers would
    fall back to it). A .bin next to its .safetensors twin is never read (use_safetensors=True)."""
    for weights in sorted(folder.rglob("*")):
        name = weights.name.lower()
        if name.endswith(".safetensors"):
            refuse_pickle(weights)
        elif name.endswith(PICKLE_SUFFIXES) and \
                not weights.with_name(weights.name.rsplit(".", 1)[0] + ".safetensors").exists():
            refuse_pickle(weights)


@contextmanager
def quiet_diffusers_loading():
    """diffusers' 'Loading pipeline components' bar and its loading warnings would come before (and break) the
    one error line on stderr; silenced while loading, restored afterwards."""
    from diffusers.utils import logging as diffusers_logging

    bar_was_on, verbosity = diffusers_logging.is_progress_bar_enabled(), diffusers_logging.get_verbosity()
    diffusers_logging.disable_progress_bar()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)
        if bar_was_on:
            diffusers_logging.enable_progress_bar()


class DiffusersPipelineGenerator:
    kind = "diffusers-pipeline"

    def __init__(self, folder: str | Path, device: str = "cpu", num_inference_steps: int | None = None):
        from diffusers import DiffusionPipeline

        self.folder = Path(folder)
        index = read_json(self.folder / "model_index.json")
        refuse_pickled_weights(self.folder)
        try:
            with quiet_diffusers_loading():
                self.pipeline = DiffusionPipeline.from_pretrained(str(self.folder), local_files_only=True,
                                                                  use_safetensors=True)
        except Exception as err:  # diffusers raises many types for a cut, foreign or incomplete folder
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise AuditInputError(self.folder, f"cannot load the diffusers pipeline ({first})") from None
        unet, scheduler = getattr(self.pipeline, "unet", None), getattr(self.pipeline, "scheduler", None)
        if unet is None or scheduler is None or getattr(unet.config, "cross_attention_dim", None):
            raise AuditInputError(self.folder, f"{index.get('_class_name')}: only unconditional UNet pipelines "
                                               "(DDPMPipeline, DDIMPipeline, ...) are supported")
        self.unet = unet.to(device).eval()
        self.scheduler = scheduler
        self.device = torch.device(device)
        size = unet.config.sample_size
        self.shape = (size, size) if isinstance(size, int) else tuple(size)
        self.channels = unet.config.in_channels
        default_steps = inspect.signature(self.pipeline.__call__).parameters.get("num_inference_steps")
        self.num_inference_steps = num_inference_steps or (default_steps.default if default_steps else 50)

    def with_sampling(self, num_inference_steps: int | None = None, guidance_scale: float | None = None):
        if guidance_scale is not None:
            raise AuditInputError(None, "a diffusers pipeline model is unconditional: --guidance does not apply")
        clone = copy.copy(self)
        clone.num_inference_steps = num_inference_steps or self.num_inference_steps
        return clone

    def default_conditions(self, n: int, seed: int = 0, first_index: int = 0) -> list[Condition]:
        return [Condition() for _ in range(n)]

    @torch.no_grad()
    def sample(self, conditions: Sequence[Condition], seed: int, first_index: int = 0) -> np.ndarray:
        n = len(conditions)
        if n == 0:
            return np.zeros((0, *self.shape), np.float32)
        generators = [torch.Generator().manual_seed(image_seed(seed, first_index + j)) for j in range(n)]
        # drawn per image exactly as diffusers' randn_tensor does for a list of generators
        x = torch.cat([torch.randn((1, self.channels, *self.shape), generator=g) for g in generators]).to(self.device)
        scheduler = self.scheduler.__class__.from_config(self.scheduler.config)
        scheduler.set_timesteps(self.num_inference_steps)
        x = x * getattr(scheduler, "init_noise_sigma", 1.0)
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        for t in scheduler.timesteps:
            eps = self.unet(scheduler.scale_model_input(x, t), t).sample
            kwargs = {"generator": generators} if takes_generator else {}
            x = scheduler.step(eps, t, x, **kwargs).prev_sample
        images = (x / 2 + 0.5).clamp(0, 1).mean(dim=1)  # colour pipelines → gray, like the data layer
        return images.float().cpu().numpy()

    def denoiser(self) -> Denoiser:
        def predict(x_t, t, conditions):
            t = torch.as_tensor(t, device=self.device).long()
            with torch.no_grad():
                return self.unet(x_t.to(self.device), t).sample

        def encode(images):
            x = torch.as_tensor(np.asarray(images, np.float32)).to(self.device)
            return (x[:, None] * 2 - 1).expand(-1, self.channels, *x.shape[1:])

        return Denoiser(predict_noise=predict, encode=encode,
                        alphas_cumprod=torch.as_tensor(self.scheduler.alphas_cumprod, dtype=torch.float32).cpu(),
                        scheduler=self.scheduler, space="pixel")

    def describe(self) -> dict:
        return {"kind": self.kind, "pipeline": type(self.pipeline).__name__, "folder": str(self.folder),
                "scheduler": type(self.scheduler).__name__, "num_inference_steps": self.num_inference_steps,
                "shape": list(self.shape), "unet": dict(self.unet.config),
                "checkpoint_hash": folder_hash(self.folder, exclude=())}
