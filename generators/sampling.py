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


def guided_noise(predict_noise: PredictNoise, x: torch.Tensor, t: torch.Tensor, cond: ConditionBatch,
                 guidance_scale: float) -> torch.Tensor:
    """ε̂ = ε_null + s·(ε_cond − ε_null); the two predictions share one batched forward pass."""
    if guidance_scale == 1.0:
        return predict_noise(x, t, cond)
    eps = predict_noise(torch.cat([x, x]), torch.cat([t, t]), cond.cat(cond.null()))
    eps_cond, eps_null = eps.chunk(2)
    return eps_null + guidance_scale * (eps_cond - eps_null)


@torch.no_grad()
def ddim_sample(predict_noise: PredictNoise, x_T: torch.Tensor, cond: ConditionBatch, timesteps: Sequence[int],
                step: StepFn, guidance_scale: float) -> torch.Tensor:
    """Run the reverse process from x_T over `timesteps` (descending). Deterministic: all randomness is x_T."""
    x = x_T
    for t in timesteps:
        t_batch = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        x = step(guided_noise(predict_noise, x, t_batch, cond, guidance_scale), int(t), x)
    return x
