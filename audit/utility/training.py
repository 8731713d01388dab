"""One training recipe and budget for every arm of the utility comparison (TSTR, TRTR, mixed).

The budget is a number of optimizer steps of a fixed batch size — not epochs — so that arms whose training
sets differ in size get the same compute, and none wins by seeing more updates. Batches are class-balanced
(each image drawn with probability ∝ 1 / its class's count), because the clinical targets are rare (BI-RADS ≥ 4
is ~15 % of images) and an AUC needs the rare class learnt. Augmentation: albumentations in 2D (affine:
shift ≤ 5 %, rotation ≤ 10°, scale ±10 %; no flips — mammograms are stored one way round), MONAI in 3D (flips on
every axis, the same affine). AdamW with a cosine learning-rate decay after a 5 % warm-up. After the last step
the BatchNorm running statistics are re-estimated on the un-augmented training images
(`audit.features.recalibrate_batchnorm`): a short run leaves them lagging behind the weights.

Everything random (initial weights, batches, augmentations, dropout) comes from the seed: a run is repeatable
on CPU. Predictions are made in eval mode, so they do not depend on the prediction batch size.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from audit.registry import Params
from audit.utility.data import LabelledSet

PRELOAD_LIMIT_BYTES = 1 << 30  # training sets up to 1 GiB of float32 pixels are decoded once and kept in memory


class Recipe(Params):
    """The classifier and its training budget: identical for every arm of one comparison."""

    classifier: str = "auto"  # auto: timm (2D) / monai_resnet (3D)
    classifier_options: dict[str, Any] = Field(default_factory=dict)
    steps: int = Field(300, ge=1)  # optimizer steps (the budget)
    batch_size: int = Field(32, ge=2)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    augment: bool = True
    balanced_batches: bool = True
    # resample inputs by this factor inside the network (e.g. 2: 64² images enter an ImageNet-style stem, which
    # divides the size by 4 before the first block, as 128²)
    input_scale: float = Field(1.0, gt=0, le=4)


def input_transform(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] → [-1, 1], a fixed map (no per-image normalisation: absolute intensity is part of what a
    synthetic set must get right, e.g. breast density)."""
    return images * 2.0 - 1.0


class ScaledInput(nn.Module):
    """A network whose inputs are resampled by a fixed factor first (part of the model, so prediction needs no
    knowledge of the recipe)."""

    def __init__(self, net: nn.Module, scale: float):
        super().__init__()
        self.net = net
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = "bilinear" if x.ndim == 4 else "trilinear"
        return self.net(F.interpolate(x, scale_factor=self.scale, mode=mode, align_corners=False))


def build_network(classifier, n_classes: int, input_scale: float) -> nn.Module:
    net = classifier.build(n_classes)
    return net if input_scale == 1.0 else ScaledInput(net, input_scale)


def augmenter(ndim: int, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """(B, *S) float32 [0, 1] → augmented batch; its own RNG seeded by `seed` (global seeds are ignored)."""
    if ndim == 2:
        import albumentations as A

        compose = A.Compose([A.Affine(translate_percent=(-0.05, 0.05), rotate=(-10, 10), scale=(0.9, 1.1),
                                      border_mode=0, fill=0, p=0.8)], seed=seed)

        def augment_2d(batch: np.ndarray) -> np.ndarray:
            return np.stack([np.clip(compose(image=img)["image"], 0, 1) for img in batch]).astype(np.float32)

        return augment_2d

    from monai.transforms import Compose, RandAffine, RandFlip

    compose = Compose([RandFlip(prob=0.5, spatial_axis=0), RandFlip(prob=0.5, spatial_axis=1),
                       RandFlip(prob=0.5, spatial_axis=2),
                       RandAffine(prob=0.8, rotate_range=(math.radians(10),) * 3, translate_range=(1.6,) * 3,
                                  scale_range=(0.1,) * 3, padding_mode="zeros")])
    compose.set_random_state(seed=seed)

    def augment_3d(batch: np.ndarray) -> np.ndarray:
        out = [np.asarray(compose(img[None]), dtype=np.float32)[0] for img in batch]
        return np.clip(np.stack(out), 0, 1).astype(np.float32)

    return augment_3d


def batch_indices(labels: np.ndarray, n_classes: int, steps: int, batch_size: int, balanced: bool,
                  seed: int) -> list[np.ndarray]:
    """The training batches of a run. Balanced: each image drawn with probability ∝ 1/(its class's count);
    otherwise successive shuffled passes over the set."""
    rng = np.random.default_rng([int(seed), 1])
    n = len(labels)
    if balanced:
        counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
        weights = 1.0 / counts[labels]
        weights /= weights.sum()
        return [rng.choice(n, size=batch_size, replace=True, p=weights) for _ in range(steps)]
    order: list[int] = []
    batches = []
    for _ in range(steps):
        while len(order) < batch_size:
            order.extend(rng.permutation(n).tolist())
        batches.append(np.asarray(order[:batch_size]))
        del order[:batch_size]
    return batches


def cosine_with_warmup(steps: int, warmup_fraction: float = 0.05) -> Callable[[int], float]:
    warmup = max(1, int(round(steps * warmup_fraction)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class ImageSource:
    """Images of a labelled set by index: decoded once and kept when the set is small, else loaded per batch."""

    def __init__(self, data: LabelledSet, shape: tuple[int, ...]):
        self.data = data
        size = len(data) * int(np.prod(shape)) * 4
        self.images = data.load_many(range(len(data))) if 0 < size <= PRELOAD_LIMIT_BYTES else None

    def __call__(self, indices) -> np.ndarray:
        if self.images is not None:
            return self.images[np.asarray(indices, dtype=np.int64)]
        return self.data.load_many(indices)


def plain_batches(source: ImageSource, n: int, batch_size: int, device: str):
    """The training images once, in order, un-augmented, ready for the network."""
    for start in range(0, n, batch_size):
        images = source(range(start, min(start + batch_size, n)))
        yield input_transform(torch.from_numpy(images).unsqueeze(1).to(device))


def train_classifier(data: LabelledSet, recipe: Recipe, classifier, shape: tuple[int, ...], seed: int = 0,
                     device: str = "cpu", progress: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A classifier trained on `data` with the recipe's budget; returns it in eval mode and a training log."""
    from audit.features import recalibrate_batchnorm
    from audit.progress import progress_bar

    if len(data) == 0:
        raise ValueError(f"{data.name}: no labelled images to train on")
    started = time.perf_counter()
    source = ImageSource(data, shape)
    batches = batch_indices(data.y, data.n_classes, recipe.steps, recipe.batch_size, recipe.balanced_batches, seed)
    augment = augmenter(len(shape), seed) if recipe.augment else None
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # initial weights and dropout; restored for the caller afterwards
        model = build_network(classifier, data.n_classes, recipe.input_scale).to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(recipe.steps))
        model.train()
        bar = progress_bar(total=recipe.steps, desc=progress) if progress else None
        for indices in batches:
            images = source(indices)
            if augment is not None:
                images = augment(images)
            x = input_transform(torch.from_numpy(images).unsqueeze(1).to(device))
            y = torch.from_numpy(data.y[indices]).to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if bar is not None:
            bar.close()
        recalibrate_batchnorm(model, plain_batches(source, len(data), recipe.batch_size, device))
    model.eval()
    log = {"steps": recipe.steps, "images": len(data), "loss_first_20": float(np.mean(losses[:20])),
           "loss_last_20": float(np.mean(losses[-20:])), "seconds": round(time.perf_counter() - started, 1)}
    return model, log


def predict_probabilities(model: nn.Module, data: LabelledSet, batch_size: int = 64, device: str = "cpu",
                          progress: str | None = None) -> np.ndarray:
    """(N, n_classes) float64 class probabilities (softmax of the logits), eval mode, in batches."""
    from audit.progress import progress_bar

    model.eval().to(device)
    out = []
    bar = progress_bar(total=len(data), desc=progress) if progress else None
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            indices = range(start, min(start + batch_size, len(data)))
            x = input_transform(torch.from_numpy(data.load_many(indices)).unsqueeze(1).to(device))
            out.append(torch.softmax(model(x).double(), dim=1).cpu().numpy())
            if bar is not None:
                bar.update(len(indices))
    if bar is not None:
        bar.close()
    return np.concatenate(out) if out else np.zeros((0, data.n_classes))
