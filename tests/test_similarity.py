"""NCC and SSIM against numpy closed forms, scikit-image, torchmetrics and MONAI."""

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from audit.metrics.similarity import ncc, ssim


def smooth_pairs(shape, n, seed):
    """Images with structure (smoothed noise) and a degraded partner, so SSIM is neither ~0 nor ~1."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    a = np.stack([gaussian_filter(rng.random(shape), 1.5) for _ in range(n)])
    a = (a - a.min()) / (a.max() - a.min())
    b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    b[1] = rng.random(shape)  # one unrelated pair
    return a.astype(np.float32), b.astype(np.float32)


def torchmetrics_valid_mean(fn, a, b, pad=5):
    """torchmetrics 1.9 averages its SSIM map over the reflection-padded border as well; its map averaged over
    the positions where the 11-tap window fits inside the image is the definition skimage and MONAI use."""
    _, full = fn(a, b, data_range=1.0, reduction="none", return_full_image=True)
    inner = full[(Ellipsis,) + (slice(pad, -pad),) * (a.ndim - 2)]
    return inner.reshape(len(a), -1).mean(1).numpy()


@pytest.mark.parametrize("shape", [(16, 20), (6, 7, 8)])
def test_ncc_is_pearson_and_intensity_invariant(shape):
    rng = np.random.default_rng(0)
    a, b = rng.random((4, *shape)), rng.random((4, *shape))
    b[0] = 3.0 * a[0] - 0.5  # affine intensity change → NCC 1
    want = [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)]
    got = ncc(a, b)
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert got[0] == pytest.approx(1.0, abs=1e-12)
    assert ncc(np.ones((1, *shape)), a[:1])[0] == 0.0  # constant image: defined as 0


def test_ssim_2d_matches_skimage_and_torchmetrics():
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = smooth_pairs((40, 48), 3, seed=1)
    ours = ssim(a, b, dtype=torch.float64)
    ref_sk = [structural_similarity(x, y, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False) for x, y in zip(a, b)]
    ref_tm = torchmetrics_valid_mean(structural_similarity_index_measure,
                                     torch.from_numpy(a[:, None]).double(), torch.from_numpy(b[:, None]).double())
    np.testing.assert_allclose(ours, ref_sk, atol=1e-6)
    np.testing.assert_allclose(ours, ref_tm, atol=1e-6)
    assert 0.3 < ours[0] < 0.99 and ours[1] < 0.3  # the cases are not degenerate
    np.testing.assert_allclose(ssim(a, a), 1.0, atol=1e-5)
    np.testing.assert_allclose(ssim(a, b), ours, atol=1e-4)  # float32 default is close to float64


def test_ssim_3d_matches_monai_torchmetrics_and_skimage():
    from monai.metrics import SSIMMetric
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = smooth_pairs((14, 16, 18), 3, seed=2)
    ours = ssim(a, b, dtype=torch.float64)
    ta, tb = torch.from_numpy(a[:, None]).double(), torch.from_numpy(b[:, None]).double()
    ref_monai = SSIMMetric(spatial_dims=3, data_range=1.0)(ta, tb).numpy().ravel()
    ref_tm = torchmetrics_valid_mean(structural_similarity_index_measure, ta, tb)
    ref_sk = [structural_similarity(x, y, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False) for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, ref_sk, atol=1e-6)
    np.testing.assert_allclose(ours, ref_tm, atol=1e-6)
    np.testing.assert_allclose(ours, ref_monai, atol=1e-5)  # MONAI computes in float32


def test_ssim_closed_form_for_constant_images():
    # constant images a, b: μ = a, b; σ = 0 → SSIM = (2ab + C1) / (a² + b² + C1)
    c1 = 0.01 ** 2
    a, b = np.full((1, 12, 12), 0.2), np.full((1, 12, 12), 0.6)
    assert ssim(a, b, dtype=torch.float64)[0] == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.04 + 0.36 + c1), abs=1e-12)


def test_ssim_is_batch_size_independent_and_small_images_work():
    a, b = smooth_pairs((9, 9), 5, seed=3)  # smaller than the 11-tap window → 9-tap window
    np.testing.assert_allclose(ssim(a, b, batch_size=1), ssim(a, b, batch_size=64), atol=2e-5)  # float32 rounding
    ref = [structural_similarity(x, y, data_range=1.0, gaussian_weights=True, sigma=1.5, win_size=9,
                                 use_sample_covariance=False) for x, y in zip(a, b)]
    # skimage's gaussian window is fixed by sigma (11 taps); with a 9-tap truncated kernel values differ slightly
    np.testing.assert_allclose(ssim(a, b), ref, atol=0.05)


@pytest.mark.parametrize("shape", [(20, 24), (12, 12, 13)])
def test_ssim_against_candidates_equals_pairwise_ssim(shape):
    from audit.metrics.similarity import ssim_against

    a, b = smooth_pairs(shape, 6, seed=4)
    candidates = np.stack([b, a[::-1], b[::-1]], axis=1)  # (6, 3, *shape)
    got = ssim_against(a, candidates, batch_size=4)
    want = ssim(np.repeat(a, 3, axis=0), candidates.reshape(18, *shape)).reshape(6, 3)
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(ssim_against(a, a[:, None]), 1.0, atol=1e-5)


def overlap_ncc(a, b, shift):
    """NCC of the voxels where b shifted by `shift` overlaps a (brute force with slices)."""
    sa, sb = [], []
    for t, n in zip(shift, a.shape):
        sa.append(slice(max(t, 0), n + min(t, 0)))
        sb.append(slice(max(-t, 0), n - max(t, 0)))
    return np.corrcoef(a[tuple(sa)].ravel(), b[tuple(sb)].ravel())[0, 1]


@pytest.mark.parametrize("shape", [(32, 30), (12, 14, 16)])
def test_shift_ncc_is_the_best_overlap_ncc_over_shifts(shape):
    import itertools

    from audit.metrics.similarity import shift_ncc_against

    a, b = smooth_pairs(shape, 3, seed=5)
    # a translated copy: a's content moved by (1, -1, ...) with a fresh border (as an affine shift would make)
    moved = np.roll(a, (1,) + (-1,) * (len(shape) - 1), axis=tuple(range(1, len(shape) + 1)))
    candidates = np.stack([b, moved], axis=1)
    got = shift_ncc_against(a, candidates, max_shift=0.1)
    limits = [int(round(0.1 * s)) for s in shape]
    for i in range(3):
        for j in range(2):
            best = max(overlap_ncc(a[i], candidates[i, j], sh)
                       for sh in itertools.product(*[range(-l, l + 1) for l in limits]))
            assert got[i, j] == pytest.approx(best, abs=2e-5)  # float32 FFTs
    np.testing.assert_allclose(got[:, 1], 1.0, atol=2e-5)  # the overlap of a translated copy matches exactly
    assert np.all(got[:, 0] >= ncc(a, b) - 2e-5)  # never below plain NCC (shift 0)


def test_rotate_images_quarter_turn_is_rot90_2d_and_3d():
    from audit.metrics.similarity import rotate_images, rotation_matrix

    a, _ = smooth_pairs((10, 10), 2, seed=8)
    got = rotate_images(torch.from_numpy(a), rotation_matrix(90, 2)).numpy()
    np.testing.assert_allclose(got, np.rot90(a, -1, axes=(1, 2)), atol=1e-5)
    v, _ = smooth_pairs((8, 8, 8), 2, seed=9)
    for axis in range(3):
        plane = tuple(1 + x for x in range(3) if x != axis)
        got = rotate_images(torch.from_numpy(v), rotation_matrix(90, 3, axis)).numpy()
        np.testing.assert_allclose(got, np.rot90(v, -1, axes=plane), atol=1e-5)
    # identity returns the input untouched; a small angle moves voxels but keeps the image close
    np.testing.assert_array_equal(rotate_images(torch.from_numpy(a), rotation_matrix(0, 2)).numpy(), a)
    small = rotate_images(torch.from_numpy(a), rotation_matrix(5, 2)).numpy()
    assert 0 < np.abs(small - a).max() and ncc(small, a).min() > 0.8


@pytest.mark.parametrize("shape", [(14, 12), (8, 9, 10)])
def test_register_ncc_is_the_best_pose_by_brute_force(shape):
    """register_ncc_against = max over (rotation of the query) × (magnification of the candidate) × (shift) of
    the overlap NCC, each shift's NCC computed explicitly with slices."""
    import itertools

    from audit.metrics.similarity import (magnify_centre, register_ncc_against, rotate_images, rotation_grid,
                                          rotation_matrix)

    a, b = smooth_pairs(shape, 2, seed=10)
    nd = len(shape)
    turned = rotate_images(torch.from_numpy(a), rotation_matrix(-8, nd, 0)).numpy()  # the query is a's copy…
    candidates = np.stack([b, a], axis=1)  # …so candidate 1 is its source
    rotations = rotation_grid(nd, max_angle=8.0, step=8.0)
    scales = (1.0, 1.2)
    got = register_ncc_against(turned, candidates, rotations=rotations, scales=scales, max_shift=0.1)
    limits = [int(round(0.1 * s)) for s in shape]
    for i in range(2):
        for j in range(2):
            best = -np.inf
            for matrix in rotations:
                query = rotate_images(torch.from_numpy(turned[i:i + 1]), matrix).numpy()[0]
                for factor in scales:
                    cand = magnify_centre(torch.from_numpy(candidates[i, j][None]), factor).numpy()[0]
                    for sh in itertools.product(*[range(-l, l + 1) for l in limits]):
                        best = max(best, overlap_ncc(query, cand, sh))
            assert got[i, j] == pytest.approx(best, abs=5e-5)
    assert np.all(got[:, 1] > 0.99)  # the rotation is on the grid: the source registers almost exactly
    assert got[1, 1] > got[1, 0] + 0.5  # b[1] is unrelated to a[1] (b[0] is a noisy copy of a[0])
