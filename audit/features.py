"""Image encoders by name: embeddings for feature-level replica search (and anything else that needs them).

Two kinds, both offline, registered by name in `ENCODERS` (`audit.registry`: declared parameters, one-line
errors); `make_encoder(spec, ...)` and `encoder_spec(spec, options, runtime)` build them:

- `timm:<model>` — any timm backbone, built with `pretrained=False, in_chans=1, num_classes=0`, whose weights
  come from a LOCAL safetensors file the user names (`--weights PATH`). Nothing is downloaded, ever; a missing
  file is an error telling where to put it; pickled weights (.pt/.pth/.bin) are refused.
- `ssl` (the default) — the suite's own small CNN (2D or 3D), trained self-supervised on the real training set
  with a SimCLR / NT-Xent objective on two augmented views of each image. Used because no medical foundation
  model's weights can be fetched here; it learns invariance to the transformations a copy may undergo (flips,
  shifts up to ~10 %, rotations up to ~10°, gamma, noise, blur), which is what feature-level replica search needs.
  Two additions make its short CPU training usable: its embedding is averaged over the flip group (a mirrored
  copy embeds exactly like the original) and centred on the training images' mean embedding (pooled ReLU
  features are all positive, so without centring every cosine sits near 1).

Every encoder maps float32 [0, 1] images (N, H, W) or (N, D, H, W) to L2-normalised embeddings (N, d), in
batches (memory bounded by the batch size), with per-image z-scoring first (so global brightness/contrast
changes of a copy do not move it). Encoders are `eval()`-mode modules: results do not depend on the batch size.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from audit.checkpoints import load_checkpoint, load_safetensors_file, load_state_strict, save_checkpoint
from audit.errors import AuditInputError
from audit.registry import Params as RegistryParams
from audit.registry import Registry, Runtime

SSL_ENCODER_KIND = "ssl-encoder"


# ----------------------------------------------------------------------------------------------------------------
# pure helpers


def zscore_per_image(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(B, C, *S) → each image to zero mean, unit variance (flat images stay zero): the suite's one z-score
    (`audit.metrics.similarity.zscore`) with the encoders' eps."""
    from audit.metrics.similarity import zscore

    return zscore(x, 1, eps=eps)


def resize_to(x: torch.Tensor, shape: tuple[int, ...] | None) -> torch.Tensor:
    """(B, C, *S) → (B, C, *shape); area/trilinear so that downsizing averages rather than aliases."""
    if shape is None or tuple(x.shape[2:]) == tuple(shape):
        return x
    if all(t <= s for t, s in zip(shape, x.shape[2:])):
        return F.adaptive_avg_pool2d(x, shape) if x.ndim == 4 else F.adaptive_avg_pool3d(x, shape)
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(x, size=tuple(shape), mode=mode, align_corners=False)


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy: view i of an image must pick its other view among 2B-1."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    n = z1.shape[0]
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def recalibrate_batchnorm(module: nn.Module, batches) -> None:
    """Re-estimate every BatchNorm's running statistics as the plain average over `batches` (inputs ready for
    the module), with no gradient. Why: a short CPU training run takes few steps, so the momentum-averaged running
    statistics lag far behind the final weights and eval-mode outputs drift from what training optimised (we saw
    all embeddings collapse towards one direction). Averaging over one pass of the data fixes that."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [(m, m.momentum) for m in norms]
    was_training = module.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # None = cumulative moving average: every batch counts equally
    module.train()
    with torch.no_grad():
        for batch in batches:
            if len(batch) > 1:  # a 1-sample batch has no batch statistics
                module(batch)
    for m, momentum in saved:
        m.momentum = momentum
    module.train(was_training)


# ----------------------------------------------------------------------------------------------------------------
# networks


class ConvTrunk(nn.Module):
    """A small 2D/3D CNN: stages of (conv stride 2, conv stride 1), each Conv-BN-ReLU (the first stage without the
    stride-1 conv). Output: feature maps at 1/2^len(widths) of the input size."""

    def __init__(self, ndim: int, widths: tuple[int, ...] = (16, 32, 64, 128), in_channels: int = 1):
        super().__init__()
        if ndim not in (2, 3):
            raise ValueError("ndim must be 2 or 3")
        conv = nn.Conv2d if ndim == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if ndim == 2 else nn.BatchNorm3d
        layers: list[nn.Module] = []
        previous = in_channels
        for stage, width in enumerate(widths):
            layers += [conv(previous, width, 3, stride=2, padding=1, bias=False), norm(width), nn.ReLU(inplace=True)]
            if stage > 0:  # the full-resolution stage gets one conv only: it dominates the cost on a CPU
                layers += [conv(width, width, 3, stride=1, padding=1, bias=False), norm(width), nn.ReLU(inplace=True)]
            previous = width
        self.body = nn.Sequential(*layers)
        self.ndim = ndim
        self.out_channels = previous

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class GlobalPoolEncoder(nn.Module):
    """Feature maps → global average → minus a centre → (B, C). The SSL encoder's embedding (before the head).

    The centre is the mean embedding of the training images, set after training. Why: pooled ReLU features are
    all positive, so any two images have a cosine near 1 and differences hide in the last decimals; centring
    spreads them over [-1, 1] (a plain form of the whitening copy detectors apply to their descriptors)."""

    def __init__(self, trunk: nn.Module):
        super().__init__()
        self.trunk = trunk
        self.register_buffer("center", torch.zeros(trunk.out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x).flatten(2).mean(dim=2) - self.center


class TimmFeatures(nn.Module):
    """A timm backbone (num_classes=0) exposing pooled features (B, C) from a 1-channel input."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out.flatten(1) if out.ndim > 2 else out


# ----------------------------------------------------------------------------------------------------------------
# the encoder interface


@runtime_checkable
class Encoder(Protocol):
    name: str
    ndim: int

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(N, *S) float32 [0, 1] → (N, d) float32, rows L2-normalised."""
        ...

    def describe(self) -> dict[str, Any]: ...


@dataclass
class TorchEncoder:
    """An nn.Module mapping (B, 1, *S) → (B, d), run in eval mode, in batches, on z-scored inputs."""

    module: nn.Module
    name: str
    ndim: int
    input_shape: tuple[int, ...] | None = None  # resample inputs to this shape first (None: as given)
    batch_size: int = 64
    device: str = "cpu"
    info: dict[str, Any] = field(default_factory=dict)
    # Average the embeddings of the image under every combination of axis flips (4 in 2D, 8 in 3D), so that a
    # mirrored copy embeds exactly like the original: a flipped copy is still a copy, and a short CPU training run
    # does not learn that invariance reliably (top-1 retrieval of flipped copies was 1/4 without it in our tests).
    flip_invariant: bool = False

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if not self.flip_invariant:
            return F.normalize(self.module(batch).float(), dim=1)
        axes = range(2, batch.ndim)
        total = 0
        for mask in range(2 ** len(axes)):
            flip_dims = [axis for bit, axis in enumerate(axes) if mask >> bit & 1]
            view = batch.flip(flip_dims) if flip_dims else batch
            total = total + F.normalize(self.module(view).float(), dim=1)
        return F.normalize(total, dim=1)

    def embed(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != self.ndim + 1:
            raise AuditInputError(None, f"encoder '{self.name}' takes {self.ndim}D images, got shape "
                                        f"{tuple(images.shape[1:])}")
        self.module.eval().to(self.device)
        chunks = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                batch = torch.from_numpy(images[start:start + self.batch_size]).unsqueeze(1).to(self.device)
                batch = zscore_per_image(resize_to(batch, self.input_shape))
                chunks.append(self._forward(batch).cpu())
        if not chunks:
            return np.zeros((0, self.dim), np.float32)
        return torch.cat(chunks).numpy()

    @property
    def dim(self) -> int:
        return int(self.info.get("dim", 0))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "ndim": self.ndim, "input_shape": self.input_shape,
                "flip_invariant": self.flip_invariant, **self.info}


# ----------------------------------------------------------------------------------------------------------------
# augmentations for the two views (2D: albumentations; 3D: batched torch affine + intensity ops)


def ssl_augment_2d(seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """A 2D view-maker: flips, shift ≤ 10 %, rotation ≤ 10°, scale ±10 %, gamma, noise, blur (albumentations)."""
    import albumentations as A

    compose = A.Compose([
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.Affine(translate_percent=(-0.1, 0.1), rotate=(-10, 10), scale=(0.9, 1.1), border_mode=0, fill=0, p=0.8),
        A.RandomGamma(gamma_limit=(70, 140), p=0.5),
        A.GaussianBlur(blur_limit=(3, 5), p=0.3),
        A.GaussNoise(std_range=(0.01, 0.05), p=0.3),
    ], seed=seed)

    def augment(batch: np.ndarray) -> np.ndarray:
        return np.stack([np.clip(compose(image=img)["image"], 0, 1) for img in batch]).astype(np.float32)

    return augment


def random_affine(x: torch.Tensor, generator: torch.Generator, flip_p: float = 0.5, max_rotation_deg: float = 10.0,
                  max_shift: float = 0.1, scale_range: tuple[float, float] = (0.9, 1.1)) -> torch.Tensor:
    """Batched random flips/rotation/shift/scale of (B, 1, *S), 2D or 3D, zero fill outside the image."""
    b, nd = x.shape[0], x.ndim - 2

    def uniform(*shape, low=-1.0, high=1.0):
        return low + (high - low) * torch.rand(*shape, generator=generator)

    angles = uniform(b, 3) * math.radians(max_rotation_deg)
    rotation = torch.eye(nd).repeat(b, 1, 1)
    planes = [(0, 1)] if nd == 2 else [(0, 1), (0, 2), (1, 2)]
    for axis, (i, j) in enumerate(planes):
        r = torch.eye(nd).repeat(b, 1, 1)
        c, s = torch.cos(angles[:, axis]), torch.sin(angles[:, axis])
        r[:, i, i], r[:, i, j], r[:, j, i], r[:, j, j] = c, -s, s, c
        rotation = rotation @ r
    flips = torch.where(torch.rand(b, nd, generator=generator) < flip_p, -1.0, 1.0)
    scale = uniform(b, 1, low=scale_range[0], high=scale_range[1])
    matrix = rotation * flips.unsqueeze(1) / scale.unsqueeze(2)
    shift = uniform(b, nd) * 2 * max_shift  # grid coordinates span [-1, 1]: 10 % of a side = 0.2
    theta = torch.cat([matrix, shift.unsqueeze(2)], dim=2).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_gamma(x: torch.Tensor, generator: torch.Generator, low: float = 0.7, high: float = 1.4,
                 p: float = 0.5) -> torch.Tensor:
    """Per-image gamma on [0, 1] images with probability p."""
    b = x.shape[0]
    gamma = low + (high - low) * torch.rand(b, generator=generator)
    gamma = torch.where(torch.rand(b, generator=generator) < p, gamma, torch.ones(b))
    return x.clamp(0, 1) ** gamma.view(b, *([1] * (x.ndim - 1))).to(x.dtype)


def ssl_augment_3d(seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """A 3D view-maker (torch ops, batched): flips, rotation ≤ 10°, shift ≤ 10 %, scale, gamma, noise."""
    generator = torch.Generator().manual_seed(seed)

    def augment(batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.asarray(batch, np.float32)).unsqueeze(1)
        x = random_gamma(random_affine(x, generator), generator)
        noisy = torch.rand(x.shape[0], generator=generator) < 0.3
        noise = torch.randn(x.shape, generator=generator) * 0.03 * noisy.view(-1, 1, 1, 1, 1)
        return (x + noise).clamp(0, 1).squeeze(1).numpy()

    return augment


# ----------------------------------------------------------------------------------------------------------------
# the self-supervised encoder


@dataclass(frozen=True)
class SSLConfig:
    ndim: int
    input_shape: tuple[int, ...]
    widths: tuple[int, ...] = (16, 32, 64)
    projection_dim: int = 64
    temperature: float = 0.1
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 0
    flip_invariant: bool = True

    def as_json(self) -> dict[str, Any]:
        return {"ndim": self.ndim, "input_shape": list(self.input_shape), "widths": list(self.widths),
                "projection_dim": self.projection_dim, "temperature": self.temperature, "epochs": self.epochs,
                "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed,
                "flip_invariant": self.flip_invariant}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SSLConfig":
        return cls(ndim=int(data["ndim"]), input_shape=tuple(data["input_shape"]), widths=tuple(data["widths"]),
                   projection_dim=int(data["projection_dim"]), temperature=float(data["temperature"]),
                   epochs=int(data["epochs"]), batch_size=int(data["batch_size"]), lr=float(data["lr"]),
                   seed=int(data["seed"]), flip_invariant=bool(data["flip_invariant"]))


def build_ssl_backbone(cfg: SSLConfig) -> GlobalPoolEncoder:
    return GlobalPoolEncoder(ConvTrunk(cfg.ndim, cfg.widths))


def train_ssl_encoder(images: np.ndarray, epochs: int = 10, seed: int = 0, batch_size: int = 64,
                      widths: tuple[int, ...] = (16, 32, 64), temperature: float = 0.1, lr: float = 3e-3,
                      flip_invariant: bool = True, device: str = "cpu", progress: bool = False) -> TorchEncoder:
    """Train the small CNN with NT-Xent on two augmented views of every training image. Deterministic per seed.

    images: (N, H, W) or (N, D, H, W) float32 [0, 1], N ≥ 2. Returns the encoder (backbone only; the projection
    head is discarded after training, as in SimCLR, because the backbone features transfer better).
    """
    images = np.asarray(images, dtype=np.float32)
    ndim = images.ndim - 1
    if ndim not in (2, 3) or len(images) < 2:
        raise AuditInputError(None, f"SSL encoder needs at least 2 images of 2D or 3D shape, got {images.shape}")
    cfg = SSLConfig(ndim=ndim, input_shape=tuple(images.shape[1:]), widths=tuple(widths), temperature=temperature,
                    epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, flip_invariant=flip_invariant)
    augment = (ssl_augment_2d if ndim == 2 else ssl_augment_3d)
    view_a, view_b = augment(seed), augment(seed + 1)
    order_rng = np.random.default_rng(seed)
    started = time.perf_counter()
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]):  # seed the weights without touching the caller's global RNG
        torch.manual_seed(seed)
        backbone = build_ssl_backbone(cfg)
        width = backbone.trunk.out_channels
        head = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, cfg.projection_dim))
        model = nn.Sequential(backbone, head).to(device)
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
        bar = None
        if progress:
            from audit.progress import progress_bar
            bar = progress_bar(total=epochs * math.ceil(len(images) / batch_size), desc="ssl encoder")
        model.train()
        for _ in range(epochs):
            order = order_rng.permutation(len(images))
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                if len(idx) < 2:  # a 1-image batch has no negatives (and breaks BatchNorm)
                    continue
                batch = images[idx]
                xa = zscore_per_image(torch.from_numpy(view_a(batch)).unsqueeze(1)).to(device)
                xb = zscore_per_image(torch.from_numpy(view_b(batch)).unsqueeze(1)).to(device)
                loss = nt_xent_loss(model(xa), model(xb), temperature)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                losses.append(float(loss.detach()))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if bar is not None:
            bar.close()
        recalibrate_batchnorm(backbone, (
            zscore_per_image(torch.from_numpy(view(images[start:start + batch_size])).unsqueeze(1)).to(device)
            for view in (lambda b: b, view_a) for start in range(0, len(images), batch_size)))
    backbone.eval()
    with torch.no_grad():
        backbone.center.zero_()
        pooled = [backbone(zscore_per_image(torch.from_numpy(images[s:s + batch_size]).unsqueeze(1)).to(device))
                  for s in range(0, len(images), batch_size)]
        backbone.center.copy_(torch.cat(pooled).mean(dim=0))
    info = {"kind": "ssl", "dim": backbone.trunk.out_channels, "train_images": int(len(images)),
            "config": cfg.as_json(), "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None, "train_seconds": round(time.perf_counter() - started, 2)}
    return TorchEncoder(backbone.cpu(), name="ssl", ndim=ndim, input_shape=cfg.input_shape, device=device, info=info,
                        flip_invariant=flip_invariant)


def save_ssl_encoder(encoder: TorchEncoder, folder: str | Path) -> Path:
    return save_checkpoint(folder, SSL_ENCODER_KIND, encoder.info["config"], encoder.module.state_dict(),
                           extra={k: v for k, v in encoder.info.items() if k != "config"})


def load_ssl_encoder(folder: str | Path, batch_size: int = 64, device: str = "cpu") -> TorchEncoder:
    config, state = load_checkpoint(folder, SSL_ENCODER_KIND)
    return ssl_encoder_from(config, state, batch_size=batch_size, device=device, where=folder,
                            info={"checkpoint": str(folder)})


def ssl_encoder_from(config: dict[str, Any], state: dict[str, torch.Tensor], batch_size: int = 64,
                     device: str = "cpu", where: str | Path | None = None,
                     info: dict[str, Any] | None = None) -> TorchEncoder:
    """The SSL encoder of a config (`SSLConfig.as_json`) and a backbone state dict, loaded strictly."""
    try:
        cfg = SSLConfig.from_json(config)
    except (KeyError, TypeError, ValueError) as err:
        raise AuditInputError(where, f"checkpoint config is incomplete ({err})") from None
    backbone = build_ssl_backbone(cfg)
    load_state_strict(backbone, state, where)
    backbone.eval()
    info = {"kind": "ssl", "dim": backbone.trunk.out_channels, "config": cfg.as_json(), **(info or {})}
    return TorchEncoder(backbone, name="ssl", ndim=cfg.ndim, input_shape=cfg.input_shape, batch_size=batch_size,
                        device=device, info=info, flip_invariant=cfg.flip_invariant)


# ----------------------------------------------------------------------------------------------------------------
# timm backbones from local weights


def adapt_state_to_model(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Make an ImageNet-style state dict fit a 1-channel, headless model: drop classifier tensors the headless
    model does not have, and sum RGB stem filters into one channel (timm's own recipe for in_chans=1)."""
    from timm.models import adapt_input_conv

    own = model.state_dict()
    classifier = getattr(model, "default_cfg", {}).get("classifier", "")
    classifier = classifier if isinstance(classifier, str) else ""
    adapted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key not in own and classifier and key.startswith(classifier + "."):
            continue  # the head of a classifier checkpoint; num_classes=0 has no head
        if key in own and tensor.ndim == own[key].ndim >= 3 and tensor.shape[1] == 3 and own[key].shape[1] == 1:
            tensor = adapt_input_conv(1, tensor)
        adapted[key] = tensor
    return adapted


def timm_encoder(model_name: str, weights: str | Path | None, batch_size: int = 64, device: str = "cpu",
                 input_shape: tuple[int, int] | None = None, flip_invariant: bool = False) -> TorchEncoder:
    """A timm backbone with weights from a local safetensors file. pretrained=False: nothing is downloaded."""
    import timm

    if weights is None:
        raise AuditInputError(None, f"encoder 'timm:{model_name}' needs --weights PATH: a local safetensors file "
                                    f"of that backbone (nothing is downloaded)")
    weights = Path(weights)
    if not weights.is_file():
        raise AuditInputError(weights, f"weights for timm backbone '{model_name}' not found; put a safetensors "
                                       f"file of that model there (e.g. exported with safetensors.torch.save_file "
                                       f"from a machine with internet access); nothing is downloaded")
    try:
        model = timm.create_model(model_name, pretrained=False, in_chans=1, num_classes=0)
    except (RuntimeError, ValueError) as err:  # unknown model name
        raise AuditInputError(None, f"unknown timm model '{model_name}' ({err})") from None
    state = adapt_state_to_model(load_safetensors_file(weights), model)
    load_state_strict(model, state, weights)
    module = TimmFeatures(model).eval()
    info = {"kind": "timm", "model": model_name, "weights": str(weights), "dim": int(model.num_features)}
    return TorchEncoder(module, name=f"timm:{model_name}", ndim=2, input_shape=input_shape, batch_size=batch_size,
                        device=device, info=info, flip_invariant=flip_invariant)


# ----------------------------------------------------------------------------------------------------------------
# registry: encoders by name (the suite's one registry pattern, `audit.registry`)


class SSLEncoderSpec:
    """``ssl``: the suite's self-supervised CNN — loaded from a checkpoint folder (`weights`), or trained on the
    training images it is given (`build(train_images)`) with the declared budget."""

    class Params(RegistryParams):
        weights: str | None = Field(None, description="a saved SSL checkpoint folder (save_ssl_encoder)")
        epochs: int = Field(40, ge=1, description="training epochs when no weights are given (40: what helped on "
                                                  "the replica benchmark's tuning split; docs/replicas.md)")
        widths: tuple[int, ...] = Field((16, 32, 64), min_length=1, description="channels per CNN stage")
        temperature: float = Field(0.1, gt=0)
        lr: float = Field(3e-3, gt=0)
        flip_invariant: bool = True

    def __init__(self, params: "SSLEncoderSpec.Params", runtime: Runtime):
        self.params, self.runtime = params, runtime
        if params.weights is not None and not Path(params.weights).exists():
            raise AuditInputError(params.weights, "SSL encoder checkpoint not found")

    @property
    def needs_training(self) -> bool:
        return self.params.weights is None

    def build(self, train_images: np.ndarray | None = None) -> TorchEncoder:
        p, rt = self.params, self.runtime
        if p.weights is not None:
            return load_ssl_encoder(p.weights, batch_size=rt.batch_size, device=rt.device)
        if train_images is None:
            raise AuditInputError(None, "the 'ssl' encoder is trained on the training images: none were given")
        encoder = train_ssl_encoder(train_images, epochs=p.epochs, seed=rt.seed, widths=tuple(p.widths),
                                    temperature=p.temperature, lr=p.lr, flip_invariant=p.flip_invariant,
                                    device=rt.device, progress=rt.progress)
        encoder.batch_size = rt.batch_size
        return encoder


class TimmEncoderSpec:
    """``timm``: a timm backbone (`model`) with weights from a local safetensors file (`weights`, required)."""

    class Params(RegistryParams):
        model: str = Field(..., min_length=1, description="timm model name, e.g. resnet18")
        weights: str | None = Field(None, description="local safetensors file of that backbone")
        input_side: int | None = Field(None, ge=8, description="resample inputs to this side first (None: as given)")
        flip_invariant: bool = False

    needs_training = False

    def __init__(self, params: "TimmEncoderSpec.Params", runtime: Runtime):
        self.params, self.runtime = params, runtime
        self.encoder = self.build()  # weights are local files: load now, so a missing file fails before any work

    def build(self, train_images: np.ndarray | None = None) -> TorchEncoder:
        if getattr(self, "encoder", None) is not None:
            return self.encoder
        p, rt = self.params, self.runtime
        shape = (p.input_side, p.input_side) if p.input_side else None
        return timm_encoder(p.model, p.weights, batch_size=rt.batch_size, device=rt.device, input_shape=shape,
                            flip_invariant=p.flip_invariant)


ENCODERS: Registry = Registry("encoder")
ENCODERS.register("ssl", SSLEncoderSpec, "self-supervised CNN trained on the training set (or loaded)")
ENCODERS.register("timm", TimmEncoderSpec, "timm backbone with weights from a local safetensors file")


def parse_encoder_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """'ssl' → ('ssl', {}); 'timm:resnet18' → ('timm', {'model': 'resnet18'}). Unknown names are input errors."""
    kind, sep, arg = spec.partition(":")
    if kind == "timm":
        if not arg:
            raise AuditInputError(None, f"unknown encoder '{spec}' (known: ssl, timm:<model name>)")
        return "timm", {"model": arg}
    if sep or kind not in ENCODERS:
        raise AuditInputError(None, f"unknown encoder '{spec}' (known: ssl, timm:<model name>)")
    return kind, {}


def encoder_spec(spec: str, options: dict[str, Any] | None = None, runtime: Runtime | None = None):
    """The validated encoder component of `spec` ('ssl', 'timm:<model>') with its options; `.build(train_images)`
    makes the encoder (`needs_training` says whether it wants them)."""
    name, base = parse_encoder_spec(spec)
    return ENCODERS.create(name, {**base, **(options or {})}, runtime or Runtime())


def make_encoder(spec: str = "ssl", *, train_images: np.ndarray | None = None, weights: str | Path | None = None,
                 epochs: int = 10, seed: int = 0, batch_size: int = 64, device: str = "cpu",
                 progress: bool = False) -> TorchEncoder:
    """An encoder by name (a thin call of the `ENCODERS` registry).

    - "ssl": with `weights` = a saved SSL checkpoint folder, load it; otherwise train it on `train_images`.
    - "timm:<model>": a timm backbone whose weights load from the local safetensors file `weights`.
    """
    name, _ = parse_encoder_spec(spec)
    options: dict[str, Any] = {"weights": None if weights is None else str(weights)}
    if name == "ssl":
        options["epochs"] = epochs
    runtime = Runtime(device=device, batch_size=batch_size, seed=seed, progress=progress)
    return encoder_spec(spec, options, runtime).build(train_images)


# ----------------------------------------------------------------------------------------------------------------
# nearest neighbours of embeddings


def topk_cosine(queries: np.ndarray, references: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k cosine neighbours (scores (Q, k) descending, indices (Q, k)), chunked by `audit.search`."""
    from audit.search import topk_similarity

    return topk_similarity(queries, references, k=k, metric="cosine")
