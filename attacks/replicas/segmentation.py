"""Segmentation-level replica scorer (RELICT's "segmentation level", re-implemented).

RELICT (arXiv 2502.17360) compares segmentations of a synthetic image and of training images; no public code
was found, so its segmenter and overlap score are unknown. Ours:

1. shortlist: the k nearest training images of each query by NCC of downsampled images (`audit.search`, exact
   chunked top-k), or by cosine of an injected encoder's embeddings;
2. segment the query and the shortlisted training images with an injected segmenter;
3. score = the best multi-class Dice among the shortlist; nearest = the training image reaching it;
4. (flips=True, our extension as in the voxel scorers) steps 1-3 also for the query mirrored along each axis;
   the best orientation counts.

Multi-class Dice = mean over the foreground classes present in either mask of 2|A∩B| / (|A| + |B|); two masks
with no foreground at all agree perfectly (1.0) — an empty image copied is still a copy.

Segmenters (the classical ones need no training, so they work on any dataset; any other can be injected through
the same `Segmenter` interface):
- `mammo-classical` (2D): breast = above half of Otsu; dense tissue = above Otsu *within the breast*; lesions =
  small compact regions whose robust z-score among the dense pixels (median/MAD, smoothed image) exceeds 5,
  extent = above half-way from the dense median to the blob's peak. Classes 1 dense, 2 lesion.
- `tissue-quantiles` (2D/3D): foreground above Otsu, split into n intensity classes at the quantiles of the
  image's own foreground (per-image, hence robust to a global gamma/contrast change). Classes 1..n.
- `unet:<checkpoint>` (2D, optional): a small MONAI U-Net trained with `train_unet_segmenter` on masks, e.g.
  the mammo phantom's (`phantom_masks_for` puts them through the image's crop/flip/resize).

Measured against the mammo phantom's ground-truth masks (64 px; 128 training / 32 test images, seed-2 phantom
of 40 patients): mammo-classical dense Dice 0.77, lesion Dice 0.00 (its lesion rule never fires at this size);
the U-Net (30 epochs, 77 s on 2 shared cores) dense 0.91, lesion 0.48 on the 12 test images with a lesion.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
from pydantic import Field
from scipy import ndimage
from skimage.filters import threshold_otsu

from attacks.replicas.base import ReplicaScores, ScorerBase, query_array, training_array
from audit.errors import AuditInputError
from audit.features import Encoder, resize_to
from audit.registry import Params, Registry, Runtime

DENSE, LESION = 1, 2


# ----------------------------------------------------------------------------------------------------------------
# Dice


def multiclass_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the foreground labels (> 0) present in either mask; 1.0 when neither has foreground."""
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    classes = np.union1d(np.unique(a), np.unique(b))
    classes = classes[classes > 0]
    if len(classes) == 0:
        return 1.0
    scores = []
    for c in classes:
        in_a, in_b = a == c, b == c
        scores.append(2.0 * np.logical_and(in_a, in_b).sum() / (in_a.sum() + in_b.sum()))
    return float(np.mean(scores))


def dice_against(query_mask: np.ndarray, candidate_masks: np.ndarray) -> np.ndarray:
    """Multi-class Dice of one mask against each of k candidate masks → (k,)."""
    return np.array([multiclass_dice(query_mask, m) for m in candidate_masks], np.float64)


# ----------------------------------------------------------------------------------------------------------------
# segmenters


@runtime_checkable
class Segmenter(Protocol):
    name: str

    def segment(self, images: np.ndarray) -> np.ndarray:
        """(N, *S) float32 [0, 1] → (N, *S) uint8 labels, 0 = background."""
        ...


def _otsu(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    if values.size < 2 or values.min() == values.max():
        return None
    return float(threshold_otsu(values))


def mammo_labels(image: np.ndarray, lesion_z: float = 5.0, max_lesion_fraction: float = 0.02) -> np.ndarray:
    """Dense tissue (1) and bright compact lesions (2) of one 2D mammogram."""
    labels = np.zeros(image.shape, np.uint8)
    t_breast = _otsu(image.ravel())
    if t_breast is None:
        return labels
    breast = image > t_breast * 0.5  # half of Otsu: keeps the faint skin-line/fatty parts inside the breast
    t_dense = _otsu(image[breast])
    if t_dense is None:
        return labels
    dense = breast & (image > t_dense)
    labels[dense] = DENSE
    # lesions: compact regions far brighter than dense tissue, by a robust z-score (median / MAD of the dense
    # pixels, so the lesion itself does not inflate the spread it is judged against)
    smooth = ndimage.gaussian_filter(image, 1.0)
    values = smooth[dense]
    if values.size < 8:
        return labels
    median = np.median(values)
    spread = 1.4826 * np.median(np.abs(values - median)) + 1e-3  # floor: a flat dense region is not all lesion
    candidate = dense & ((smooth - median) / spread > lesion_z)
    components, count = ndimage.label(candidate)
    if not count:
        return labels
    areas = ndimage.sum_labels(candidate, components, index=np.arange(1, count + 1))
    keep = np.flatnonzero((areas >= 4) & (areas <= max_lesion_fraction * breast.sum())) + 1
    for index in keep:
        # extent on the unsmoothed image: above half-way between the dense median and the blob's peak (the
        # smoothed image found the blob robustly but spreads it by the blur)
        region = ndimage.binary_dilation(components == index, iterations=2) & breast
        peak = image[region].max()
        labels[region & (image >= median + 0.5 * (peak - median))] = LESION
    return labels


def quantile_labels(image: np.ndarray, n_classes: int = 3) -> np.ndarray:
    """Foreground (above Otsu) split into n classes at the quantiles of its own intensities; 2D or 3D."""
    labels = np.zeros(image.shape, np.uint8)
    threshold = _otsu(image.ravel())
    if threshold is None:
        return labels
    foreground = image > threshold
    values = image[foreground]
    if values.size == 0:
        return labels
    edges = np.quantile(values, np.linspace(0, 1, n_classes + 1)[1:-1])
    labels[foreground] = (np.searchsorted(edges, values, side="right") + 1).astype(np.uint8)
    return labels


class ClassicalMammoSegmenter:
    name = "mammo-classical"
    mirror_equivariant = True  # Otsu, Gaussian smoothing, medians, symmetric dilation: mirroring commutes

    def __init__(self, lesion_z: float = 5.0):
        self.lesion_z = lesion_z

    def segment(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        if images.ndim != 3:
            raise AuditInputError(None, f"segmenter '{self.name}' is for 2D images, got shape {images.shape[1:]}")
        return np.stack([mammo_labels(img, self.lesion_z) for img in images]) if len(images) else \
            np.zeros(images.shape, np.uint8)


class QuantileTissueSegmenter:
    name = "tissue-quantiles"
    mirror_equivariant = True

    def __init__(self, n_classes: int = 3):
        if n_classes < 1:
            raise AuditInputError(None, f"tissue-quantiles: n_classes must be >= 1, got {n_classes}")
        self.n_classes = n_classes

    def segment(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, np.float32)
        return np.stack([quantile_labels(img, self.n_classes) for img in images]) if len(images) else \
            np.zeros(images.shape, np.uint8)


class ClassicalParams(Params):
    lesion_z: float = Field(5.0, gt=0, description="robust z-score above which a compact blob is a lesion")


class QuantileParams(Params):
    n_classes: int = Field(3, ge=1, description="foreground intensity classes")


class UNetParams(Params):
    checkpoint: str = Field(..., min_length=1, description="folder written by save_unet_segmenter")


def mammo_classical_segmenter(params: ClassicalParams, runtime: Runtime) -> ClassicalMammoSegmenter:
    return ClassicalMammoSegmenter(params.lesion_z)


def tissue_quantiles_segmenter(params: QuantileParams, runtime: Runtime) -> QuantileTissueSegmenter:
    return QuantileTissueSegmenter(params.n_classes)


def unet_segmenter(params: UNetParams, runtime: Runtime) -> "UNetSegmenter":
    return load_unet_segmenter(params.checkpoint)


mammo_classical_segmenter.Params = ClassicalParams
tissue_quantiles_segmenter.Params = QuantileParams
unet_segmenter.Params = UNetParams

# segmenters by name (the suite's one registry pattern); "auto" picks by image dimension
SEGMENTERS: Registry[Segmenter] = Registry("segmenter")
SEGMENTERS.register("mammo-classical", mammo_classical_segmenter, "2D: breast, dense tissue, lesions (classical)")
SEGMENTERS.register("tissue-quantiles", tissue_quantiles_segmenter, "2D/3D: foreground intensity classes")
SEGMENTERS.register("unet", unet_segmenter, "2D: a U-Net trained with train_unet_segmenter (checkpoint folder)")
AUTO_SEGMENTER = {2: "mammo-classical", 3: "tissue-quantiles"}


def parse_segmenter_spec(spec: str, ndim: int | None = None) -> tuple[str, dict]:
    """'auto' → the dimension's default (None when ndim is not known yet); 'unet:<folder>' → ('unet',
    {'checkpoint': folder}); other names as they are. Unknown names are input errors."""
    if spec.startswith("unet:"):
        return "unet", {"checkpoint": spec.partition(":")[2]}
    if spec == "auto":
        return (AUTO_SEGMENTER[ndim] if ndim is not None else "auto"), {}
    if spec not in SEGMENTERS or spec == "unet":
        raise AuditInputError(None, f"unknown segmenter '{spec}' (known: auto, mammo-classical, tissue-quantiles, "
                                    f"unet:<checkpoint>)")
    return spec, {}


def make_segmenter(name: str = "auto", ndim: int = 2) -> Segmenter:
    """A segmenter by name; "auto" = mammo-classical for 2D images, tissue-quantiles for volumes;
    "unet:<checkpoint folder>" = a U-Net trained with `train_unet_segmenter`."""
    resolved, options = parse_segmenter_spec(name, ndim)
    return SEGMENTERS.create(resolved, options)


# ----------------------------------------------------------------------------------------------------------------
# a learned segmenter: a small U-Net trained on the phantom's ground-truth masks (optional)

UNET_KIND = "segmenter-unet"
UNET_CLASSES = ("background", "dense", "lesion")  # label values 0, 1, 2 = DENSE, LESION as above


def phantom_masks_for(record, pre) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) of one phantom mammogram, the masks put through the very crop/flip/resize of the image.

    The phantom writes `ROOT/masks/<study_id>/<image_id>_dense.png` and `_lesion.png` on the DICOM pixel grid;
    the data layer crops to the breast, mirrors right breasts and fits the result into the configured shape, so
    the masks follow the same `Geometry` (resampled linearly, then thresholded at 0.5)."""
    from pathlib import Path

    from audit.data.dicom import read_dicom_display
    from audit.data.imageio import read_image
    from audit.data.preprocess2d import fit_with_padding, preprocess_mammogram

    path = Path(record.path)
    mask_dir = path.parent.parent.parent / "masks" / path.parent.name
    dicom = read_dicom_display(path)
    image, geometry = preprocess_mammogram(dicom.pixels, dicom.padding, record.laterality, tuple(pre.shape),
                                           crop_to_breast=pre.crop_to_breast,
                                           flip_right_to_left=pre.flip_right_to_left,
                                           intensity_percentiles=pre.intensity_percentiles)
    labels = np.zeros(tuple(pre.shape), np.uint8)
    for value, suffix in ((DENSE, "dense"), (LESION, "lesion")):
        mask_path = mask_dir / f"{path.stem}_{suffix}.png"
        if not mask_path.is_file():
            raise AuditInputError(mask_path, "phantom mask missing (write the phantom with --with-masks)")
        mask = (read_image(mask_path) > 0).astype(np.float32)
        row0, col0, h, w = geometry.crop
        mask = mask[row0:row0 + h, col0:col0 + w]
        if geometry.flipped:
            mask = mask[:, ::-1]
        fitted, _, _ = fit_with_padding(np.ascontiguousarray(mask), tuple(pre.shape))
        labels[fitted >= 0.5] = value  # lesion written last: it wins where both overlap
    return image, labels


class UNetSegmenter:
    """A trained 2D U-Net (MONAI) → per-pixel argmax over background / dense / lesion."""

    mirror_equivariant = False  # learned: the scorer segments each mirrored query itself

    def __init__(self, net, config: dict, batch_size: int = 32):
        self.net = net.eval()
        self.config = config
        self.batch_size = batch_size
        self.name = "unet"

    def segment(self, images: np.ndarray) -> np.ndarray:
        from audit.features import resize_to, zscore_per_image

        images = np.asarray(images, np.float32)
        if images.ndim != 3:
            raise AuditInputError(None, f"segmenter 'unet' is 2D, got images of shape {images.shape[1:]}")
        out = np.zeros(images.shape, np.uint8)
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                x = torch.from_numpy(images[start:start + self.batch_size]).unsqueeze(1)
                logits = self.net(zscore_per_image(resize_to(x, tuple(self.config["input_shape"]))))
                logits = torch.nn.functional.interpolate(logits, size=images.shape[1:], mode="bilinear",
                                                         align_corners=False)
                out[start:start + len(x)] = logits.argmax(dim=1).numpy().astype(np.uint8)
        return out


def build_unet(config: dict):
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=1, out_channels=len(UNET_CLASSES), channels=tuple(config["channels"]),
                strides=tuple(config["strides"]), num_res_units=int(config["num_res_units"]))


def train_unet_segmenter(images: np.ndarray, labels: np.ndarray, epochs: int = 30, seed: int = 0,
                         batch_size: int = 16, lr: float = 3e-3, channels: tuple[int, ...] = (16, 32, 64),
                         progress: bool = False) -> UNetSegmenter:
    """Train the U-Net on (N, H, W) [0, 1] images and their (N, H, W) label maps with Dice + cross-entropy.
    Vertical flips are the only augmentation (the data layer already faces every breast the same way)."""
    from monai.losses import DiceCELoss

    images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int64)
    if images.ndim != 3 or images.shape != labels.shape or len(images) < 2:
        raise AuditInputError(None, f"U-Net training needs matching (N, H, W) images and labels, N >= 2; got "
                                    f"{images.shape} and {labels.shape}")
    config = {"channels": list(channels), "strides": [2] * (len(channels) - 1), "num_res_units": 1,
              "input_shape": list(images.shape[1:]), "classes": list(UNET_CLASSES), "input_normalisation": "zscore",
              "epochs": epochs, "seed": seed}
    from audit.features import zscore_per_image

    rng = np.random.default_rng(seed)
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_unet(config)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        optimiser = torch.optim.Adam(net.parameters(), lr=lr)
        net.train()
        for _ in range(epochs):
            order = rng.permutation(len(images))
            total = 0.0
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                flip = rng.random(len(idx)) < 0.5
                x = np.where(flip[:, None, None], images[idx][:, ::-1], images[idx])
                y = np.where(flip[:, None, None], labels[idx][:, ::-1], labels[idx])
                x = zscore_per_image(torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1))
                loss = loss_fn(net(x), torch.from_numpy(np.ascontiguousarray(y)).unsqueeze(1))
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(idx)
            losses.append(total / len(images))
    config["epoch_losses"] = [round(v, 5) for v in losses]
    return UNetSegmenter(net.eval(), config)


def save_unet_segmenter(segmenter: UNetSegmenter, folder) -> None:
    from audit.checkpoints import save_checkpoint

    save_checkpoint(folder, UNET_KIND, segmenter.config, segmenter.net.state_dict())


def load_unet_segmenter(folder) -> UNetSegmenter:
    from audit.checkpoints import load_checkpoint, load_state_strict

    config, state = load_checkpoint(folder, UNET_KIND)
    try:
        net = build_unet(config)
    except (KeyError, TypeError, ValueError) as err:
        raise AuditInputError(folder, f"U-Net checkpoint config is incomplete ({err!r})") from None
    load_state_strict(net, state, folder)
    return UNetSegmenter(net.eval(), config)


# ----------------------------------------------------------------------------------------------------------------
# the scorer


def downsample_for_shortlist(images: np.ndarray, side: int) -> np.ndarray:
    """(N, *S) → (N, *S') with every side ≤ `side` (area average): NCC on these is a cheap, robust shortlist."""
    x = torch.from_numpy(np.asarray(images, np.float32)).unsqueeze(1)
    target = tuple(min(s, side) for s in x.shape[2:])
    return resize_to(x, target).squeeze(1).reshape(len(images), -1).numpy()


class SegmentationParams(Params):
    segmenter: str = Field("auto", description="auto, mammo-classical, tissue-quantiles or unet:<checkpoint>")
    k: int = Field(10, ge=1, description="training images shortlisted per query and orientation")
    shortlist_side: int = Field(32, ge=4, description="side of the downsampled images of the NCC shortlist")
    flips: bool = True


class SegmentationScorer(ScorerBase):
    """Best multi-class Dice between the query's segmentation and those of its k shortlisted training images.

    The training masks are computed once at fit and kept (uint8, one byte per pixel). A ready `segmenter` or a
    `shortlist_encoder` can be injected; otherwise the segmenter comes from the Params (a U-Net checkpoint loads
    at construction, so a bad one fails before any work).
    """

    name = "segmentation"
    level = "segmentation (RELICT segmentation level, re-implementation)"
    Params = SegmentationParams

    def __init__(self, params: SegmentationParams | None = None, runtime: Runtime | None = None, *,
                 segmenter: Segmenter | None = None, shortlist_encoder: Encoder | None = None):
        super().__init__(params, runtime)
        p = self.params
        if segmenter is None and p.segmenter != "auto":
            segmenter = make_segmenter(p.segmenter)
        elif segmenter is None:
            parse_segmenter_spec(p.segmenter)
        self.segmenter = segmenter  # None: chosen by the image dimension at fit ("auto")
        self.shortlist_encoder = shortlist_encoder
        self.k = p.k
        self.shortlist_side = p.shortlist_side
        self.flips = p.flips  # also search the query mirrored along each axis (as the voxel scorers do)
        self.train_masks: np.ndarray | None = None
        self.train_vectors: np.ndarray | None = None

    def _vectors(self, images: np.ndarray) -> np.ndarray:
        if self.shortlist_encoder is not None:
            return self.shortlist_encoder.embed(images)
        return downsample_for_shortlist(images, self.shortlist_side)

    def fit(self, train: np.ndarray) -> "SegmentationScorer":
        train = training_array("segmentation", train)
        if self.segmenter is None:
            self.segmenter = make_segmenter("auto", train.ndim - 1)
        self.train_masks = self.segmenter.segment(train)
        self.train_vectors = self._vectors(train)
        return self

    def score(self, queries: np.ndarray) -> ReplicaScores:
        from attacks.replicas.voxel import merge_orientations, orientations
        from audit.search import topk_similarity

        queries = query_array("segmentation", queries,
                              None if self.train_masks is None else self.train_masks.shape[1:])
        metric = "cosine" if self.shortlist_encoder is not None else "ncc"
        query_masks = self.segmenter.segment(queries)
        parts = []
        for axes in orientations(queries.ndim - 1, self.flips):
            oriented = np.ascontiguousarray(np.flip(queries, axis=axes)) if axes else queries
            # the classical segmenters are mirror-equivariant, so the mirrored query's mask is the mirrored mask;
            # a learned one segments the mirrored query itself
            if not axes:
                masks = query_masks
            elif getattr(self.segmenter, "mirror_equivariant", False):
                masks = np.flip(query_masks, axis=axes)
            else:
                masks = self.segmenter.segment(oriented)
            _, index = topk_similarity(self._vectors(oriented), self.train_vectors, k=self.k, metric=metric)
            dice = (np.stack([dice_against(masks[i], self.train_masks[index[i]]) for i in range(len(queries))])
                    if len(queries) else np.zeros((0, index.shape[1])))
            parts.append((dice, index))
        return merge_orientations(parts, min(self.k, len(self.train_masks)))

    def components(self) -> dict:
        return {"level": self.level, "segmenter": getattr(self.segmenter, "name", "auto (by image dimension)"),
                "shortlist": "encoder cosine" if self.shortlist_encoder is not None else
                f"NCC at <= {self.shortlist_side} px",
                "orientations": "as is + mirrored along each axis" if self.flips else "as is"}
