"""Label tokens: one learned embedding per conditioning field + a constant token, for cross-attention.

A diffusers ModelMixin so it saves/loads like the other 2D components (config.json + safetensors); the 3D model
uses the same class. Index 0 of every field is "unknown", which is also the classifier-free-guidance null.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


class LabelEncoder(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, field_sizes: tuple[int, ...] = (), embed_dim: int = 64):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(int(n), embed_dim) for n in field_sizes)
        # row 0 is the constant token (so a model with no fields still has a context); row j+1 marks field j
        self.token_embedding = nn.Parameter(torch.randn(len(field_sizes) + 1, embed_dim) * 0.02)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """(B, n_fields) int64 → (B, n_fields + 1, embed_dim) tokens."""
        batch = labels.shape[0]
        tokens = [self.token_embedding[0].expand(batch, -1)]
        tokens += [table(labels[:, j]) + self.token_embedding[j + 1] for j, table in enumerate(self.tables)]
        return self.norm(torch.stack(tokens, dim=1))
