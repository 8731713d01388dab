"""Feature-level replica scorer (RELICT's "feature level", re-implemented).

RELICT (arXiv 2502.17360) compares images in the feature space of a pretrained medical foundation model; its
paper names neither the model, the layer nor the similarity in code we could read (no public code was found).
Our re-implementation: an injected encoder (default: the suite's own self-supervised CNN trained on the training
set; or any timm backbone with local weights, see `audit.features`) embeds every image into an L2-normalised
vector; the score of a query is the cosine similarity to its nearest training embedding, found by exact
chunked top-k search (`audit.search`), never a dense query × train matrix.

Score: cosine in [-1, 1], higher = more similar. No threshold lives here (calibration decides).
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np
import torch
from pydantic import Field

from attacks.replicas.base import ReplicaScores, ScorerBase, query_array, training_array
from audit.features import Encoder, encoder_spec, topk_cosine
from audit.registry import Params, Runtime

EncoderBuilder = Callable[[np.ndarray], Encoder]  # training images → a ready encoder


class FeatureParams(Params):
    encoder: str = Field("ssl", description="ssl (trained on the training set at fit, or loaded from `weights`) or "
                                            "timm:<model> (weights: a local safetensors file, required)")
    weights: str | None = Field(None, description="SSL checkpoint folder or timm safetensors file")
    k: int = Field(5, ge=1, description="nearest training embeddings kept per query")
    # 40 epochs: chosen on the benchmark's tuning split (seed 1, 2D, 644 training images), where AUC rose from the
    # untrained network's / 10 epochs' to 40 epochs' on every family the encoder learns at all (rotation 0.62 /
    # 0.92 / 0.95, noise 0.39 / 0.98 / 0.997, blur 0.65 / 0.79 / 0.85, shift 0.49 / 0.58 / 0.63, crop 0.48 /
    # 0.53 / 0.62); docs/replicas.md, "The feature level"
    epochs: int = Field(40, ge=1, description="SSL training budget when the encoder is trained at fit")


class FeatureScorer(ScorerBase):
    """Cosine of embeddings to the nearest training image.

    Built from its Params by the registry (`encoder`, `weights`, `k`, `epochs`; device, batch size and seed from
    the Runtime), or with an injected ready `encoder` / an `encoder_builder` that makes one from the training
    images at `fit` (how the self-supervised default is trained on exactly the set it will search).
    """

    name = "feature"
    level = "feature (RELICT feature level, re-implementation)"
    Params = FeatureParams

    def __init__(self, params: FeatureParams | None = None, runtime: Runtime | None = None, *,
                 encoder: Encoder | None = None, encoder_builder: EncoderBuilder | None = None):
        super().__init__(params, runtime)
        if encoder is not None and encoder_builder is not None:
            raise ValueError("give at most one of encoder / encoder_builder")
        if encoder is None and encoder_builder is None:
            p = self.params
            options = {"weights": p.weights, **({"epochs": p.epochs} if p.encoder == "ssl" else {})}
            # validated now; a timm backbone's or a checkpoint's weights load now, so a bad file fails before work
            spec = encoder_spec(p.encoder, options, self.runtime)
            if spec.needs_training:
                encoder_builder = spec.build
            else:
                encoder = spec.build()
        self.encoder = encoder
        self.encoder_builder = encoder_builder
        self.k = self.params.k
        self.train_embeddings: np.ndarray | None = None
        self.train_shape: tuple[int, ...] | None = None

    def fit(self, train: np.ndarray) -> "FeatureScorer":
        train = training_array("feature", train)
        if self.encoder_builder is not None:
            self.encoder = self.encoder_builder(train)
        self.train_embeddings = self.encoder.embed(train)
        self.train_shape = tuple(train.shape[1:])
        return self

    def score(self, queries: np.ndarray) -> ReplicaScores:
        queries = query_array("feature", queries, self.train_shape)
        query_embeddings = self.encoder.embed(queries)
        scores, index = topk_cosine(query_embeddings, self.train_embeddings, self.k)
        return ReplicaScores(scores=scores[:, 0].astype(np.float64), nearest=index[:, 0].astype(np.int64),
                             topk_scores=scores, topk_index=index)

    def components(self) -> dict:
        return {"level": self.level,
                "encoder": self.encoder.describe() if self.encoder is not None else "trained at fit"}

    # the training embeddings (and an encoder trained at fit) are what `audit run` caches per training set
    def fitted_state(self) -> dict[str, np.ndarray]:
        state = {"train_embeddings": self.train_embeddings, "train_shape": np.asarray(self.train_shape, np.int64)}
        if self.encoder_builder is not None:  # trained at fit: its weights are part of the fitted state
            info = getattr(self.encoder, "info", {})
            if info.get("kind") != "ssl":
                raise NotImplementedError("feature: only the SSL encoder trained at fit is cached")
            state["encoder_info"] = np.array(json.dumps(info))
            state.update({f"module.{k}": v.detach().cpu().numpy()
                          for k, v in self.encoder.module.state_dict().items()})
        return state

    def restore(self, state: dict[str, np.ndarray]) -> "FeatureScorer":
        from audit.features import ssl_encoder_from

        if self.encoder_builder is not None:
            info = json.loads(str(state["encoder_info"]))
            weights = {k.partition(".")[2]: torch.from_numpy(np.array(v)) for k, v in state.items()
                       if k.startswith("module.")}
            self.encoder = ssl_encoder_from(info.pop("config"), weights, batch_size=self.runtime.batch_size,
                                            device=self.runtime.device, info=info)
        self.train_embeddings = np.asarray(state["train_embeddings"])
        self.train_shape = tuple(int(x) for x in state["train_shape"])
        return self
