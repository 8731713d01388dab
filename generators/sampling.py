"""The sampling loop shared by the latent diffusion models: deterministic DDIM (η = 0) with classifier-free
guidance. Pure functions of their inputs: the scheduler arrives as (timesteps, step function)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

StepFn = Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]  # (eps, t, x_t) -> x_{t-1}


@dataclass(frozen=True)
class ConditionBatch:
    """Encoded conditions: label indices (B, F) and an optional box mask (B, 1, h, w) at latent resolution."""

    labels: torch.Tensor
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device) -> "ConditionBatch":
        return ConditionBatch(self.labels.to(device), None if self.mask is None else self.mask.to(device))

    def null(self) -> "ConditionBatch":
        """The classifier-free null: every label unknown, no box."""
        return ConditionBatch(torch.zeros_like(self.labels), None if self.mask is None else torch.zeros_like(self.mask))

    def cat(self, other: "ConditionBatch") -> "ConditionBatch":
        mask = None if self.mask is None else torch.cat([self.mask, other.mask])
        return ConditionBatch(torch.cat([self.labels, other.labels]), mask)

    def where_dropped(self, dropped: torch.Tensor) -> "ConditionBatch":
        """Training-time condition dropout: rows with dropped=True become the null condition."""
        labels = torch.where(dropped[:, None], torch.zeros_like(self.labels), self.labels)
        mask = None
        if self.mask is not None:
            mask = torch.where(dropped.view(-1, *([1] * (self.mask.ndim - 1))), torch.zeros_like(self.mask), self.mask)
        return ConditionBatch(labels, mask)


PredictNoise = Callable[[torch.Tensor, torch.Tensor, ConditionBatch], torch.Tensor]


def guided_noise(predict_noise: PredictNoise, x: torch.Tensor, t: torch.Tensor, cond_and_null: ConditionBatch,
                 guidance_scale: float) -> torch.Tensor:
    """ε̂ = ε_null + s·(ε_cond − ε_null); the two predictions share one batched forward pass.
    `cond_and_null` is cond.cat(cond.null()) when guiding (built once per sampling run), else cond."""
    if guidance_scale == 1.0:
        return predict_noise(x, t, cond_and_null)
    eps_cond, eps_null = predict_noise(torch.cat([x, x]), torch.cat([t, t]), cond_and_null).chunk(2)
    return torch.lerp(eps_null, eps_cond, guidance_scale)  # = eps_null + s·(eps_cond − eps_null)


@torch.no_grad()
def ddim_sample(predict_noise: PredictNoise, x_T: torch.Tensor, cond: ConditionBatch, timesteps: Sequence[int],
                step: StepFn, guidance_scale: float) -> torch.Tensor:
    """Run the reverse process from x_T over `timesteps` (descending). Deterministic: all randomness is x_T."""
    x = x_T
    cond_and_null = cond if guidance_scale == 1.0 else cond.cat(cond.null())
    for t in timesteps:
        t_batch = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        x = step(guided_noise(predict_noise, x, t_batch, cond_and_null, guidance_scale), int(t), x)
    return x


def ddim_step(alphas_cumprod: torch.Tensor, num_train_timesteps: int, num_inference_steps: int,
              final_alpha_cumprod: float) -> StepFn:
    """Deterministic DDIM (η = 0) as one fused update x_prev = a_t·x + b_t·ε with per-step constants:
    x0 = (x − √(1−ᾱ_t)·ε)/√ᾱ_t, x_prev = √ᾱ_prev·x0 + √(1−ᾱ_prev)·ε, prev = t − T/n (ᾱ_prev = final below 0) —
    the update of diffusers' and MONAI's DDIMScheduler.step without their per-call bookkeeping."""
    alphas = alphas_cumprod.double()
    ratio = num_train_timesteps // num_inference_steps

    def coefficients(t: int) -> tuple[float, float]:
        a_t = float(alphas[t])
        a_prev = float(alphas[t - ratio]) if t - ratio >= 0 else float(final_alpha_cumprod)
        scale = (a_prev / a_t) ** 0.5
        return scale, (1 - a_prev) ** 0.5 - scale * (1 - a_t) ** 0.5

    table: dict[int, tuple[float, float]] = {}

    def step(eps: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
        if t not in table:
            table[t] = coefficients(t)
        a, b = table[t]
        return torch.add(x * a, eps, alpha=b)

    return step
