"""Metric-learning losses and miners of the re-identification attacker, chosen by name (pytorch-metric-learning).

Each component declares its parameters (defaults = pytorch-metric-learning's, which follow the papers) and
`build()`s the library object. Registered names:

- losses: ``contrastive`` (Hadsell et al.; Packhäuser et al. used it with cross-batch memory for patient
  retrieval), ``multi_similarity`` (Wang et al. 2019), ``triplet``;
- miners: ``multi_similarity``, ``pair_margin``, ``triplet_margin``, ``none``.

Cross-batch memory (`AttackerParams.memory_size > 0`) wraps the loss in PML's `CrossBatchMemory`, so pairs are
also formed with the embeddings of recent batches: more negatives per step than a CPU-sized batch holds.
"""

from __future__ import annotations

from audit.registry import Params, Registry, Runtime


class _Component:
    """A registry component holding validated parameters; `build()` makes the PML object."""

    Params = Params

    def __init__(self, params: Params, runtime: Runtime | None = None):
        self.params = params


class ContrastiveLoss(_Component):
    class Params(Params):
        pos_margin: float = 0.0
        neg_margin: float = 1.0

    def build(self):
        from pytorch_metric_learning.losses import ContrastiveLoss as PMLContrastive

        return PMLContrastive(pos_margin=self.params.pos_margin, neg_margin=self.params.neg_margin)


class MultiSimilarityLoss(_Component):
    class Params(Params):
        alpha: float = 2.0
        beta: float = 50.0
        base: float = 0.5

    def build(self):
        from pytorch_metric_learning.losses import MultiSimilarityLoss as PMLMultiSimilarity

        return PMLMultiSimilarity(alpha=self.params.alpha, beta=self.params.beta, base=self.params.base)


class TripletLoss(_Component):
    class Params(Params):
        margin: float = 0.05

    def build(self):
        from pytorch_metric_learning.losses import TripletMarginLoss

        return TripletMarginLoss(margin=self.params.margin)


class MultiSimilarityMiner(_Component):
    class Params(Params):
        epsilon: float = 0.1

    def build(self):
        from pytorch_metric_learning.miners import MultiSimilarityMiner as PMLMiner

        return PMLMiner(epsilon=self.params.epsilon)


class PairMarginMiner(_Component):
    class Params(Params):
        pos_margin: float = 0.2
        neg_margin: float = 0.8

    def build(self):
        from pytorch_metric_learning.miners import PairMarginMiner as PMLMiner

        return PMLMiner(pos_margin=self.params.pos_margin, neg_margin=self.params.neg_margin)


class TripletMarginMiner(_Component):
    class Params(Params):
        margin: float = 0.2
        type_of_triplets: str = "semihard"

    def build(self):
        from pytorch_metric_learning.miners import TripletMarginMiner as PMLMiner

        return PMLMiner(margin=self.params.margin, type_of_triplets=self.params.type_of_triplets)


class NoMiner(_Component):
    """Every pair / triplet of the batch (the loss's own default)."""

    class Params(Params):
        pass

    def build(self):
        return None


LOSSES: Registry = Registry("re-id loss")
LOSSES.register("contrastive", ContrastiveLoss, "contrastive loss (pos_margin, neg_margin)")
LOSSES.register("multi_similarity", MultiSimilarityLoss, "multi-similarity loss (alpha, beta, base)")
LOSSES.register("triplet", TripletLoss, "triplet margin loss (margin)")

MINERS: Registry = Registry("re-id miner")
MINERS.register("multi_similarity", MultiSimilarityMiner, "multi-similarity miner (epsilon)")
MINERS.register("pair_margin", PairMarginMiner, "pairs violating the margins (pos_margin, neg_margin)")
MINERS.register("triplet_margin", TripletMarginMiner, "triplets violating the margin (margin, type_of_triplets)")
MINERS.register("none", NoMiner, "no mining: every pair of the batch")


def build_objective(loss: str, loss_options: dict, miner: str, miner_options: dict, memory_size: int,
                    embedding_dim: int):
    """(loss, miner) ready for a training step. With cross-batch memory the miner lives inside the memory
    wrapper (PML mines between the batch and the memory there) and the returned miner is None."""
    loss_obj = LOSSES.create(loss, loss_options).build()
    miner_obj = MINERS.create(miner, miner_options).build()
    if memory_size > 0:
        from pytorch_metric_learning.losses import CrossBatchMemory

        return CrossBatchMemory(loss_obj, embedding_dim, memory_size=memory_size, miner=miner_obj), None
    return loss_obj, miner_obj
