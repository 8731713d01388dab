"""`radiomics`: weight-free, deterministic hand-crafted features in 2D and 3D, in the spirit of the Fréchet
Radiomics Distance (FRD; Konz, Osuala et al. 2024).

Per image, on the original intensities and on scale-normalised Laplacian-of-Gaussian responses σ²·∇²(G_σ * I)
(scipy.ndimage, σ in pixels/voxels): first-order statistics, GLCM properties per distance and GLRLM statistics
(see `audit.extractors.texture`). Texture classes quantise to `levels` fixed bins over a fixed range ([0, 1] for the
original, ±`log_range` for LoG responses), so a level means the same intensity in every image and the features of
one image never depend on another. FRD v1 also uses GLSZM, NGTDM and wavelet-filtered images (~464 features) from
pyradiomics, which does not install here; this is a smaller set of the same kind (33 features per filtered image:
11 first-order, 7 GLCM properties × 2 distances, 8 GLRLM; 132 with the three default LoG scales).

Features are z-scored against the reference (real) set before any metric, as FRD does: their scales are unrelated
(a kurtosis and a grey-level variance), and an unscaled Fréchet distance would be a distance in whichever feature
has the largest numbers. Volumes are native 3D by default (13-direction GLCM/GLRLM, 3D LoG); `volume: planes` takes
them as 2.5D instead.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.ndimage import gaussian_laplace

from audit.extractors.base import FeatureExtractor, VolumeParams
from audit.extractors.texture import (
    FIRST_ORDER_NAMES, GLCM_PROPS, GLRLM_NAMES, first_order, glcm_features, glrlm_features, quantise,
)


class RadiomicsParams(VolumeParams):
    levels: int = 32  # grey levels of the texture matrices
    log_sigmas: tuple[float, ...] = (1.0, 2.0, 4.0)  # LoG filter scales in pixels/voxels (plus the original)
    log_range: float = 0.3  # σ²·LoG responses are quantised over [−log_range, log_range] (99.9 % of phantom values)
    glcm_distances: tuple[int, ...] = (1, 2)
    volume: Literal["native", "planes"] = "native"

    def model_post_init(self, __context) -> None:
        super().model_post_init(__context)
        if not 2 <= self.levels <= 256:
            raise ValueError("levels must be between 2 and 256")
        if any(s <= 0 for s in self.log_sigmas) or self.log_range <= 0:
            raise ValueError("log_sigmas and log_range must be positive")
        if not self.glcm_distances or any(d < 1 for d in self.glcm_distances):
            raise ValueError("glcm_distances must be positive integers")


def radiomic_features(image: np.ndarray, params: RadiomicsParams) -> np.ndarray:
    """One 2D image or 3D volume (float [0, 1]) → its feature vector (see `feature_names`)."""
    image = np.asarray(image, np.float64)
    filtered = [(image, 0.0, 1.0)]
    for sigma in params.log_sigmas:
        response = sigma ** 2 * gaussian_laplace(image, sigma, mode="nearest")
        filtered.append((response, -params.log_range, params.log_range))
    parts = []
    for values, low, high in filtered:
        levels_image = quantise(values, low, high, params.levels)
        parts += [first_order(values, low, high, params.levels),
                  glcm_features(levels_image, params.levels, params.glcm_distances),
                  glrlm_features(levels_image, params.levels)]
    return np.concatenate(parts)


def feature_names(params: RadiomicsParams) -> list[str]:
    names = []
    for image_type in ["original"] + [f"log{s:g}" for s in params.log_sigmas]:
        names += [f"{image_type}/firstorder/{n}" for n in FIRST_ORDER_NAMES]
        names += [f"{image_type}/glcm/{p}/d{d}" for p in GLCM_PROPS for d in params.glcm_distances]
        names += [f"{image_type}/glrlm/{n}" for n in GLRLM_NAMES]
    return names


class RadiomicsExtractor(FeatureExtractor):
    name = "radiomics"
    version = "1"
    ndims = (2, 3)
    standardise_against_reference = True
    Params = RadiomicsParams

    @property
    def reads_volumes_as_planes(self) -> bool:
        return self.params.volume == "planes"

    def extract_native(self, images: np.ndarray) -> np.ndarray:
        return np.stack([radiomic_features(image, self.params) for image in images]).astype(np.float32)

    def describe(self) -> dict:
        return {**self.identity(), "features": len(feature_names(self.params))}

    def feature_names(self) -> list[str]:
        names = feature_names(self.params)
        if self.reads_volumes_as_planes:
            return [f"plane{axis}/{name}" for axis in range(3) for name in names]
        return names
