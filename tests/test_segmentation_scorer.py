"""Segmentation-level scorer: Dice against hand-computed values, the classical segmenters on drawn images,
planted copies found with the right nearest index, 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from attacks.replicas.segmentation import (
    DENSE, LESION, ClassicalMammoSegmenter, QuantileTissueSegmenter, SegmentationScorer,
    make_segmenter, mammo_labels, multiclass_dice, quantile_labels,
)
from attacks.replicas.registry import make_scorer
from audit.errors import AuditInputError


def test_multiclass_dice_hand_computed():
    a = np.array([[1, 1, 0, 0],
                  [2, 2, 2, 0]])
    b = np.array([[1, 0, 0, 0],
                  [2, 2, 0, 3]])
    # class 1: |A|=2 |B|=1 overlap 1 → 2/3; class 2: |A|=3 |B|=2 overlap 2 → 4/5; class 3: only in b → 0
    assert multiclass_dice(a, b) == pytest.approx((2 / 3 + 4 / 5 + 0) / 3)
    assert multiclass_dice(a, a) == 1.0
    assert multiclass_dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0  # no foreground on either side: agree
    assert multiclass_dice(np.zeros((3, 3)), np.ones((3, 3))) == 0.0
    with pytest.raises(ValueError):
        multiclass_dice(np.zeros((2, 2)), np.zeros((3, 3)))


def drawn_mammogram(seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A half-disc breast (fatty 0.35), a dense region (0.7) and one small bright lesion (1.0); returns
    (image, dense truth, lesion truth)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    breast = (yy - size / 2) ** 2 + xx ** 2 < (0.8 * size) ** 2
    cy, cx = rng.uniform(0.35, 0.65) * size, rng.uniform(0.15, 0.35) * size
    dense = breast & ((yy - cy) ** 2 / 2.0 + (xx - cx) ** 2 < (0.18 * size) ** 2)
    ly, lx = rng.uniform(0.3, 0.7) * size, rng.uniform(0.45, 0.6) * size
    lesion = (yy - ly) ** 2 + (xx - lx) ** 2 < (0.04 * size) ** 2
    image = 0.35 * breast + 0.35 * dense
    image = np.where(lesion, 1.0, image) + 0.01 * gaussian_filter(rng.standard_normal((size, size)), 1)
    return np.clip(image, 0, 1).astype(np.float32), dense & ~lesion, lesion


def test_classical_mammo_segmenter_finds_dense_tissue_and_lesion():
    image, dense_truth, lesion_truth = drawn_mammogram(0)
    labels = mammo_labels(image)
    dense_dice = 2 * ((labels == DENSE) & dense_truth).sum() / ((labels == DENSE).sum() + dense_truth.sum())
    lesion_dice = 2 * ((labels == LESION) & lesion_truth).sum() / ((labels == LESION).sum() + lesion_truth.sum())
    # measured on seeds 0-11: dense 0.99-1.0, lesion 1.0
    assert dense_dice > 0.95
    assert lesion_dice > 0.9
    without_lesion = np.where(lesion_truth, 0.7, image).astype(np.float32)
    assert not (mammo_labels(without_lesion) == LESION).any()  # dense tissue alone is not a lesion
    assert mammo_labels(np.zeros((16, 16), np.float32)).max() == 0  # a blank image has no tissue
    with pytest.raises(AuditInputError, match="2D"):
        ClassicalMammoSegmenter().segment(np.zeros((1, 8, 8, 8), np.float32))


def test_quantile_segmenter_splits_the_foreground_evenly_2d_and_3d():
    ramp = np.linspace(0, 1, 8 ** 3, dtype=np.float32).reshape(8, 8, 8)
    labels = quantile_labels(ramp, n_classes=3)
    counts = np.bincount(labels.ravel(), minlength=4)
    foreground = counts[1:].sum()
    assert counts[0] > 0 and foreground > 0  # Otsu leaves the dark half out
    np.testing.assert_allclose(counts[1:] / foreground, [1 / 3] * 3, atol=0.01)
    # a global gamma change keeps the labels (quantiles of the image's own foreground)
    np.testing.assert_array_equal(QuantileTissueSegmenter(3).segment(ramp[None] ** 1.5)[0],
                                  quantile_labels(ramp ** 1.5, 3))
    assert make_segmenter("auto", ndim=3).name == "tissue-quantiles"
    assert make_segmenter("auto", ndim=2).name == "mammo-classical"


def test_segmentation_scorer_finds_planted_copies_2d():
    drawn = [drawn_mammogram(seed) for seed in range(24)]
    train = np.stack([d[0] for d in drawn[:20]])
    novel = np.stack([d[0] for d in drawn[20:]])
    queries = np.concatenate([novel, train[[5, 11]], train[[7]][:, ::-1], train[[9]][:, :, ::-1]])
    result = make_scorer("segmentation", {"k": 5}).fit(train).score(queries)
    np.testing.assert_array_equal(result.nearest[4:], [5, 11, 7, 9])  # exact, then mirrored copies
    np.testing.assert_allclose(result.scores[4:], 1.0)
    assert result.scores[:4].max() < 1.0
    # without the mirrored orientations a mirrored copy is no longer a perfect match
    as_is = make_scorer("segmentation", {"k": 5, "flips": False}).fit(train).score(queries)
    np.testing.assert_allclose(as_is.scores[4:6], 1.0)
    assert as_is.scores[6:].max() < 1.0
    # the returned score is the Dice of the returned pair (as is: no orientation involved)
    result = as_is
    seg = ClassicalMammoSegmenter()
    for q, (score, nearest) in enumerate(zip(result.scores, result.nearest)):
        assert score == pytest.approx(multiclass_dice(seg.segment(queries[[q]])[0], seg.segment(train[[nearest]])[0]))
    assert np.all(np.diff(result.topk_scores, axis=1) <= 0)


def test_segmentation_scorer_3d():
    rng = np.random.default_rng(0)
    volumes = np.stack([gaussian_filter(rng.standard_normal((16, 16, 16)), 2) for _ in range(10)])
    volumes = ((volumes - volumes.min()) / (volumes.max() - volumes.min())).astype(np.float32)
    result = make_scorer("segmentation", {"k": 3}).fit(volumes[:8]).score(volumes[[3, 8, 9]])
    assert result.nearest[0] == 3 and result.scores[0] == 1.0
    # measured best Dice of the two novel volumes against the training set: 0.24 and 0.17
    assert result.scores[1:].max() < 0.5


def test_make_scorer_validates_names():
    with pytest.raises(AuditInputError, match="unknown segmenter"):
        make_scorer("segmentation", {"segmenter": "unet"})
    with pytest.raises(AuditInputError, match="scorer 'segmentation': bad value for 'k'"):
        make_scorer("segmentation", {"k": 0})
    assert isinstance(make_scorer("segmentation"), SegmentationScorer)


# ---------------------------------------------------------------------------------------------------------------
# the learned segmenter


def test_unet_segmenter_learns_drawn_masks_and_round_trips(tmp_path):
    from attacks.replicas.segmentation import load_unet_segmenter, save_unet_segmenter, train_unet_segmenter

    drawn = [drawn_mammogram(seed, size=32) for seed in range(28)]
    images = np.stack([d[0] for d in drawn])
    labels = np.stack([np.where(d[2], LESION, np.where(d[1], DENSE, 0)) for d in drawn]).astype(np.uint8)
    segmenter = train_unet_segmenter(images[:24], labels[:24], epochs=12, seed=0, channels=(8, 16, 32))
    losses = segmenter.config["epoch_losses"]
    assert losses[-1] < 0.6 * losses[0]
    predicted = segmenter.segment(images[24:])
    dense = [2 * ((p == DENSE) & (t == DENSE)).sum() / ((p == DENSE).sum() + (t == DENSE).sum())
             for p, t in zip(predicted, labels[24:])]
    # measured: loss 2.19 -> 1.00 over 12 epochs; mean dense Dice on the 4 held-out drawings 0.87
    assert np.mean(dense) > 0.75
    save_unet_segmenter(segmenter, tmp_path / "unet")
    np.testing.assert_array_equal(load_unet_segmenter(tmp_path / "unet").segment(images[24:]), predicted)
    scorer = make_scorer("segmentation", {"segmenter": f"unet:{tmp_path / 'unet'}", "k": 3})
    result = scorer.fit(images[:20]).score(images[[6, 22]])
    assert result.nearest[0] == 6 and result.scores[0] == 1.0
    with pytest.raises(AuditInputError, match="is a 'segmenter-unet', expected a 'deepssim'"):
        from attacks.replicas.deepssim import load_deepssim
        load_deepssim(tmp_path / "unet")


def test_phantom_masks_follow_the_image_geometry(tmp_path):
    from attacks.replicas.segmentation import phantom_masks_for
    from audit.config import load_data_config
    from audit.data.dataset import open_dataset
    from audit.data.phantoms.mammo import write_mammo_phantom

    write_mammo_phantom(tmp_path / "ph", patients=2, seed=0, with_masks=True)
    cfg = load_data_config("phantom-mammo", root=tmp_path / "ph")
    dataset = open_dataset(cfg)
    for record in dataset.records:
        image, labels = phantom_masks_for(record, cfg.preprocess)
        np.testing.assert_array_equal(image, dataset.load(record)[0])
        dense, breast = labels == DENSE, image > 0.05
        if dense.sum() >= 10:
            # aligned masks sit on the bright (dense) tissue; misaligned ones would average like the breast
            assert image[dense].mean() > image[breast & ~dense].mean() + 0.05
