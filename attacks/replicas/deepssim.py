"""DeepSSIM: an embedding whose cosine approximates SSIM, used for retrieval and verified by exact SSIM.

A re-implementation from the description of DeepSSIM (arXiv 2509.16582, WACV 2026; MIT) — no code copied:

- network: encoder (a small 2D/3D CNN for CPUs by default, or any timm CNN backbone) → pooling → BatchNorm →
  Linear(→512) → GELU → Dropout(0.33) → Linear(→256) → L2-normalised. The pooling is an adaptive average onto a
  small grid (4×4 in 2D, 2×2×2 in 3D) rather than a global one: SSIM is a spatial measure (a flipped copy has a
  low SSIM), and a coarse grid keeps the layout a global average would throw away. With the default CNN (64/128
  channels) the pooled vector has 1024 features, the width the paper's head starts from.
- target: SSIM of the two images, computed on the [0, 1] images the data layer delivers, data_range = 1,
  Gaussian window σ = 1.5, 11 px (scikit-image's `gaussian_weights=True` setting), by the suite's one SSIM
  (`audit.metrics.similarity.ssim`, batched, 2D and 3D; the voxel-level SSIM scorer uses the same function).
  The paper computes SSIM with scikit-image on z-scored images; we use [0, 1] because a z-scored image has no
  fixed data range and because the exact verification of the scorer uses this very function — training target
  and verification must be the same measure. Network inputs are z-scored per image (default, as the paper), or
  (`input_normalisation="fixed"`) mapped by a fixed (x - 0.5) / 0.25 that keeps brightness, which SSIM's luminance
  term sees; measured on the mammo phantom (10 epochs) neither wins clearly: held-out Spearman 0.85 / 0.91
  (116 images) and 0.88 / 0.80 (432 images), top-1 agreement with brute-force SSIM at k=10 0.63 / 0.44 and
  0.36 / 0.34 (z-score / fixed).
- loss: MSE between the cosine of the two embeddings and that SSIM.
- pairs: each epoch pairs every training image with itself (probability `same_pair_fraction`, default 0.5) or
  with a random other image, then augments the two images independently (flips on both axes, rotation ≤ 10°
  (~0.17 rad), gamma 0.5-1.5, each p = 0.33; albumentations in 2D, MONAI in 3D). Same-image pairs keep
  high-SSIM targets common; random pairs teach the low end. Optional (`neighbour_pair_fraction`, default 0):
  pairs with one of the anchor's 5 nearest training images by NCC, meant to teach the ranking among near
  neighbours; measured on the 64-px mammo phantom (10 epochs, 116 images) it *lowered* top-1 agreement with
  brute-force SSIM on novel images (k=10: 0.28 with 0.25 of such pairs vs 0.63 without), so it is off.
- optimiser: AdamW lr 1e-3, weight decay 1e-3, gradient clipping 1.0, batch 32 (the paper's settings; its 40
  epochs and ConvNeXt-Base are replaced by CPU-sized defaults).

Differences from the paper's scorers, on purpose: no hard-coded SSIM thresholds (calibration decides), no dense
N×M matrices (chunked top-k search), a two-stage mode: cosine retrieval of the top-k, then exact SSIM of those
k pairs; the score is the best exact SSIM (or the best cosine when verification is off); and mirrored
orientations of the query searched too (`flips`, as the voxel scorers do).

Checkpoint: a folder with `config.json` + `model.safetensors` (`audit.checkpoints`); the config travels with the
weights and is validated on load.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from scipy.stats import spearmanr
from torch import nn

from attacks.replicas.base import ReplicaScores, ScorerBase, query_array, training_array
from audit.checkpoints import load_checkpoint, load_state_strict, save_checkpoint
from audit.errors import AuditInputError
from audit.registry import Params, Runtime
from audit.features import ConvTrunk, recalibrate_batchnorm, resize_to, topk_cosine, zscore_per_image

CHECKPOINT_KIND = "deepssim"
INPUT_NORMALISATIONS = ("zscore", "fixed")
SSIM_KERNEL = 11
SSIM_SIGMA = 1.5
AUGMENT_P = 0.33
MAX_ROTATION_RAD = 0.17


# ----------------------------------------------------------------------------------------------------------------
# the target measure


def ssim_pairs(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> np.ndarray:
    """SSIM of each pair (a[i], b[i]); images (B, *S) float in [0, 1], 2D or 3D. Returns (B,) float64.

    The suite's one SSIM (`audit.metrics.similarity.ssim`, the voxel-level scorer's measure), data_range 1."""
    from audit.metrics.similarity import ssim

    if a.shape != b.shape:
        raise ValueError(f"SSIM pairs need equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    if len(a) == 0:
        return np.zeros(0)
    return ssim(a, b, data_range=1.0, window=SSIM_KERNEL, sigma=SSIM_SIGMA)


# ----------------------------------------------------------------------------------------------------------------
# the network


class DeepSSIMNet(nn.Module):
    """trunk (feature maps) → adaptive average pool onto a grid → BatchNorm → MLP → L2-normalised embedding."""

    def __init__(self, trunk: nn.Module, trunk_channels: int, ndim: int, pool_grid: int, hidden: int = 512,
                 out_dim: int = 256, dropout: float = 0.33):
        super().__init__()
        self.trunk = trunk
        self.ndim = ndim
        self.pool_grid = pool_grid
        pooled = trunk_channels * pool_grid ** ndim
        self.norm = nn.BatchNorm1d(pooled)
        self.head = nn.Sequential(nn.Linear(pooled, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.trunk(x)
        pool = F.adaptive_avg_pool2d if self.ndim == 2 else F.adaptive_avg_pool3d
        pooled = pool(maps, self.pool_grid).flatten(1)
        return F.normalize(self.head(self.norm(pooled)), dim=1)


class TimmTrunk(nn.Module):
    """A timm CNN's `forward_features` (B, C, H, W) as a trunk."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


@dataclass(frozen=True)
class DeepSSIMConfig:
    ndim: int
    input_shape: tuple[int, ...]
    backbone: str = "small-cnn"  # or "timm:<model>"
    widths: tuple[int, ...] = (16, 32, 64, 64)  # small-cnn stages
    pool_grid: int = 4
    hidden: int = 512
    out_dim: int = 256
    dropout: float = 0.33
    input_normalisation: str = "zscore"  # "zscore": per image; "fixed": (x - 0.5) / 0.25, intensities kept

    def as_json(self) -> dict[str, Any]:
        return {"ndim": self.ndim, "input_shape": list(self.input_shape), "backbone": self.backbone,
                "widths": list(self.widths), "pool_grid": self.pool_grid, "hidden": self.hidden,
                "out_dim": self.out_dim, "dropout": self.dropout,
                "ssim": {"images": "[0,1]", "data_range": 1.0, "kernel_size": SSIM_KERNEL, "sigma": SSIM_SIGMA},
                "input_normalisation": self.input_normalisation}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str | Path) -> "DeepSSIMConfig":
        try:
            cfg = cls(ndim=int(data["ndim"]), input_shape=tuple(int(s) for s in data["input_shape"]),
                      backbone=str(data["backbone"]), widths=tuple(int(w) for w in data["widths"]),
                      pool_grid=int(data["pool_grid"]), hidden=int(data["hidden"]), out_dim=int(data["out_dim"]),
                      dropout=float(data["dropout"]), input_normalisation=str(data["input_normalisation"]))
        except (KeyError, TypeError, ValueError) as err:
            raise AuditInputError(where, f"DeepSSIM config is incomplete or malformed ({err!r})") from None
        if cfg.input_normalisation not in INPUT_NORMALISATIONS:
            raise AuditInputError(where, f"DeepSSIM config: unknown input_normalisation '{cfg.input_normalisation}'")
        if cfg.ndim not in (2, 3) or len(cfg.input_shape) != cfg.ndim:
            raise AuditInputError(where, f"DeepSSIM config: ndim {cfg.ndim} does not match input_shape "
                                         f"{cfg.input_shape}")
        return cfg


def default_config(input_shape: Sequence[int], backbone: str = "small-cnn",
                   input_normalisation: str = "zscore") -> DeepSSIMConfig:
    ndim = len(input_shape)
    if ndim == 2:
        return DeepSSIMConfig(ndim=2, input_shape=tuple(input_shape), backbone=backbone,
                              input_normalisation=input_normalisation)
    # 3D: fewer, wider stages on a 2×2×2 grid keep 1024 pooled features at a CPU-sized cost
    return DeepSSIMConfig(ndim=3, input_shape=tuple(input_shape), backbone=backbone, widths=(8, 16, 32, 128),
                          pool_grid=2, input_normalisation=input_normalisation)


def build_net(cfg: DeepSSIMConfig) -> DeepSSIMNet:
    if cfg.backbone == "small-cnn":
        trunk = ConvTrunk(cfg.ndim, cfg.widths)
        return DeepSSIMNet(trunk, trunk.out_channels, cfg.ndim, cfg.pool_grid, cfg.hidden, cfg.out_dim, cfg.dropout)
    kind, _, model_name = cfg.backbone.partition(":")
    if kind != "timm" or not model_name:
        raise AuditInputError(None, f"unknown DeepSSIM backbone '{cfg.backbone}' (known: small-cnn, timm:<model>)")
    if cfg.ndim != 2:
        raise AuditInputError(None, "timm backbones are 2D; use the small-cnn backbone for volumes")
    import timm

    try:  # pretrained=False: weights come from --weights or from a DeepSSIM checkpoint, never from a hub
        model = timm.create_model(model_name, pretrained=False, in_chans=1, num_classes=0)
    except (RuntimeError, ValueError) as err:
        raise AuditInputError(None, f"unknown timm model '{model_name}' ({err})") from None
    trunk = TimmTrunk(model)
    with torch.no_grad():
        probe = trunk.eval()(torch.zeros(1, 1, *cfg.input_shape))
    if probe.ndim != 4:
        raise AuditInputError(None, f"timm model '{model_name}' does not give 2D feature maps (CNN backbones only)")
    return DeepSSIMNet(trunk, probe.shape[1], 2, cfg.pool_grid, cfg.hidden, cfg.out_dim, cfg.dropout)


@dataclass
class DeepSSIMModel:
    """A trained net + its config; embeds [0, 1] images (any size: resampled to the trained input shape)."""

    net: DeepSSIMNet
    config: DeepSSIMConfig
    batch_size: int = 64
    device: str = "cpu"
    info: dict[str, Any] = field(default_factory=dict)

    name = "deepssim"

    @property
    def ndim(self) -> int:
        return self.config.ndim

    def embed(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != self.config.ndim + 1:
            raise AuditInputError(None, f"DeepSSIM model is {self.config.ndim}D, images have shape "
                                        f"{tuple(images.shape[1:])}")
        self.net.eval().to(self.device)
        out = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                x = torch.from_numpy(images[start:start + self.batch_size]).unsqueeze(1).to(self.device)
                out.append(self.net(prepare_input(x, self.config)).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.config.out_dim), np.float32)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.config.as_json(), **self.info}


def prepare_input(x: torch.Tensor, config: "DeepSSIMConfig") -> torch.Tensor:
    """(B, 1, *S) [0, 1] → the network's input: resampled to the trained shape, then normalised."""
    x = resize_to(x, config.input_shape)
    if config.input_normalisation == "fixed":
        return (x - 0.5) / 0.25
    return zscore_per_image(x)


# ----------------------------------------------------------------------------------------------------------------
# pairs and augmentations


def pair_augmenter(ndim: int, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Batch (B, *S) → independently augmented batch: flips (both/all axes), rotation ≤ 0.17 rad, gamma 0.5-1.5,
    each with p = 0.33 — structure-preserving changes whose effect on SSIM the target measures exactly."""
    if ndim == 2:
        import albumentations as A

        compose = A.Compose([
            A.HorizontalFlip(p=AUGMENT_P),
            A.VerticalFlip(p=AUGMENT_P),
            A.Rotate(limit=math.degrees(MAX_ROTATION_RAD), border_mode=0, fill=0, p=AUGMENT_P),
            A.RandomGamma(gamma_limit=(50, 150), p=AUGMENT_P),
        ], seed=seed)

        def augment_2d(batch: np.ndarray) -> np.ndarray:
            return np.stack([np.clip(compose(image=img)["image"], 0, 1) for img in batch]).astype(np.float32)

        return augment_2d

    from monai.transforms import Compose, RandAdjustContrast, RandFlip, RandRotate

    compose = Compose([
        RandFlip(prob=AUGMENT_P, spatial_axis=0), RandFlip(prob=AUGMENT_P, spatial_axis=1),
        RandFlip(prob=AUGMENT_P, spatial_axis=2),
        RandRotate(range_x=MAX_ROTATION_RAD, range_y=MAX_ROTATION_RAD, range_z=MAX_ROTATION_RAD, prob=AUGMENT_P,
                   padding_mode="zeros"),
        RandAdjustContrast(prob=AUGMENT_P, gamma=(0.5, 1.5)),
    ])
    compose.set_random_state(seed=seed)

    def augment_3d(batch: np.ndarray) -> np.ndarray:
        out = [np.asarray(compose(torch.from_numpy(np.ascontiguousarray(v))[None]))[0] for v in batch]
        return np.clip(np.stack(out), 0, 1).astype(np.float32)

    return augment_3d


def sample_partners(n: int, rng: np.random.Generator, same_pair_fraction: float,
                    neighbour_pair_fraction: float = 0.0, neighbours: np.ndarray | None = None) -> np.ndarray:
    """For anchors 0..n-1: themselves with probability `same_pair_fraction`, one of their precomputed nearest
    neighbours (rows of `neighbours`) with probability `neighbour_pair_fraction`, else a uniformly random other
    image."""
    other = (np.arange(n) + rng.integers(1, max(n, 2), size=n)) % n  # never the anchor itself
    draw = rng.random(n)
    partners = np.where(draw < same_pair_fraction, np.arange(n), other)
    if neighbours is not None and neighbour_pair_fraction > 0:
        pick = neighbours[np.arange(n), rng.integers(0, neighbours.shape[1], size=n)]
        use = (draw >= same_pair_fraction) & (draw < same_pair_fraction + neighbour_pair_fraction)
        partners = np.where(use, pick, partners)
    return partners


def nearest_neighbours(images: np.ndarray, m: int, side: int = 32) -> np.ndarray:
    """(N, m) indices of each image's m most similar other images by NCC of area-downsampled copies."""
    from audit.search import topk_similarity

    x = resize_to(torch.from_numpy(images).unsqueeze(1), tuple(min(s, side) for s in images.shape[1:]))
    _, index = topk_similarity(x.reshape(len(images), -1).numpy(), x.reshape(len(images), -1).numpy(),
                               k=min(m + 1, len(images)), metric="ncc")
    out = np.empty((len(images), index.shape[1] - 1), np.int64)
    for i, row in enumerate(index):
        others = row[row != i]  # drop the image itself (usually first; not if a duplicate ties with it)
        out[i] = others[:out.shape[1]]
    return out


def make_pairs(images: np.ndarray, anchors: np.ndarray, partners: np.ndarray,
               augment: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Augmented pair images (each side independently) and their SSIM targets."""
    a = augment(images[anchors])
    b = augment(images[partners])
    return a, b, ssim_pairs(a, b)


# ----------------------------------------------------------------------------------------------------------------
# training


@dataclass
class TrainReport:
    epoch_losses: list[float]
    heldout_spearman: float | None
    heldout_mae: float | None
    heldout_pairs: int
    train_images: int
    heldout_images: int
    seconds: float

    def as_json(self) -> dict[str, Any]:
        return {"epoch_losses": [round(x, 6) for x in self.epoch_losses],
                "heldout_spearman": self.heldout_spearman, "heldout_mae": self.heldout_mae,
                "heldout_pairs": self.heldout_pairs,
                "train_images": self.train_images, "heldout_images": self.heldout_images,
                "seconds": round(self.seconds, 2)}


def split_heldout(n: int, fraction: float, seed: int, groups: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): about `fraction` of the images, at least 2 (a correlation needs pairs);
    with `groups` (patient ids) whole groups are held out, so no patient is on both sides."""
    rng = np.random.default_rng(seed)
    if fraction <= 0 or n < 4:
        return np.arange(n), np.zeros(0, np.int64)
    target = max(2, int(round(n * fraction)))
    if groups is None:
        order = rng.permutation(n)
        return np.sort(order[target:]), np.sort(order[:target])
    groups = list(groups)
    held_groups: set[str] = set()
    count = 0
    for group in rng.permutation(np.array(sorted(set(groups)))):
        if count >= target:
            break
        held_groups.add(group)
        count += sum(g == group for g in groups)
    held = np.array([i for i, g in enumerate(groups) if g in held_groups], np.int64)
    kept = np.array([i for i, g in enumerate(groups) if g not in held_groups], np.int64)
    if len(kept) < 2:  # one patient holds almost everything: fall back to no held-out set
        return np.arange(n), np.zeros(0, np.int64)
    return kept, held


@dataclass(frozen=True)
class PairAgreement:
    """How well cosine tracks SSIM on a set of pairs: rank agreement and absolute calibration."""

    spearman: float
    mean_abs_error: float
    pairs: int


def evaluate_on_pairs(model: "DeepSSIMModel", images: np.ndarray, pairs: int, seed: int,
                      same_pair_fraction: float = 0.5) -> PairAgreement:
    """Cosine vs exact SSIM on augmented pairs of `images` (same-image and random pairs, a fixed seed).

    Both numbers matter: the Spearman rank correlation is already high for an untrained network (an image and a
    lightly augmented copy of it embed close whatever the weights), while the mean absolute error shows whether
    the cosine has learned SSIM's scale, which is what training buys."""
    rng = np.random.default_rng(seed)
    anchors = rng.integers(0, len(images), size=pairs)
    partners = anchors.copy()
    random_side = rng.random(pairs) >= same_pair_fraction
    partners[random_side] = rng.integers(0, len(images), size=int(random_side.sum()))
    a, b, target = make_pairs(images, anchors, partners, pair_augmenter(images.ndim - 1, seed))
    cosine = np.sum(model.embed(a) * model.embed(b), axis=1)
    return PairAgreement(float(spearmanr(cosine, target).statistic), float(np.abs(cosine - target).mean()), pairs)


def train_deepssim(images: np.ndarray, epochs: int = 10, seed: int = 0, batch_size: int = 32,
                   same_pair_fraction: float = 0.5, neighbour_pair_fraction: float = 0.0, neighbours: int = 5,
                   lr: float = 1e-3, weight_decay: float = 1e-3,
                   grad_clip: float = 1.0, heldout_fraction: float = 0.1, heldout_pairs: int = 256,
                   groups: Sequence[str] | None = None, config: DeepSSIMConfig | None = None,
                   device: str = "cpu", progress: bool = False,
                   backbone_state: dict[str, torch.Tensor] | None = None) -> tuple[DeepSSIMModel, TrainReport]:
    """Train DeepSSIM on [0, 1] images (N, H, W) or (N, D, H, W). Deterministic for a seed on one device.

    A `heldout_fraction` of the images (of the patients, when `groups` is given) is kept out of training; the
    report gives Spearman(cosine, SSIM) and the mean |cosine - SSIM| on augmented pairs drawn from them. `backbone_state`: optional weights for
    a timm trunk (from a local safetensors file), loaded before training.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim not in (3, 4) or len(images) < 2:
        raise AuditInputError(None, f"DeepSSIM training needs at least 2 images, 2D or 3D; got shape {images.shape}")
    if epochs < 1 or batch_size < 2:
        raise AuditInputError(None, "DeepSSIM training needs epochs >= 1 and batch size >= 2")
    cfg = config or default_config(images.shape[1:])
    train_idx, held_idx = split_heldout(len(images), heldout_fraction, seed, groups)
    train_images = images[train_idx]
    augment = pair_augmenter(cfg.ndim, seed)
    rng = np.random.default_rng(seed)
    neighbour_index = (nearest_neighbours(train_images, neighbours)
                       if neighbour_pair_fraction > 0 and len(train_images) > 2 else None)
    started = time.perf_counter()
    epoch_losses: list[float] = []
    with torch.random.fork_rng(devices=[]):  # seeded init/dropout without touching the caller's RNG
        torch.manual_seed(seed)
        net = build_net(cfg)
        if backbone_state is not None:
            load_state_strict(net.trunk.model, backbone_state, "backbone weights")
        net.to(device)
        optimiser = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
        steps_per_epoch = math.ceil(len(train_images) / batch_size)
        bar = None
        if progress:
            from audit.progress import progress_bar
            bar = progress_bar(total=epochs * steps_per_epoch, desc="deepssim")
        for epoch in range(epochs):
            net.train()
            anchors = rng.permutation(len(train_images))
            partners = sample_partners(len(train_images), rng, same_pair_fraction, neighbour_pair_fraction,
                                       neighbour_index)[anchors]
            total, count = 0.0, 0
            for start in range(0, len(anchors), batch_size):
                a_idx, b_idx = anchors[start:start + batch_size], partners[start:start + batch_size]
                if len(a_idx) < 2:  # BatchNorm needs two samples
                    continue
                a, b, target = make_pairs(train_images, a_idx, b_idx, augment)
                xa = prepare_input(torch.from_numpy(a).unsqueeze(1), cfg).to(device)
                xb = prepare_input(torch.from_numpy(b).unsqueeze(1), cfg).to(device)
                # both sides in one forward pass: BatchNorm sees one batch, as at inference
                emb = net(torch.cat([xa, xb]))
                cosine = (emb[:len(a_idx)] * emb[len(a_idx):]).sum(dim=1)
                loss = F.mse_loss(cosine, torch.from_numpy(target).float().to(device))
                optimiser.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
                optimiser.step()
                total += float(loss.detach()) * len(a_idx)
                count += len(a_idx)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.4f}")
            epoch_losses.append(total / max(count, 1))
        if bar is not None:
            bar.close()
        # BatchNorm statistics averaged over the training images and one augmented view of each (what training saw)
        recalibrate_batchnorm(net, (
            prepare_input(torch.from_numpy(view(train_images[start:start + batch_size])).unsqueeze(1), cfg).to(device)
            for view in (lambda b: b, augment) for start in range(0, len(train_images), batch_size)))
    net.eval().cpu()
    model = DeepSSIMModel(net, cfg, device=device)
    held = None
    if len(held_idx) >= 2:
        held = evaluate_on_pairs(model, images[held_idx], heldout_pairs, seed + 1_000_003)
    report = TrainReport(epoch_losses, held.spearman if held else None, held.mean_abs_error if held else None,
                         held.pairs if held else 0, len(train_idx), len(held_idx), time.perf_counter() - started)
    model.info = {"training": {"epochs": epochs, "seed": seed, "batch_size": batch_size, "lr": lr,
                               "weight_decay": weight_decay, "grad_clip": grad_clip,
                               "same_pair_fraction": same_pair_fraction,
                               "neighbour_pair_fraction": neighbour_pair_fraction, "neighbours": neighbours,
                               **report.as_json()}}
    return model, report


# ----------------------------------------------------------------------------------------------------------------
# checkpoints


def save_deepssim(model: DeepSSIMModel, folder: str | Path) -> Path:
    return save_checkpoint(folder, CHECKPOINT_KIND, model.config.as_json(), model.net.state_dict(), extra=model.info)


def load_deepssim(folder: str | Path, batch_size: int = 64, device: str = "cpu") -> DeepSSIMModel:
    """A DeepSSIM checkpoint folder → model. Foreign, truncated or pickled checkpoints are AuditInputErrors."""
    config, state = load_checkpoint(folder, CHECKPOINT_KIND)
    cfg = DeepSSIMConfig.from_json(config, Path(folder) / "config.json")
    net = build_net(cfg)
    load_state_strict(net, state, folder)
    net.eval()
    return DeepSSIMModel(net, cfg, batch_size=batch_size, device=device, info={"checkpoint": str(folder)})


# ----------------------------------------------------------------------------------------------------------------
# the scorer


class DeepSSIMParams(Params):
    checkpoint: str | None = Field(None, description="DeepSSIM checkpoint folder (audit deepssim train); "
                                                     "None: trained on the training set at fit")
    k: int = Field(10, ge=1, description="training images retrieved by cosine per query and orientation")
    verify: bool = Field(True, description="score = best exact SSIM of the retrieved (else the best cosine)")
    flips: bool = True
    epochs: int = Field(10, ge=1, description="training budget when trained at fit")


class DeepSSIMScorer(ScorerBase):
    """Cosine retrieval of the top-k training images, then (verify=True) exact SSIM of those k pairs.

    score = best exact SSIM among the top-k (verify=True) or the best cosine (verify=False);
    nearest = the training image reaching it. Built from its Params (a checkpoint loads at construction, so a bad
    one fails before any work; without one a model is trained on the training images at `fit` — SSIM targets need
    no labels), or with an injected `model` / `model_builder`.

    flips=True (our extension, as in the voxel scorers): the query is also searched mirrored along each spatial
    axis (2D: 3 orientations, 3D: 4) and its best orientation counts. SSIM is not mirror-invariant, so without
    it a mirrored copy of a training image scores like a stranger.
    """

    name = "deepssim"
    level = "learned (DeepSSIM re-implementation)"
    Params = DeepSSIMParams

    def __init__(self, params: DeepSSIMParams | None = None, runtime: Runtime | None = None, *,
                 model: DeepSSIMModel | None = None,
                 model_builder: Callable[[np.ndarray], DeepSSIMModel] | None = None, verify_batch: int = 256):
        super().__init__(params, runtime)
        if model is not None and model_builder is not None:
            raise ValueError("give at most one of model / model_builder")
        p, rt = self.params, self.runtime
        if model is None and model_builder is None:
            if p.checkpoint is not None:
                if not Path(p.checkpoint).exists():
                    raise AuditInputError(p.checkpoint, "DeepSSIM checkpoint not found")
                model = load_deepssim(p.checkpoint, batch_size=rt.batch_size, device=rt.device)
            else:
                def model_builder(train: np.ndarray) -> DeepSSIMModel:
                    trained, _ = train_deepssim(train, epochs=p.epochs, seed=rt.seed, device=rt.device,
                                                progress=rt.progress)
                    trained.batch_size = rt.batch_size
                    return trained
        self.model = model
        self.model_builder = model_builder
        self.k = p.k
        self.verify = p.verify
        self.flips = p.flips
        self.verify_batch = verify_batch
        self.train: np.ndarray | None = None
        self.train_embeddings: np.ndarray | None = None

    def fit(self, train: np.ndarray) -> "DeepSSIMScorer":
        train = training_array("deepssim", train)
        if self.model_builder is not None:
            self.model = self.model_builder(train)
        self.train = train  # kept for the exact SSIM of the shortlist
        self.train_embeddings = self.model.embed(train)
        return self

    def _score_oriented(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cosine, index = topk_cosine(self.model.embed(queries), self.train_embeddings, self.k)
        if not self.verify:
            return cosine.astype(np.float64), index
        return verify_topk(queries, self.train, index, self.verify_batch), index

    def score(self, queries: np.ndarray) -> ReplicaScores:
        from attacks.replicas.voxel import merge_orientations, orientations

        queries = query_array("deepssim", queries, None if self.train is None else self.train.shape[1:])
        parts = [self._score_oriented(np.ascontiguousarray(np.flip(queries, axis=axes)) if axes else queries)
                 for axes in orientations(queries.ndim - 1, self.flips)]
        return merge_orientations(parts, min(self.k, len(self.train)))

    def components(self) -> dict:
        return {"level": self.level, "score": "best exact SSIM of the top-k" if self.verify else "best cosine",
                "orientations": "as is + mirrored along each axis" if self.flips else "as is",
                "model": self.model.describe() if self.model is not None else "trained at fit"}


def verify_topk(queries: np.ndarray, train: np.ndarray, index: np.ndarray, batch: int = 256) -> np.ndarray:
    """Exact SSIM of every (query, shortlisted training image) pair, (Q, k); memory bounded by `batch` pairs."""
    q_rows = np.repeat(np.arange(len(queries)), index.shape[1])
    t_rows = index.reshape(-1)
    out = np.empty(len(q_rows), np.float64)
    for start in range(0, len(q_rows), batch):
        sl = slice(start, start + batch)
        out[sl] = ssim_pairs(queries[q_rows[sl]], train[t_rows[sl]])
    return out.reshape(index.shape)
