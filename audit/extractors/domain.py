"""`domain` and `timm:<model>`: learned encoders of the suite (`audit.features`) as fidelity extractors.

- `domain`: the suite's self-supervised CNN (SimCLR/NT-Xent, 2D or native 3D) trained on the *real training
  split* — the images the synthetic set is compared with — so its features describe this domain rather than
  ImageNet. It is trained once per (training data fingerprint, configuration) and cached as an artefact; a
  saved encoder folder (`audit.features.save_ssl_encoder`) can be given as `weights` instead. Its embedding is
  L2-normalised, invariant to flips and, by per-image z-scoring, to global brightness/contrast: fidelity under
  it is about structure and texture, not about the intensity scale.
- `timm:<model>`: any timm backbone with weights from a local safetensors file (`weights`), pooled features,
  1 input channel (ImageNet stems summed over RGB, timm's recipe). 2D; volumes as 2.5D.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from audit.checkpoints import WEIGHTS_FILE, file_sha256
from audit.errors import AuditInputError
from audit.extractors.base import FeatureExtractor, VolumeParams
from audit.registry import Params

ENCODER_ARTEFACT = "fidelity-domain-encoder"


class DomainParams(Params):
    weights: str | None = None  # a saved SSL encoder folder; None = train on the reference (real training) set
    epochs: int = 10
    seed: int = 0


class DomainExtractor(FeatureExtractor):
    name = "domain"
    version = "1"
    ndims = (2, 3)
    Params = DomainParams

    def __init__(self, params: DomainParams, runtime):
        super().__init__(params, runtime)
        self.encoder = None
        self.encoder_folder: Path | None = None
        if params.weights is not None:
            self._load(Path(params.weights))

    def _load(self, folder: Path) -> None:
        from audit.features import load_ssl_encoder

        self.encoder = load_ssl_encoder(folder, batch_size=self.runtime.batch_size, device=self.runtime.device)
        self.encoder_folder = folder
        self._sha256 = file_sha256(folder / WEIGHTS_FILE)

    def training_config(self) -> dict:
        return {"epochs": self.params.epochs, "seed": self.params.seed, "encoder": "audit.features.train_ssl_encoder",
                "version": self.version}

    def prepare(self, reference, cache) -> None:
        """Train the encoder on the reference images (cached by their fingerprint + the configuration)."""
        if self.encoder is not None:
            return
        from audit.artifacts import dataset_fingerprint
        from audit.features import save_ssl_encoder, train_ssl_encoder

        if len(reference) < 2:
            raise AuditInputError(None, "the 'domain' extractor trains on the real training images: need at least 2")

        def build(folder: Path) -> None:
            encoder = train_ssl_encoder(reference.stack(progress="domain encoder: load"), epochs=self.params.epochs,
                                        seed=self.params.seed, device=self.runtime.device,
                                        progress=self.runtime.progress)
            save_ssl_encoder(encoder, folder / "encoder")

        key = {"data": dataset_fingerprint(reference), "config": self.training_config()}
        self._load(cache.get_or_build(ENCODER_ARTEFACT, key, build) / "encoder")

    def weights_sha256(self) -> str:
        self._require_encoder()
        return self._sha256

    def _require_encoder(self) -> None:
        if self.encoder is None:
            raise RuntimeError("the 'domain' extractor is used before prepare(reference, cache) trained it")

    def check_ndim(self, ndim: int) -> None:
        super().check_ndim(ndim)
        if self.encoder is not None and ndim != self.encoder.ndim:
            raise AuditInputError(self.encoder_folder, f"the domain encoder is {self.encoder.ndim}D, the images "
                                                       f"are {ndim}D")

    def extract_native(self, images: np.ndarray) -> np.ndarray:
        self._require_encoder()
        return self.encoder.embed(images)

    def source(self):
        """Workers load the trained encoder from its folder (the cached artefact or the user's weights)."""
        self._require_encoder()
        recipe = super().source()
        return type(recipe)(recipe.name, {**recipe.options, "weights": str(self.encoder_folder)}, recipe.runtime)

    def describe(self) -> dict:
        info = {k: v for k, v in (self.encoder.info if self.encoder else {}).items() if k != "checkpoint"}
        return {**self.identity(), "encoder": info}


class TimmParams(VolumeParams):
    model: str
    weights: str | None = None  # a local safetensors file of that backbone (required; nothing is downloaded)
    input_size: tuple[int, int] | None = None  # resample images to (H, W) first; None = as they are


class TimmExtractor(FeatureExtractor):
    name = "timm"
    version = "1"
    ndims = (2,)
    Params = TimmParams

    def __init__(self, params: TimmParams, runtime):
        super().__init__(params, runtime)
        from audit.features import timm_encoder

        self.encoder = timm_encoder(params.model, params.weights, batch_size=runtime.batch_size,
                                    device=runtime.device, input_shape=params.input_size)
        self._sha256 = file_sha256(params.weights)

    @property
    def display_name(self) -> str:
        return f"timm:{self.params.model}"

    def weights_sha256(self) -> str:
        return self._sha256

    def extract_native(self, images: np.ndarray) -> np.ndarray:
        return self.encoder.embed(images)
