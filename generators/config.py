"""Typed generator presets (configs/generators/*.yaml). Architecture fields are library-neutral; the 2D backend
maps them onto diffusers blocks, the 3D backend onto MONAI's."""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from audit.config import StrictModel, load_preset, validate


class ConditioningConfig(StrictModel):
    fields: tuple[str, ...] | None = None  # None: chosen from the training labels (conditions.auto_fields)
    box_mask: bool = True  # 2D: lesion boxes as an extra latent channel
    embed_dim: int = 64  # label token width (= the UNet's cross-attention width)
    dropout: float = 0.1  # classifier-free guidance: share of training steps with the null condition


class AutoencoderConfig(StrictModel):
    channels: tuple[int, ...] = (32, 64, 64)  # one per resolution level; latent side = image side / 2**(levels-1)
    latent_channels: int = 4
    layers_per_block: int = 1
    norm_num_groups: int = 16
    attention: bool = False  # self-attention in the bottleneck (costly on CPU)
    kl_weight: float = 1e-6
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3


class UNetConfig(StrictModel):
    channels: tuple[int, ...] = (64, 128)
    # 2D: cross-attention to the label tokens at these levels; 3D: self-attention (needs einops; off by default)
    attention_levels: tuple[bool, ...] = (False, True)
    layers_per_block: int = 1
    norm_num_groups: int = 32
    head_channels: int = 32
    num_train_timesteps: int = 1000
    beta_schedule: Literal["scaled_linear", "linear"] = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4

    @model_validator(mode="after")
    def _levels_match(self):
        if len(self.attention_levels) != len(self.channels):
            raise ValueError("attention_levels needs one entry per channels entry")
        return self


class SamplingConfig(StrictModel):
    num_inference_steps: int = 50
    guidance_scale: float = 2.0  # 1.0 = no classifier-free guidance (one UNet pass per step instead of two)


class TrainingConfig(StrictModel):
    split: str = "train"
    max_records: int | None = None  # use only this many training records (the memorize preset's small subset)
    checkpoint_every: int = 250  # steps between periodic (atomic) checkpoints
    log_every: int = 50  # steps per averaged loss entry in the training log


class GeneratorConfig(StrictModel):
    kind: Literal["ldm2d", "ldm3d"]
    description: str = ""
    shape: tuple[int, ...] | None = None  # None: the dataset's configured shape
    conditioning: ConditioningConfig = ConditioningConfig()
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    unet: UNetConfig = UNetConfig()
    sampling: SamplingConfig = SamplingConfig()
    training: TrainingConfig = TrainingConfig()

    @field_validator("shape")
    @classmethod
    def _shape(cls, v):
        if v is not None and len(v) not in (2, 3):
            raise ValueError("must be (H, W) or (D, H, W)")
        return v

    @model_validator(mode="after")
    def _labels_have_a_way_in(self):
        if self.kind == "ldm2d" and not any(self.unet.attention_levels):
            raise ValueError("ldm2d: unet.attention_levels needs a level with attention (the labels enter there)")
        return self

    @property
    def ndim(self) -> int:
        return 2 if self.kind == "ldm2d" else 3


def load_generator_config(name_or_path: str) -> GeneratorConfig:
    data, source = load_preset("generators", name_or_path)
    return validate(GeneratorConfig, data, source)
