"""Breast mask, crop/flip/fit and box transforms: closed forms on synthetic geometry."""

import numpy as np

from audit.data.preprocess2d import (Geometry, breast_mask, fit_with_padding, preprocess_mammogram,
                                     transform_boxes)


def two_tissue_breast(h=80, w=60):
    """A half-disc with a dark fatty half and a bright dense half — bimodal inside the breast."""
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - h / 2) / (h * 0.45)) ** 2 + (xx / (w * 0.9)) ** 2 < 1
    image = np.where(inside, np.where(yy < h / 2, 0.25, 0.9), 0.0).astype(np.float32)
    return image, inside


def test_mask_is_the_whole_breast_not_its_dense_part():
    image, inside = two_tissue_breast()
    np.testing.assert_array_equal(breast_mask(image, padding=~inside), inside)  # detector padding known
    np.testing.assert_array_equal(breast_mask(image), inside)  # Otsu against the air


def test_fit_with_padding_keeps_aspect_and_centres():
    canvas, scale, pad = fit_with_padding(np.ones((40, 20), np.float32), (64, 64))
    assert scale == 1.6 and pad == (0, 16)
    assert canvas[:, 16:48].min() == 1 and canvas[:, :16].max() == 0 and canvas[:, 48:].max() == 0


def test_boxes_follow_crop_flip_scale_and_pad():
    geometry = Geometry(crop=(10, 5, 40, 20), flipped=True, scale=2.0, pad=(3, 7))
    box = np.array([[8.0, 20.0, 12.0, 30.0]])  # x 8..12, y 20..30 in the original image
    # crop: x 3..7, y 10..20; flip in a 20-wide crop: x 13..17; scale 2: x 26..34, y 20..40; pad: +7, +3
    np.testing.assert_allclose(transform_boxes(box, geometry), [[33, 23, 41, 43]])


def test_right_breast_is_mirrored_and_its_box_lands_on_its_lesion():
    image, inside = two_tissue_breast()
    right = image[:, ::-1].copy()
    right[30:36, 40:46] = 1.0  # a lesion near the chest wall side of a right breast
    out, geometry = preprocess_mammogram(right, ~inside[:, ::-1], "R", (64, 64))
    (x0, y0, x1, y1), = transform_boxes(np.array([[40.0, 30.0, 46.0, 36.0]]), geometry)
    assert geometry.flipped and out[int(y0) + 1:int(y1) - 1, int(x0) + 1:int(x1) - 1].min() > 0.95
    left, _ = preprocess_mammogram(image, ~inside, "L", (64, 64))
    assert left[:, :32].mean() > left[:, 32:].mean()  # chest wall on the left for both
    assert out[:, :32].mean() > out[:, 32:].mean()
