"""Synthetic test images shared by the learned-scorer tests."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def structured_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Distinct images with an organ-like outline, coarse anatomy and fine texture, float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    out = []
    for _ in range(n):
        coarse = gaussian_filter(rng.standard_normal(shape), sigma=shape[0] / 8)
        fine = gaussian_filter(rng.standard_normal(shape), sigma=1.0)
        radii = rng.uniform(0.6, 0.95, len(shape))
        inside = sum((g / r) ** 2 for g, r in zip(grid, radii)) < 1
        image = (0.5 + 0.15 * coarse / coarse.std() + 0.05 * fine / fine.std()) * inside
        out.append(np.clip(image, 0, 1))
    return np.stack(out).astype(np.float32)
