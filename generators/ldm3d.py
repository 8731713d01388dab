"""The 3D backend: MONAI AutoencoderKL + DiffusionModelUNet (spatial_dims=3), label-conditioned.

Labels enter through MONAI's class-label path (an embedding added to the timestep embedding), generalised from
one class to several fields: `FieldSumEmbedding` sums one learned vector per field value. This needs no attention
layers, so the 3D model runs on MONAI alone (its attention blocks need the optional `einops`).

Training noise: MONAI DDPMScheduler; sampling: a DDIM loop over MONAI's DDIMScheduler (LatentDiffusionInferer.sample
has no classifier-free guidance, so the loop is ours; the inferer's maths is the same). Saved as
autoencoder/, unet/ (config.json + model.safetensors each), scheduler/.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from audit.errors import AuditInputError
from generators.checkpoint import load_module, read_json, save_module, write_json
from generators.conditions import LabelVocabulary
from generators.config import GeneratorConfig
from generators.sampling import ConditionBatch, ddim_step

MONAI_SCHEDULES = {"scaled_linear": "scaled_linear_beta", "linear": "linear_beta"}


def autoencoder_args(cfg: GeneratorConfig) -> dict:
    ae = cfg.autoencoder
    return {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "num_res_blocks": ae.layers_per_block,
            "channels": list(ae.channels), "attention_levels": [False] * len(ae.channels),
            "latent_channels": ae.latent_channels, "norm_num_groups": ae.norm_num_groups,
            "with_encoder_nonlocal_attn": ae.attention, "with_decoder_nonlocal_attn": ae.attention}


class FieldSumEmbedding(nn.Module):
    """(B, n_fields) label indices → (B, dim): the sum of one learned vector per field value (index 0 of each
    field = unknown = the classifier-free null, whose vector is kept at zero so "no labels" adds nothing)."""

    def __init__(self, field_sizes: tuple[int, ...], dim: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(int(n), dim, padding_idx=0) for n in field_sizes)
        self.dim = dim

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(labels.shape[0], self.dim, device=labels.device)
        for j, table in enumerate(self.tables):
            out = out + table(labels[:, j])
        return out


def unet_args(cfg: GeneratorConfig, vocabulary: LabelVocabulary) -> dict:
    un = cfg.unet
    return {"spatial_dims": 3, "in_channels": cfg.autoencoder.latent_channels,
            "out_channels": cfg.autoencoder.latent_channels, "num_res_blocks": un.layers_per_block,
            "channels": list(un.channels), "attention_levels": list(un.attention_levels),
            "norm_num_groups": un.norm_num_groups, "num_head_channels": un.head_channels,
            "label_field_sizes": list(vocabulary.sizes)}


def build_unet(args: dict) -> DiffusionModelUNet:
    monai_args = _as_sequences({k: v for k, v in args.items() if k != "label_field_sizes"})
    # num_class_embeds switches MONAI's class path on; its single table is then replaced by one per field
    unet = DiffusionModelUNet(**monai_args, num_class_embeds=1)
    unet.class_embedding = FieldSumEmbedding(tuple(args["label_field_sizes"]), int(args["channels"][0]) * 4)
    return unet


def scheduler_args(cfg: GeneratorConfig) -> dict:
    un = cfg.unet
    return {"num_train_timesteps": un.num_train_timesteps, "schedule": MONAI_SCHEDULES[un.beta_schedule],
            "beta_start": un.beta_start, "beta_end": un.beta_end, "clip_sample": False}


def _as_sequences(args: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}


class Monai3DBackend:
    uses_box_mask = False

    def __init__(self, autoencoder: AutoencoderKL, unet: DiffusionModelUNet,
                 scheduler_config: dict, autoencoder_config: dict, unet_config: dict, shape: tuple[int, ...],
                 kl_weight: float):
        self.autoencoder = autoencoder
        self.unet = unet
        self.diffusion_modules = (unet,)
        self.scheduler_config = scheduler_config
        self.train_scheduler = DDPMScheduler(**scheduler_config)
        self.autoencoder_config = autoencoder_config
        self.unet_config = unet_config
        self.shape = tuple(shape)
        self.kl_weight = kl_weight
        factor = 2 ** (len(autoencoder_config["channels"]) - 1)
        self._latent_shape = (autoencoder_config["latent_channels"], *(s // factor for s in self.shape))

    @classmethod
    def build(cls, cfg: GeneratorConfig, shape: tuple[int, ...], vocabulary: LabelVocabulary):
        if len(shape) != 3:
            raise AuditInputError(None, f"ldm3d needs a 3D dataset, got shape {shape}")
        ae_args, un_args = autoencoder_args(cfg), unet_args(cfg, vocabulary)
        return cls(AutoencoderKL(**_as_sequences(ae_args)), build_unet(un_args), scheduler_args(cfg), ae_args,
                   un_args, shape, cfg.autoencoder.kl_weight)

    def latent_shape(self) -> tuple[int, ...]:
        return self._latent_shape

    def to(self, device) -> "Monai3DBackend":
        for module in (self.autoencoder, self.unet):
            module.to(device)
        return self

    def autoencoder_loss(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = images * 2 - 1
        z_mu, z_sigma = self.autoencoder.encode(x)
        eps = torch.randn(z_mu.shape, generator=generator).to(z_mu.device)
        recon = self.autoencoder.decode(z_mu + z_sigma * eps)
        # KL(N(mu, sigma) || N(0, I)) summed per volume, as in MONAI's generative tutorials
        kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1)
        return torch.nn.functional.l1_loss(recon, x) + self.kl_weight * kl.flatten(1).sum(1).mean()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(images * 2 - 1)[0]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (self.autoencoder.decode(latents) + 1) / 2

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: ConditionBatch) -> torch.Tensor:
        return self.unet(x_t, timesteps=t, class_labels=cond.labels)

    def ddim(self, num_inference_steps: int, reference: bool = False):
        """(timesteps, step): MONAI DDIMScheduler timesteps; its update fused (`reference`: its own step)."""
        scheduler = DDIMScheduler(**self.scheduler_config)
        scheduler.set_timesteps(num_inference_steps)
        if reference:
            def step(eps: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
                return scheduler.step(eps, t, x)[0]
        else:
            step = ddim_step(scheduler.alphas_cumprod, scheduler.num_train_timesteps, num_inference_steps,
                             float(scheduler.final_alpha_cumprod))
        return [int(t) for t in scheduler.timesteps], step

    def save(self, folder: Path) -> None:
        save_module(self.autoencoder, self.autoencoder_config, folder / "autoencoder")
        save_module(self.unet, self.unet_config, folder / "unet")
        (folder / "scheduler").mkdir(exist_ok=True)
        write_json(folder / "scheduler" / "scheduler_config.json",
                   {"class": "monai.networks.schedulers.DDPMScheduler", **self.scheduler_config})

    @classmethod
    def load(cls, folder: Path, cfg: GeneratorConfig, shape: tuple[int, ...], vocabulary: LabelVocabulary):
        autoencoder = load_module(folder / "autoencoder", lambda c: AutoencoderKL(**_as_sequences(c)))
        unet = load_module(folder / "unet", build_unet)
        if tuple(unet.class_embedding.tables[j].num_embeddings for j in range(len(vocabulary.fields))) \
                != vocabulary.sizes or len(unet.class_embedding.tables) != len(vocabulary.fields):
            raise AuditInputError(folder / "unet", "label embedding does not match the vocabulary")
        sched = read_json(folder / "scheduler" / "scheduler_config.json")
        sched = {k: v for k, v in sched.items() if k != "class"}
        ae_config = read_json(folder / "autoencoder" / "config.json")
        un_config = read_json(folder / "unet" / "config.json")
        return cls(autoencoder, unet, sched, ae_config, un_config, shape, cfg.autoencoder.kl_weight)
