"""The 2D backend: diffusers AutoencoderKL (1 channel) + UNet2DConditionModel in latent space.

Conditioning: label tokens (BI-RADS, density, view, laterality, primary finding) enter by cross-attention; the
lesion boxes enter as a mask channel concatenated to the noisy latent, so the model knows where a lesion goes.
Training noise: DDPMScheduler; sampling: DDIMScheduler (η = 0) built from the same config.
Saved in diffusers' save_pretrained layout: vae/, unet/, label_encoder/, scheduler/.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

from audit.errors import AuditInputError
from generators.checkpoint import load_diffusers, read_json
from generators.conditions import LabelVocabulary
from generators.config import GeneratorConfig
from generators.label_encoder import LabelEncoder
from generators.sampling import ConditionBatch, ddim_step


def build_vae(cfg: GeneratorConfig, shape: tuple[int, ...]) -> AutoencoderKL:
    ae = cfg.autoencoder
    levels = len(ae.channels)
    return AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=tuple(ae.channels),
                         layers_per_block=ae.layers_per_block, latent_channels=ae.latent_channels,
                         norm_num_groups=ae.norm_num_groups, sample_size=max(shape),
                         mid_block_add_attention=ae.attention)


def build_unet(cfg: GeneratorConfig, latent_shape: tuple[int, ...]) -> UNet2DConditionModel:
    un = cfg.unet
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in un.attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(un.attention_levels))
    # diffusers' UNet2DConditionModel reads `attention_head_dim` as the number of heads (a legacy name)
    heads = tuple(max(1, c // un.head_channels) for c in un.channels)
    extra = 1 if cfg.conditioning.box_mask else 0
    return UNet2DConditionModel(sample_size=tuple(latent_shape[1:]), in_channels=latent_shape[0] + extra,
                                out_channels=latent_shape[0], down_block_types=down, up_block_types=up,
                                block_out_channels=tuple(un.channels), layers_per_block=un.layers_per_block,
                                cross_attention_dim=cfg.conditioning.embed_dim, attention_head_dim=heads,
                                norm_num_groups=un.norm_num_groups)


def build_scheduler(cfg: GeneratorConfig) -> DDPMScheduler:
    un = cfg.unet
    # latents are not bounded to [-1, 1]: never clip the predicted x0
    return DDPMScheduler(num_train_timesteps=un.num_train_timesteps, beta_schedule=un.beta_schedule,
                         beta_start=un.beta_start, beta_end=un.beta_end, clip_sample=False,
                         prediction_type="epsilon")


class Diffusers2DBackend:
    def __init__(self, vae: AutoencoderKL, unet: UNet2DConditionModel, label_encoder: LabelEncoder,
                 scheduler: DDPMScheduler, shape: tuple[int, ...], box_mask: bool, kl_weight: float):
        self.autoencoder = vae
        self.unet = unet
        self.label_encoder = label_encoder
        self.diffusion_modules = (unet, label_encoder)  # what the diffusion stage trains
        self.train_scheduler = scheduler
        self.shape = tuple(shape)
        self.uses_box_mask = box_mask
        self.kl_weight = kl_weight
        self._latent_shape = self._infer_latent_shape()

    @classmethod
    def build(cls, cfg: GeneratorConfig, shape: tuple[int, ...], vocabulary: LabelVocabulary):
        if len(shape) != 2:
            raise AuditInputError(None, f"ldm2d needs a 2D dataset, got shape {shape}")
        vae = build_vae(cfg, shape)
        factor = 2 ** (len(cfg.autoencoder.channels) - 1)
        latent_shape = (cfg.autoencoder.latent_channels, shape[0] // factor, shape[1] // factor)
        label_encoder = LabelEncoder(field_sizes=vocabulary.sizes, embed_dim=cfg.conditioning.embed_dim)
        return cls(vae, build_unet(cfg, latent_shape), label_encoder, build_scheduler(cfg), shape,
                   cfg.conditioning.box_mask, cfg.autoencoder.kl_weight)

    def _infer_latent_shape(self) -> tuple[int, ...]:
        factor = 2 ** (len(self.autoencoder.config.block_out_channels) - 1)
        return (self.autoencoder.config.latent_channels, self.shape[0] // factor, self.shape[1] // factor)

    def latent_shape(self) -> tuple[int, ...]:
        return self._latent_shape

    def to(self, device) -> "Diffusers2DBackend":
        for module in (self.autoencoder, self.unet, self.label_encoder):
            module.to(device)
        return self

    # --- autoencoder --------------------------------------------------------------------------------------------
    def autoencoder_loss(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = images * 2 - 1
        posterior = self.autoencoder.encode(x).latent_dist
        recon = self.autoencoder.decode(posterior.sample(generator=generator)).sample
        # L1 reconstruction + a small KL pull towards N(0, I) (diffusers' VAE recipe: kl summed per image)
        return torch.nn.functional.l1_loss(recon, x) + self.kl_weight * posterior.kl().mean()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(images * 2 - 1).latent_dist.mean

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (self.autoencoder.decode(latents).sample + 1) / 2

    # --- diffusion ----------------------------------------------------------------------------------------------
    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: ConditionBatch) -> torch.Tensor:
        tokens = self.label_encoder(cond.labels)
        inputs = torch.cat([x_t, cond.mask.to(x_t.dtype)], dim=1) if self.uses_box_mask else x_t
        return self.unet(inputs, t, encoder_hidden_states=tokens).sample

    def ddim_scheduler(self, num_inference_steps: int) -> DDIMScheduler:
        scheduler = DDIMScheduler.from_config(self.train_scheduler.config, clip_sample=False, set_alpha_to_one=False)
        scheduler.set_timesteps(num_inference_steps)
        return scheduler

    def ddim(self, num_inference_steps: int, reference: bool = False):
        """(timesteps, step): diffusers' DDIMScheduler timesteps; its update fused (`reference`: its own step)."""
        scheduler = self.ddim_scheduler(num_inference_steps)
        if reference:
            def step(eps: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
                return scheduler.step(eps, t, x, eta=0.0).prev_sample
        else:
            step = ddim_step(scheduler.alphas_cumprod, scheduler.config.num_train_timesteps, num_inference_steps,
                             float(scheduler.final_alpha_cumprod))
        return [int(t) for t in scheduler.timesteps], step

    # --- save / load --------------------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        self.autoencoder.save_pretrained(folder / "vae", safe_serialization=True)
        self.unet.save_pretrained(folder / "unet", safe_serialization=True)
        self.label_encoder.save_pretrained(folder / "label_encoder", safe_serialization=True)
        self.train_scheduler.save_pretrained(folder / "scheduler")

    @classmethod
    def load(cls, folder: Path, cfg: GeneratorConfig, shape: tuple[int, ...], vocabulary: LabelVocabulary):
        vae = load_diffusers(AutoencoderKL, folder / "vae")
        unet = load_diffusers(UNet2DConditionModel, folder / "unet")
        label_encoder = load_diffusers(LabelEncoder, folder / "label_encoder")
        if tuple(label_encoder.config.field_sizes) != vocabulary.sizes:
            raise AuditInputError(folder / "label_encoder", "label encoder does not match the vocabulary")
        read_json(folder / "scheduler" / "scheduler_config.json")  # a clean error when missing
        scheduler = DDPMScheduler.from_pretrained(str(folder / "scheduler"), local_files_only=True)
        return cls(vae, unet, label_encoder, scheduler, shape, cfg.conditioning.box_mask, cfg.autoencoder.kl_weight)
