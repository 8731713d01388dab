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
