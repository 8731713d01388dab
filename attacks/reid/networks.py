"""The Siamese (shared-weight) embedding network of the re-identification attacker.

One network embeds every image (that is what "Siamese" means here: queries and references go through the same
weights): a backbone — a timm model for 2D (1 input channel), a MONAI ResNet for 3D — then a small projection head
to `embedding_dim`, L2-normalised. Backbone weights come from a local safetensors file when given (nothing is ever
downloaded), else the backbone is trained from scratch with the head.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from audit.errors import AuditInputError

MONAI_RESNETS = ("resnet10", "resnet18", "resnet34")


class EmbeddingNet(nn.Module):
    """backbone (B, 1, *S) → (B, C) → head → (B, d), rows L2-normalised."""

    def __init__(self, backbone: nn.Module, feature_dim: int, embedding_dim: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(feature_dim, 2 * embedding_dim), nn.ReLU(inplace=True),
                                  nn.Linear(2 * embedding_dim, embedding_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        return F.normalize(self.head(features.flatten(1)), dim=1)


def timm_backbone(name: str, weights: str | Path | None) -> tuple[nn.Module, int]:
    """A headless 1-channel timm model; weights from a local safetensors file (RGB stems summed to 1 channel)."""
    import timm

    from audit.checkpoints import load_safetensors_file, load_state_strict
    from audit.features import TimmFeatures, adapt_state_to_model

    try:
        model = timm.create_model(name, pretrained=False, in_chans=1, num_classes=0)
    except (RuntimeError, ValueError) as err:  # unknown model name
        raise AuditInputError(None, f"re-id attacker: unknown timm backbone '{name}' ({err})") from None
    if weights is not None:
        state = adapt_state_to_model(load_safetensors_file(weights), model)
        load_state_strict(model, state, weights)
    # the pooled output's width: num_features, or a wider pre-logits layer some models add (lcnet, mobilenetv3)
    width = getattr(model, "head_hidden_size", None) or model.num_features
    return TimmFeatures(model), int(width)


def monai_backbone(name: str, width: float, weights: str | Path | None) -> tuple[nn.Module, int]:
    """A headless 1-channel 3D MONAI ResNet (basic blocks), widths scaled by `width` (0.25 → 16..128 channels)."""
    from monai.networks import nets

    from audit.checkpoints import load_safetensors_file, load_state_strict

    if name not in MONAI_RESNETS:
        raise AuditInputError(None, f"re-id attacker: unknown 3D backbone '{name}' (known: {', '.join(MONAI_RESNETS)})")
    # stride-2 stem: the phantom volumes are 32³-64³, a full-resolution 7³ stem would dominate the CPU cost
    model = getattr(nets, name)(spatial_dims=3, n_input_channels=1, feed_forward=False, widen_factor=width,
                                conv1_t_stride=2)
    if weights is not None:
        load_state_strict(model, load_safetensors_file(weights), weights)
    return model, int(512 * width)


def build_embedding_net(ndim: int, backbone: str, backbone_3d: str, width_3d: float, embedding_dim: int,
                        weights: str | Path | None = None) -> EmbeddingNet:
    if ndim == 2:
        body, feature_dim = timm_backbone(backbone, weights)
    elif ndim == 3:
        body, feature_dim = monai_backbone(backbone_3d, width_3d, weights)
    else:
        raise AuditInputError(None, f"re-id attacker takes 2D or 3D images, got {ndim}D")
    return EmbeddingNet(body, feature_dim, embedding_dim)
