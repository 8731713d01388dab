"""Procedural noise fields shared by the phantom makers: power-law (1/f^β) Gaussian fields and smooth warps.

All fields are made with numpy FFTs (periodic by construction), so sampling them with wrap-around never shows a
seam and no per-pixel Python loop is needed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def power_law_noise(shape: tuple[int, ...], beta: float, rng: np.random.Generator,
                    low_cut: float = 0.0) -> np.ndarray:
    """A periodic Gaussian random field whose power spectrum falls as 1/f^beta; zero mean, unit std, float32.

    `low_cut` (cycles per sample) flattens the spectrum below that frequency, so that with a steep beta (≈3,
    the exponent measured for mammographic parenchyma) one or two huge blobs do not swallow all the structure.
    """
    freqs = [np.fft.fftfreq(n) for n in shape[:-1]] + [np.fft.rfftfreq(shape[-1])]
    grids = np.meshgrid(*freqs, indexing="ij", sparse=True)
    f_squared = sum(g.astype(np.float64) ** 2 for g in grids) + low_cut ** 2
    with np.errstate(divide="ignore"):
        amplitude = f_squared ** (-beta / 4.0)  # power ∝ f^-β → amplitude ∝ (f²)^(-β/4)
    amplitude.flat[0] = 0.0  # no DC: the mean is set below
    spectrum_shape = amplitude.shape
    spectrum = (rng.standard_normal(spectrum_shape) + 1j * rng.standard_normal(spectrum_shape)) * amplitude
    field = np.fft.irfftn(spectrum, s=shape, axes=tuple(range(len(shape))))
    field -= field.mean()
    std = field.std()
    return (field / std if std > 0 else field).astype(np.float32)


def sample_periodic(field: np.ndarray, coords: list[np.ndarray] | np.ndarray) -> np.ndarray:
    """Bilinear/trilinear sample of a periodic field at fractional index coordinates (one array per axis)."""
    return ndimage.map_coordinates(field, coords, order=1, mode="grid-wrap").astype(np.float32)


def smooth_displacement(shape: tuple[int, int], amplitude: float, rng: np.random.Generator,
                        waves: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A smooth 2D displacement field (rows, cols), each a sum of a few random low-frequency plane waves.

    Used to make the CC and MLO views different warps of the same breast texture; `amplitude` is the largest
    displacement in pixels.
    """
    h, w = shape
    r = np.arange(h, dtype=np.float32)[:, None] / h
    c = np.arange(w, dtype=np.float32)[None, :] / w
    out = []
    for _ in range(2):
        d = np.zeros((h, w), np.float32)
        for _ in range(waves):
            fr, fc = rng.uniform(0.3, 1.5, size=2) * rng.choice([-1, 1], size=2)
            phase = rng.uniform(0, 2 * np.pi)
            # sin(x + y) = sin x cos y + cos x sin y: two outer products instead of a full-size sin.
            x = (2 * np.pi * fr * r).astype(np.float32)
            y = (2 * np.pi * fc * c + phase).astype(np.float32)
            d += np.sin(x) * np.cos(y) + np.cos(x) * np.sin(y)
        out.append(d * (amplitude / waves))
    return out[0], out[1]
