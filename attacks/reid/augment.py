"""Training augmentations of the re-identification attacker: albumentations in 2D, MONAI in 3D.

Identity must survive what differs between two images of one patient (pose, positioning, exposure, noise), so
the network is shown those variations: small shifts, rotations and scalings, gamma/contrast, noise, a little blur.
No flips: the data layer already brings every breast to one orientation, and a left and a right breast are two
different images of one patient that the network should learn to link, not a flip of each other.

Augmenters are seeded (albumentations' `Compose(seed=...)`, MONAI's `set_random_state`) and never touch global
random state, so a training run is a function of its seed.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

Augmenter = Callable[[np.ndarray], np.ndarray]  # (B, *S) float32 [0, 1] → same shape, float32 [0, 1]
AUGMENTATIONS = ("default", "strong", "none")


def identity(batch: np.ndarray) -> np.ndarray:
    return np.asarray(batch, dtype=np.float32)


def augment_2d(seed: int, strong: bool = False, rotation: float = 15.0, generator_blur: float = 0.0) -> Augmenter:
    """`rotation`: largest rotation in degrees; `generator_blur` > 0 adds, half of the time, a Gaussian blur of
    σ up to that many pixels — the low-pass a generator's autoencoder and sampler apply (a memorising latent
    diffusion model's copies keep a training image's layout but lose half its power at mid and high frequencies,
    so an attacker that keys on fine texture does not recognise them)."""
    import albumentations as A

    smoothing = [A.GaussianBlur(blur_limit=0, sigma_limit=(0.3, generator_blur), p=0.5)] if generator_blur > 0 else []
    extra = [A.GridDistortion(num_steps=4, distort_limit=0.15, border_mode=0, fill=0, p=0.5),
             A.CoarseDropout(num_holes_range=(1, 3), hole_height_range=(0.15, 0.35), hole_width_range=(0.15, 0.35),
                             fill=0, p=0.5)] if strong else []
    compose = A.Compose([*extra,
        A.Affine(translate_percent=(-0.08, 0.08), rotate=(-rotation, rotation), scale={"x": (0.85, 1.15), "y": (0.8, 1.3)},
                 border_mode=0, fill=0, p=0.9),
        A.RandomGamma(gamma_limit=(75, 135), p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.15, p=0.5),
        A.GaussianBlur(blur_limit=(3, 3), p=0.2),
        *smoothing,
        A.GaussNoise(std_range=(0.005, 0.03), p=0.3),
    ], seed=seed)

    def augment(batch: np.ndarray) -> np.ndarray:
        return np.stack([np.clip(compose(image=np.asarray(img, np.float32))["image"], 0, 1)
                         for img in batch]).astype(np.float32)

    return augment


def augment_3d(seed: int) -> Augmenter:
    from monai.transforms import Compose, RandAdjustContrast, RandAffine, RandGaussianNoise

    compose = Compose([
        RandAffine(prob=0.8, rotate_range=(0.14, 0.14, 0.14), translate_range=(2, 2, 2), scale_range=(0.08,) * 3,
                   padding_mode="zeros"),
        RandAdjustContrast(prob=0.5, gamma=(0.75, 1.35)),
        RandGaussianNoise(prob=0.3, std=0.02),
    ])
    compose.set_random_state(seed=seed)

    def augment(batch: np.ndarray) -> np.ndarray:
        out = [np.asarray(compose(np.asarray(vol, np.float32)[None]))[0] for vol in batch]
        return np.clip(np.stack(out), 0, 1).astype(np.float32)

    return augment


def make_augmenter(name: str, ndim: int, seed: int, rotation: float = 15.0, generator_blur: float = 0.0
                   ) -> Augmenter:
    """`rotation` and `generator_blur` apply to 2D (see `augment_2d`); 3D keeps its own small affine."""
    if name == "none":
        return identity
    if name in ("default", "strong"):
        if ndim == 2:
            return augment_2d(seed, strong=name == "strong", rotation=rotation, generator_blur=generator_blur)
        return augment_3d(seed)
    raise ValueError(f"unknown augmentation '{name}' (known: {', '.join(AUGMENTATIONS)})")
