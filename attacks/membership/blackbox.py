"""Black-box membership attacks: they need only the model's samples, so they work on any generator (a folder of
images included).

- `dcr`: each candidate's similarity to its closest synthetic image, NCC in pixels (higher = closer = more likely
  a member: a model that copies training images leaves samples next to its members);
- `dcr_embed`: the same with the cosine of the re-identification embedding (attacks.reid), which also sees a
  synthetic image of the same *patient* that is not a pixel copy.

Both also give the **DCR share**: the share of synthetic images whose closest real image (among members and
non-members, equal in number) is a member — SDMetrics' DCR-overfitting idea on images. A model that does not
copy leaves it at 0.5; SDMetrics' protection score is min(2·(1 − share), 1). Synthetic images are streamed in
chunks; candidates × a chunk is the largest similarity block held (never synthetic × candidates at once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from audit.registry import NoParams, Params, Runtime
from audit.search import topk_similarity

Embedder = Callable[[np.ndarray], np.ndarray]  # images (N, *shape) in [0, 1] → (N, d) L2-normalised


@dataclass
class NearestSynthetic:
    candidate_best: np.ndarray  # (n_candidates,) similarity of each candidate to its closest synthetic image
    closer_to_member: int  # synthetic images whose closest candidate is a member (strictly closer)
    n_synthetic: int


def nearest_synthetic(candidates: np.ndarray, is_member: np.ndarray, synthetic_chunks, metric: str,
                      device="cpu") -> NearestSynthetic:
    """One pass over the synthetic set: per candidate its best similarity to any synthetic row, and per synthetic
    row whether its best member beats its best non-member. `candidates` are rows (images or embeddings)."""
    candidates = torch.as_tensor(np.asarray(candidates, np.float32))
    is_member = np.asarray(is_member, bool)
    members, nonmembers = candidates[torch.as_tensor(is_member)], candidates[torch.as_tensor(~is_member)]
    best = np.full(len(candidates), -np.inf)
    closer, total = 0, 0
    for chunk in synthetic_chunks:
        chunk = np.asarray(chunk, np.float32)
        if len(chunk) == 0:
            continue
        score, _ = topk_similarity(candidates, chunk, k=1, metric=metric, device=device)
        best = np.maximum(best, np.asarray(score)[:, 0])
        to_member, _ = topk_similarity(chunk, members, k=1, metric=metric, device=device)
        to_nonmember, _ = topk_similarity(chunk, nonmembers, k=1, metric=metric, device=device)
        closer += int((np.asarray(to_member)[:, 0] > np.asarray(to_nonmember)[:, 0]).sum())
        total += len(chunk)
    return NearestSynthetic(best, closer, total)


class BlackBoxAttack:
    access = "black-box"
    name = "black-box"
    metric = "ncc"
    queries_per_sample = 0  # no model queries: it reads the samples

    class Params(NoParams):
        pass

    def __init__(self, params: Params, runtime: Runtime):
        self.params = params
        self.runtime = runtime

    def requirement(self, target) -> str | None:
        if target.synthetic is None:
            return target.no_synthetic_reason or "no synthetic images to compare with"
        return None

    def features(self, images: np.ndarray, target) -> np.ndarray:
        return images.reshape(len(images), -1)

    def describe(self) -> dict:
        return {"access": self.access, "params": self.params.model_dump(mode="json"), "queries_per_sample": 0,
                "similarity": self.metric}

    def run(self, candidates: np.ndarray, is_member: np.ndarray, target, progress: str | None = None
            ) -> NearestSynthetic:
        """`candidates`: (N, *shape) images in [0, 1]; the synthetic set is read from `target.synthetic`."""
        batch = self.runtime.batch_size
        chunks = (self.features(images, target) for images, _ in target.synthetic.iter_images(batch, progress=progress))
        return nearest_synthetic(self.features(candidates, target), is_member, chunks, self.metric,
                                 self.runtime.device)


class DistanceAttack(BlackBoxAttack):
    name = "dcr"
    metric = "ncc"


class EmbeddingDistanceAttack(BlackBoxAttack):
    name = "dcr_embed"
    metric = "dot"  # the embedding is L2-normalised: the dot product is the cosine

    def requirement(self, target) -> str | None:
        return super().requirement(target) or (None if target.embedder is not None else
                                               target.no_embedder_reason or "no re-identification embedding")

    def features(self, images: np.ndarray, target) -> np.ndarray:
        return np.asarray(target.embedder(images), np.float32)
