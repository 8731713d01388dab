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

from pathlib import Path
from typing import Callable

import numpy as np

from attacks.replicas.base import ReplicaScores, query_array, training_array
from audit.errors import AuditInputError
from audit.features import Encoder, make_encoder, topk_cosine

EncoderBuilder = Callable[[np.ndarray], Encoder]  # training images → a ready encoder


class FeatureScorer:
    """Cosine of embeddings to the nearest training image.

    Give either a ready `encoder`, or an `encoder_builder` that makes one from the training images at `fit`
    (how the self-supervised default is trained on exactly the set it will search).
    """

    name = "feature"

    def __init__(self, encoder: Encoder | None = None, encoder_builder: EncoderBuilder | None = None, k: int = 5):
        if (encoder is None) == (encoder_builder is None):
            raise ValueError("give exactly one of encoder / encoder_builder")
        if k < 1:
            raise AuditInputError(None, f"feature scorer: k must be >= 1, got {k}")
        self.encoder = encoder
        self.encoder_builder = encoder_builder
        self.k = k
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

    def describe(self) -> dict:
        return {"name": self.name, "k": self.k,
                "encoder": self.encoder.describe() if self.encoder is not None else "trained at fit"}


def make_scorer(encoder: str = "ssl", weights: str | Path | None = None, k: int = 5, epochs: int = 10,
                seed: int = 0, batch_size: int = 64, device: str = "cpu", progress: bool = False) -> FeatureScorer:
    """The feature scorer by parameters (what the CLI calls).

    encoder: "ssl" (trained on the training set at fit, or loaded from the checkpoint folder `weights`) or
    "timm:<model>" (weights = a local safetensors file; required). Parameters are validated here, before any
    training or embedding starts.
    """
    kind = encoder.partition(":")[0]
    if kind not in ("ssl", "timm") or (kind == "timm" and not encoder.partition(":")[2]):
        raise AuditInputError(None, f"unknown encoder '{encoder}' (known: ssl, timm:<model name>)")
    if epochs < 1:
        raise AuditInputError(None, f"feature scorer: epochs must be >= 1, got {epochs}")
    if kind == "timm" or weights is not None:
        # weights are local files: load now so that a missing file fails before any work
        return FeatureScorer(encoder=make_encoder(encoder, weights=weights, batch_size=batch_size, device=device),
                             k=k)

    def build(train: np.ndarray) -> Encoder:
        return make_encoder("ssl", train_images=train, epochs=epochs, seed=seed, batch_size=batch_size,
                            device=device, progress=progress)

    return FeatureScorer(encoder_builder=build, k=k)
