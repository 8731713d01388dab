"""The re-identification attacker: a Siamese embedding network trained to recognise *patients*.

It is trained on the real training split with `patient_id` as the class label (pytorch-metric-learning loss +
miner, `MPerClassSampler` so every batch holds several images of each of its patients), so that two images of one
patient — other views, other scans, or a synthetic image that shows that patient — embed close together, whatever
the pose. Every figure of the re-identification stage is computed on its embeddings (`ReidAttacker.embed`).

    attacker = cached_attacker(train_dataset, AttackerParams(), runtime, ArtifactCache())
    embeddings = attacker.embed(images)      # (N, *S) float32 [0, 1] → (N, 128), rows L2-normalised

Training is deterministic for one `runtime.seed` (weights, sampler, augmentations all seeded, global random
state untouched); the result is cached per (data fingerprint, parameters, seed), checkpointed as safetensors +
JSON (`audit.checkpoints`).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from attacks.reid.augment import make_augmenter
from attacks.reid.losses import LOSSES, MINERS, build_objective
from attacks.reid.networks import EmbeddingNet, build_embedding_net
from audit.artifacts import ArtifactCache, dataset_fingerprint
from audit.checkpoints import (file_sha256, load_checkpoint, load_state_strict, read_checkpoint_meta,
                               save_checkpoint)
from audit.errors import AuditInputError
from audit.features import recalibrate_batchnorm, resize_to, zscore_per_image
from audit.parallel import LOCAL, Source, image_loader, resolve, shipped
from audit.registry import Params, Runtime

ATTACKER_KIND = "reid-attacker"
CACHE_KIND = "reid-attacker"
# bump when training changes in a way the parameters do not show, so cached attackers are rebuilt
TRAINING_VERSION = 1


class AttackerParams(Params):
    """What the attacker is and how it is trained. Defaults train in about 15 min on one CPU core on the phantoms
    (1600 steps of 64 images at 64 × 64)."""

    backbone: str = "test_resnet"  # timm model name (2D), pretrained=False, in_chans=1 (test_resnet: 0.37 M weights)
    backbone_3d: Literal["resnet10", "resnet18", "resnet34"] = "resnet10"  # MONAI 3D ResNet (3D)
    width_3d: float = Field(0.25, gt=0, le=1)  # the 3D ResNet's channel multiplier (0.25: 16..128 channels)
    weights: str | None = None  # local safetensors file of the backbone; None: trained from scratch
    embedding_dim: int = Field(128, ge=2)
    input_shape: tuple[int, ...] | None = None  # resample images to this shape first (None: as given)
    loss: str = "multi_similarity"
    loss_options: dict[str, Any] = Field(default_factory=dict)
    miner: str = "multi_similarity"
    miner_options: dict[str, Any] = Field(default_factory=dict)
    memory_size: int = Field(0, ge=0)  # cross-batch memory size (0: none)
    # passes over every (image, mirror) pair of the training set, at most `max_steps` steps: 400 passes reach the
    # cap from ~256 training images on (mammo80: 1600 steps; 100 passes = 400 steps gave 0.795 vs 0.837 sanity
    # mAP@R on the tuning split — docs/reid.md, "Choices")
    epochs: int = Field(400, ge=1)
    max_steps: int = Field(1600, ge=1)  # at most this many optimiser steps (keeps large sets CPU-sized)
    m_per_class: int = Field(4, ge=2)  # images per patient in a batch
    patients_per_batch: int = Field(16, ge=2)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    augmentation: Literal["default", "strong", "none"] = "default"
    rotation: float = Field(15.0, ge=0, le=180)  # 2D: largest training rotation, degrees
    # 2D: half of the training images blurred with σ up to this many pixels — a generator's autoencoder and
    # sampler low-pass what they copy, and an attacker keyed on fine texture misses its copies (docs/reid.md)
    generator_blur: float = Field(2.0, ge=0, le=8)
    # every patient also enters training mirrored along each image axis as a *new* patient (4 identities per
    # patient in 2D, 8 in 3D). None = by dimension: off in 2D (at an equal number of steps it lost to plain
    # training on the mammography tuning split), on in 3D (2 scans of 32 patients: without the mirrored
    # identities the network fell below its untrained self) — docs/reid.md, "Choices"
    flip_identities: bool | None = None

    @model_validator(mode="after")
    def _check_components(self) -> "AttackerParams":
        # loss / miner names and options are validated now, before any image is read
        LOSSES.params(self.loss, self.loss_options)
        MINERS.params(self.miner, self.miner_options)
        if self.weights is not None and not Path(self.weights).is_file():
            raise AuditInputError(self.weights, "re-id attacker weights not found: give a local safetensors file "
                                                "of the backbone (nothing is downloaded)")
        return self


class ReidAttacker:
    """A trained embedding network. `embed` runs it in eval mode on z-scored images, in batches (results do not
    depend on the batch size)."""

    def __init__(self, net: EmbeddingNet, params: AttackerParams, ndim: int, data_shape: tuple[int, ...],
                 runtime: Runtime, info: dict[str, Any] | None = None):
        self.net = net.eval()
        self.params = params
        self.ndim = ndim
        self.data_shape = tuple(data_shape)
        self.info = dict(info or {})
        self.batch_size = runtime.batch_size
        self.device = torch.device(runtime.device)

    @property
    def dim(self) -> int:
        return self.params.embedding_dim

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(N, *S) float32 [0, 1] → (N, d) float32, rows L2-normalised."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != self.ndim + 1:
            raise AuditInputError(None, f"the re-id attacker embeds {self.ndim}D images, got shape "
                                        f"{tuple(images.shape[1:])}")
        self.net.eval().to(self.device)
        chunks = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                batch = prepare_batch(images[start:start + self.batch_size], self.params, self.device)
                chunks.append(self.net(batch).float().cpu())
        if not chunks:
            return np.zeros((0, self.dim), np.float32)
        return torch.nn.functional.normalize(torch.cat(chunks), dim=1).numpy()

    def embed_dataset(self, dataset, progress: str | None = None, executor=None) -> np.ndarray:
        """Embeddings of an `ImageDataset`, streamed (memory bounded by the batch size). With an executor that
        leaves the process (`audit.parallel`, --ray-address), records travel in the same batches and each worker
        loads the attacker once from its checkpoint folder and reads its own images."""
        executor = executor or LOCAL
        if executor.in_process:
            chunks = [self.embed(images) for images, _ in
                      dataset.iter_images(batch_size=self.batch_size, progress=progress)]
            return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)
        if len(dataset) == 0:
            return np.zeros((0, self.dim), np.float32)
        rows = executor.map_batches(EmbedRecords, dataset.records, batch_size=self.batch_size,
                                    constructor_kwargs={"attacker": shipped(executor, self, self.source()),
                                                        "loader": image_loader(dataset)})
        return np.stack(rows).astype(np.float32, copy=False)

    def source(self) -> "AttackerSource | None":
        """The recipe workers load this attacker from (its checkpoint folder), None when it was never saved."""
        folder = self.info.get("checkpoint")
        return AttackerSource(str(folder), str(self.device), self.batch_size) if folder else None

    def describe(self) -> dict[str, Any]:
        return {"kind": ATTACKER_KIND, "ndim": self.ndim, "data_shape": list(self.data_shape),
                "backbone": self.params.backbone if self.ndim == 2 else f"monai:{self.params.backbone_3d}",
                "params": self.params.model_dump(mode="json"), "training": self.info}


# ----------------------------------------------------------------------------------------------------------------
# training


def patient_labels(records) -> tuple[np.ndarray, list[str]]:
    """Integer class per record (patients in order of first appearance) and the patient names."""
    index: dict[str, int] = {}
    labels = np.array([index.setdefault(r.patient_id, len(index)) for r in records], dtype=np.int64)
    return labels, list(index)


@contextlib.contextmanager
def pml_numpy_random(seed: int):
    """PML's samplers draw from the module-level `common_functions.NUMPY_RANDOM` (numpy's global RNG by default);
    give them a seeded one for the duration, then put theirs back."""
    from pytorch_metric_learning.utils import common_functions as c_f

    saved = c_f.NUMPY_RANDOM
    c_f.NUMPY_RANDOM = np.random.RandomState(seed)
    try:
        yield
    finally:
        c_f.NUMPY_RANDOM = saved


def batch_plan(labels: np.ndarray, params: AttackerParams) -> tuple[int, int]:
    """(m per patient, batch size) fitted to the data: at most as many patients per batch as there are, and no more
    images per patient than a typical patient has (brain scans come in pairs: m = 4 would repeat each image)."""
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    n_patients = len(counts)
    m = min(params.m_per_class, max(2, int(np.median(counts))))
    return m, m * min(params.patients_per_batch, n_patients)


def check_training_labels(labels: np.ndarray) -> None:
    counts = np.bincount(labels)
    if len(counts) < 2 or int((counts >= 2).sum()) < 2:
        raise AuditInputError(None, "the re-id attacker needs at least 2 training patients with 2 or more images "
                                    f"each (got {len(counts)} patients, {int((counts >= 2).sum())} with ≥ 2 images)")


def sampled_batches(sampler, batch_size: int, steps: int):
    """`steps` batches of sample indices: the sampler's passes (one per epoch) cut into whole batches."""
    done = 0
    while done < steps:
        order = np.fromiter(iter(sampler), dtype=np.int64)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            if done == steps:
                return
            yield order[start:start + batch_size]
            done += 1


def flip_axes(image: np.ndarray, code: int) -> np.ndarray:
    """`image` mirrored along every axis whose bit is set in `code`."""
    axes = [axis for axis in range(image.ndim) if code >> axis & 1]
    return np.flip(image, axis=axes) if axes else image


def uses_flip_identities(params: AttackerParams, ndim: int) -> bool:
    """`flip_identities`, or its default for the dimension when None (2D off, 3D on)."""
    return params.flip_identities if params.flip_identities is not None else ndim == 3


def prepare_batch(batch: np.ndarray, params: AttackerParams, device) -> torch.Tensor:
    """(B, *S) float32 [0, 1] → the network's input (B, 1, *input_shape), each image z-scored (an exposure
    difference between two views is not identity)."""
    x = resize_to(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).unsqueeze(1).to(device),
                  params.input_shape)
    return zscore_per_image(x)


def train_on_arrays(images: np.ndarray, labels: np.ndarray, params: AttackerParams, runtime: Runtime,
                    ) -> ReidAttacker:
    """Train on (N, *S) float32 [0, 1] images with integer patient labels."""
    from pytorch_metric_learning.samplers import MPerClassSampler

    images = np.asarray(images, dtype=np.float32)
    ndim = images.ndim - 1
    labels = np.asarray(labels, dtype=np.int64)
    if len(images) != len(labels):
        raise ValueError("one label per image")
    check_training_labels(labels)
    # virtual samples: (image, flip) pairs; the label of a flipped patient is a patient of its own
    n_flips = 2 ** ndim if uses_flip_identities(params, ndim) else 1
    sample_image = np.tile(np.arange(len(labels)), n_flips)
    sample_flip = np.repeat(np.arange(n_flips), len(labels))
    labels = labels[sample_image] * n_flips + sample_flip
    m, batch_size = batch_plan(labels, params)
    device = torch.device(runtime.device)
    augment = make_augmenter(params.augmentation, ndim, runtime.seed, params.rotation, params.generator_blur)
    label_tensor = torch.from_numpy(labels)
    started = time.perf_counter()
    losses: list[float] = []
    with torch.random.fork_rng(devices=[]), pml_numpy_random(runtime.seed):
        torch.manual_seed(runtime.seed)
        net = build_embedding_net(ndim, params.backbone, params.backbone_3d, params.width_3d, params.embedding_dim,
                                  params.weights).to(device)
        loss_fn, miner = build_objective(params.loss, params.loss_options, params.miner, params.miner_options,
                                         params.memory_size, params.embedding_dim)
        loss_fn = loss_fn.to(device)
        optimiser = torch.optim.AdamW(net.parameters(), lr=params.lr, weight_decay=params.weight_decay)
        # one "epoch" draws as many samples as the training set holds, in whole batches
        per_epoch = max(batch_size, len(labels) - len(labels) % batch_size)
        sampler = MPerClassSampler(labels, m, batch_size=batch_size, length_before_new_iter=per_epoch)
        steps_per_epoch = len(sampler) // batch_size
        total_steps = min(params.epochs * steps_per_epoch, params.max_steps)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=total_steps)
        bar = None
        if runtime.progress:
            from audit.progress import progress_bar
            bar = progress_bar(total=total_steps, desc="re-id attacker")
        net.train()
        for idx in sampled_batches(sampler, batch_size, total_steps):
            batch = [flip_axes(images[sample_image[i]], sample_flip[i]) for i in idx]
            x = prepare_batch(augment(np.stack(batch)), params, device)
            y = label_tensor[idx].to(device)
            embeddings = net(x)
            pairs = miner(embeddings, y) if miner is not None else None
            loss = loss_fn(embeddings, y, pairs)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if bar is not None:
            bar.close()
        # a short CPU run leaves momentum-averaged BatchNorm statistics behind the final weights: re-estimate them
        recalibrate_batchnorm(net, (prepare_batch(images[s:s + batch_size], params, device)
                                    for s in range(0, len(images), batch_size)))
    net = net.cpu().eval()
    info = {"n_images": int(len(images)), "n_patients": int(len(np.unique(labels)) // n_flips),
            "n_training_identities": int(len(np.unique(labels))), "steps": len(losses),
            "batch_size": batch_size, "m_per_class": m, "seed": runtime.seed,
            "loss_first_epoch": float(np.mean(losses[:steps_per_epoch])) if losses else None,
            "loss_last_epoch": float(np.mean(losses[-steps_per_epoch:])) if losses else None,
            "train_seconds": round(time.perf_counter() - started, 2), "training_version": TRAINING_VERSION}
    return ReidAttacker(net, params, ndim, tuple(images.shape[1:]), runtime, info)


def train_attacker(train, params: AttackerParams, runtime: Runtime) -> ReidAttacker:
    """Train on an `ImageDataset` (the real training split) with `patient_id` as the label."""
    labels, _ = patient_labels(train.records)
    check_training_labels(labels)  # before decoding anything
    images = train.stack(progress="reading training images" if runtime.progress else None)
    return train_on_arrays(images, labels, params, runtime)


def untrained_attacker(ndim: int, data_shape: tuple[int, ...], params: AttackerParams,
                       runtime: Runtime) -> ReidAttacker:
    """The same network with its initial weights (seeded): the baseline a trained attacker must beat."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(runtime.seed)
        net = build_embedding_net(ndim, params.backbone, params.backbone_3d, params.width_3d, params.embedding_dim,
                                  params.weights)
    return ReidAttacker(net, params, ndim, data_shape, runtime, {"untrained": True})


# ----------------------------------------------------------------------------------------------------------------
# checkpoints and the cache


@dataclass(frozen=True)
class AttackerSource(Source):
    """A saved attacker as a worker's recipe (`audit.parallel`): loaded once per worker."""

    folder: str
    device: str = "cpu"
    batch_size: int = 64

    def load(self) -> "ReidAttacker":
        return load_attacker(self.folder, Runtime(device=self.device, batch_size=self.batch_size))


class EmbedRecords:
    """One batch of records on a worker: read the images, embed them (the batch `embed_dataset` would use)."""

    def __init__(self, attacker, loader):
        self.attacker = resolve(attacker)
        self.loader = loader  # the dataset without its record list: decoder, preprocessing, cache

    def __call__(self, records) -> list[np.ndarray]:
        return list(self.attacker.embed(np.stack([self.loader.load(r)[0] for r in records])))


def save_attacker(attacker: ReidAttacker, folder: str | Path) -> Path:
    config = {"params": attacker.params.model_dump(mode="json"), "ndim": attacker.ndim,
              "data_shape": list(attacker.data_shape)}
    return save_checkpoint(folder, ATTACKER_KIND, config, attacker.net.state_dict(), extra=attacker.info)


def read_attacker_meta(folder: str | Path) -> dict[str, Any]:
    """The checkpoint's validated config.json (no tensors): fails early on a wrong or broken folder."""
    return read_checkpoint_meta(folder, ATTACKER_KIND)


def load_attacker(folder: str | Path, runtime: Runtime | None = None) -> ReidAttacker:
    """A saved attacker; the backbone is rebuilt from the checkpoint's config and all weights come from it."""
    runtime = runtime or Runtime()
    config, state = load_checkpoint(folder, ATTACKER_KIND)
    try:
        # the backbone's original weights file is not needed (and may be gone): every tensor is in the checkpoint
        params = AttackerParams.model_validate({**config["params"], "weights": None})
        ndim, data_shape = int(config["ndim"]), tuple(config["data_shape"])
    except (KeyError, TypeError, ValueError) as err:
        raise AuditInputError(folder, f"re-id attacker checkpoint config is incomplete ({err})") from None
    params = params.model_copy(update={"weights": config["params"].get("weights")})
    net = build_embedding_net(ndim, params.backbone, params.backbone_3d, params.width_3d, params.embedding_dim, None)
    load_state_strict(net, state, folder)
    meta = json.loads((Path(folder) / "config.json").read_text())
    info = {**meta.get("extra", {}), "checkpoint": str(folder)}
    return ReidAttacker(net, params, ndim, data_shape, runtime, info)


def attacker_cache_key(train, params: AttackerParams, runtime: Runtime) -> dict[str, Any]:
    # a default (None) flip setting is keyed by what it means for this data: one attacker per actual training
    resolved = {**params.model_dump(mode="json"), "flip_identities": uses_flip_identities(params, train.ndim)}
    return {"data": dataset_fingerprint(train), "params": resolved, "seed": runtime.seed,
            "weights_sha256": file_sha256(params.weights) if params.weights else None,
            "training_version": TRAINING_VERSION}


def cached_attacker(train, params: AttackerParams, runtime: Runtime, cache: ArtifactCache) -> ReidAttacker:
    """The attacker for this training set, parameters and seed: loaded from `cache` or trained once and stored."""
    folder = cache.get_or_build(CACHE_KIND, attacker_cache_key(train, params, runtime),
                                lambda scratch: save_attacker(train_attacker(train, params, runtime), scratch))
    return load_attacker(folder, runtime)

