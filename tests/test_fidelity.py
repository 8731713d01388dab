"""Fidelity maths (audit/metrics/fidelity.py): FID, KID, k-NN precision/recall/density/coverage, checked against
closed forms, torchmetrics, brute force and hand-made point sets with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from audit.metrics.fidelity import (
    FidOfResamples, Standardiser, StreamingMoments, fid_estimate, fid_mean_term_bias, fid_ratio_estimate,
    frechet_distance, frechet_distance_features, kid_estimate, kid_replicates, kid_subset_size, kid_subsets,
    knn_radii, manifold_estimates, manifold_indicators, mmd2_unbiased,
)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The test machine is shared: one torch thread avoids oversubscription (several times slower otherwise)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class FeaturesAsInput(nn.Module):
    """A torchmetrics `feature` module whose 'images' are the features themselves: both tools see one feature set."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def gaussian_sets(n1, n2, d, seed=0, shift=0.3, scale=1.4):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    x = rng.normal(size=(n1, d)) @ mixing
    y = (rng.normal(size=(n2, d)) * scale) @ mixing + shift
    return x, y


# ------------------------------------------------------------------------------------------------ FID


@pytest.mark.parametrize("n,d", [(50, 8), (12, 40)])  # n > d and rank-deficient n < d
def test_fid_of_identical_feature_sets_is_zero(n, d):
    x, _ = gaussian_sets(n, n, d)
    assert frechet_distance_features(x, x) == pytest.approx(0.0, abs=1e-9 * np.trace(np.cov(x.T)))
    assert frechet_distance(x.mean(0), np.cov(x.T), x.mean(0), np.cov(x.T)) == pytest.approx(0.0, abs=1e-9 * d)


def test_fid_of_two_gaussians_equals_the_closed_form():
    # diagonal covariances commute: Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) = Σ (σ1 − σ2)², so FID = |μ1 − μ2|² + Σ (σ1 − σ2)²
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.5, 2, 6), rng.uniform(0.5, 2, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((s1 - s2) ** 2)
    assert frechet_distance(mu1, np.diag(s1 ** 2), mu2, np.diag(s2 ** 2)) == pytest.approx(expected, rel=1e-10)
    # a rotated pair (non-diagonal, still commuting) gives the same value
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    rotated = frechet_distance(q @ mu1, q @ np.diag(s1 ** 2) @ q.T, q @ mu2, q @ np.diag(s2 ** 2) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("n1,n2,d", [(60, 45, 10), (15, 25, 64), (300, 200, 32)])
def test_fid_routes_agree_with_the_sample_statistics(n1, n2, d):
    x, y = gaussian_sets(n1, n2, d, seed=n1)
    by_stats = frechet_distance(x.mean(0), np.cov(x.T), y.mean(0), np.cov(y.T))
    fid_of = FidOfResamples(x, y)
    w, v = np.ones(n1), np.ones(n2)
    assert frechet_distance_features(x, y) == pytest.approx(by_stats, rel=1e-7)
    fid_of.gram = None  # force the covariance route
    by_cov = fid_of(w, v)
    fid_of_gram = FidOfResamples(x, y)
    from audit.metrics.fidelity import _gram_set

    fid_of_gram.gram = _gram_set(fid_of_gram.x, fid_of_gram.y)  # force the Gram route
    assert by_cov == pytest.approx(fid_of_gram(w, v), rel=1e-7)


def test_weighted_fid_equals_the_fid_of_the_repeated_rows():
    x, y = gaussian_sets(30, 20, 12, seed=5)
    rng = np.random.default_rng(0)
    w = np.bincount(rng.integers(0, 30, 30), minlength=30).astype(float)
    v = np.bincount(rng.integers(0, 20, 20), minlength=20).astype(float)
    explicit = frechet_distance_features(np.repeat(x, w.astype(int), 0), np.repeat(y, v.astype(int), 0))
    assert FidOfResamples(x, y)(w, v) == pytest.approx(explicit, rel=1e-8)


@pytest.mark.parametrize("n1,n2,d", [(120, 90, 16), (40, 30, 64)])
def test_fid_equals_torchmetrics_on_the_same_features(n1, n2, d):
    x, y = gaussian_sets(n1, n2, d, seed=d)
    metric = FrechetInceptionDistance(feature=FeaturesAsInput(d))
    metric.update(torch.tensor(x, dtype=torch.float64), real=True)
    metric.update(torch.tensor(y, dtype=torch.float64), real=False)
    theirs = float(metric.compute())
    assert frechet_distance_features(x, y) == pytest.approx(theirs, rel=1e-4)


def test_fid_estimate_reports_n_a_bias_and_an_interval_around_the_value():
    x, y = gaussian_sets(80, 60, 6, seed=2)
    estimate = fid_estimate(x, y, n_boot=100, seed=1)
    assert estimate.n == 60 and not estimate.higher_is_better
    assert estimate.ci_low <= estimate.value <= estimate.ci_high
    assert estimate == fid_estimate(x, y, n_boot=100, seed=1)  # seeded
    expected_bias = np.trace(np.cov(x.T)) / 80 + np.trace(np.cov(y.T)) / 60
    assert fid_mean_term_bias(x, y) == pytest.approx(expected_bias, rel=1e-10)


def test_streaming_moments_equal_numpy_whatever_the_batch_size():
    x, _ = gaussian_sets(53, 10, 7)
    for batch in (1, 7, 53):
        moments = StreamingMoments()
        for start in range(0, len(x), batch):
            moments.update(x[start:start + batch])
        np.testing.assert_allclose(moments.mean, x.mean(0), atol=1e-13)
        np.testing.assert_allclose(moments.cov, np.cov(x.T), atol=1e-12)


def test_fid_ratio_of_a_set_against_itself_is_one_and_grows_with_distance():
    x, y = gaussian_sets(100, 40, 5, seed=8, shift=0.0, scale=1.0)
    same = fid_ratio_estimate(y, y, x, n_boot=50)
    assert same.estimate.value == pytest.approx(1.0)
    _, far = gaussian_sets(100, 40, 5, seed=9, shift=2.0)
    ratio = fid_ratio_estimate(far, y, x, n_boot=50)
    assert ratio.estimate.value > 3 and ratio.size == 40
    assert ratio.estimate.ci_low <= ratio.estimate.value <= ratio.estimate.ci_high


# ------------------------------------------------------------------------------------------------ KID


def test_unbiased_mmd_equals_torchmetrics_poly_mmd():
    from torchmetrics.image.kid import poly_mmd

    x, y = gaussian_sets(25, 25, 9, seed=4)
    tx, ty = torch.tensor(x), torch.tensor(y)
    assert mmd2_unbiased(tx, ty) == pytest.approx(float(poly_mmd(tx, ty)), rel=1e-10)


def test_kid_equals_torchmetrics_when_every_subset_is_the_whole_set():
    x, y = gaussian_sets(40, 40, 12, seed=6)
    metric = KernelInceptionDistance(feature=FeaturesAsInput(12), subsets=3, subset_size=40)
    metric.update(torch.tensor(x, dtype=torch.float64), real=True)
    metric.update(torch.tensor(y, dtype=torch.float64), real=False)
    theirs_mean, theirs_std = (float(t) for t in metric.compute())
    ours = kid_subsets(x, y, subsets=3, subset_size=40)
    assert ours.mean == pytest.approx(theirs_mean, rel=1e-4)
    assert ours.std == pytest.approx(theirs_std, abs=1e-9)


def test_kid_on_twenty_images_per_side_works_where_the_default_subset_size_fails():
    sample = np.random.default_rng(7).normal(size=(60, 8))
    x, x2, y = sample[:20], sample[20:40], sample[40:] * 1.5 + 0.5  # two draws of one law, and another law
    metric = KernelInceptionDistance(feature=FeaturesAsInput(8))  # subset_size=1000 by default
    metric.update(torch.tensor(x), real=True)
    metric.update(torch.tensor(y), real=False)
    with pytest.raises(ValueError):
        metric.compute()
    result = kid_estimate(x, y, subsets=20, n_boot=100)
    assert result.subset_size == 20 and result.estimate.n == 20
    assert np.isfinite([result.estimate.value, result.estimate.ci_low, result.estimate.ci_high,
                        result.std_over_subsets]).all()
    assert result.estimate.ci_low <= result.estimate.value <= result.estimate.ci_high
    assert kid_estimate(x, x2, n_boot=0).estimate.value < result.estimate.value


def test_kid_subset_size_rule():
    assert kid_subset_size(5000, 3000) == 1000
    assert kid_subset_size(20, 35) == 20
    with pytest.raises(ValueError):
        kid_subset_size(20, 35, requested=30)
    with pytest.raises(ValueError):
        kid_subset_size(1, 35)


def test_kid_bootstrap_replicates_exclude_a_row_paired_with_its_own_repeat():
    x, y = gaussian_sets(9, 7, 4, seed=11)
    replicates = kid_replicates(x, y, n_boot=3, seed=5, chunk=4)
    rng = np.random.default_rng(5)  # the same draws kid_replicates makes
    from audit.metrics.fidelity import bootstrap_counts

    wx, wy = bootstrap_counts(9, 3, rng), bootstrap_counts(7, 3, rng)

    def kernel(a, b):
        return (a @ b.T / 4 + 1) ** 3

    for b in range(3):
        ix, iy = np.repeat(np.arange(9), wx[b].astype(int)), np.repeat(np.arange(7), wy[b].astype(int))
        within = []
        for z, idx in ((x, ix), (y, iy)):
            pairs = [kernel(z[i:i + 1], z[j:j + 1])[0, 0] for a, i in enumerate(idx) for c, j in enumerate(idx)
                     if i != j]
            within.append(np.mean(pairs))
        cross = kernel(x[ix], y[iy]).mean()
        assert replicates[b] == pytest.approx(within[0] + within[1] - 2 * cross, rel=1e-9)


# ------------------------------------------------------------------- precision / recall / density / coverage


def test_manifold_metrics_on_a_hand_made_point_set():
    real = np.arange(10, dtype=float)[:, None]  # 0..9: every 1-NN radius is 1
    fake = np.array([[0.5], [4.2], [20.0], [-5.0]])
    # fake 1-NN radii: 3.7, 3.7, 15.8, 5.5 — the balls of 0.5 and 4.2 cover 0..7, the outlier 20's covers 5..9
    ind = manifold_indicators(real, fake, k_precision_recall=1, k_density_coverage=1)
    np.testing.assert_array_equal(ind.precision, [1, 1, 0, 0])  # 0.5 and 4.2 lie in real balls
    np.testing.assert_array_equal(ind.recall, np.ones(10))  # recall's blindness to outliers (Naeem et al.)
    np.testing.assert_array_equal(ind.density, [2, 2, 0, 0])  # 0.5 ∈ B(0), B(1); 4.2 ∈ B(4), B(5)
    np.testing.assert_array_equal(ind.coverage, [1, 1, 0, 0, 1, 1, 0, 0, 0, 0])
    estimates = manifold_estimates(ind, n_boot=200)
    assert (estimates["precision"].value, estimates["recall"].value) == (0.5, 1.0)
    assert (estimates["density"].value, estimates["coverage"].value) == (1.0, 0.4)
    assert estimates["precision"].n == 4 and estimates["coverage"].n == 10


@pytest.mark.parametrize("k", [3, 5])
def test_identical_sets_have_full_precision_recall_coverage_and_density_one_plus_one_over_k(k):
    x, _ = gaussian_sets(60, 10, 5, seed=12)  # general position: no ties among distances
    ind = manifold_indicators(x, x, k, k)
    assert ind.precision.mean() == ind.recall.mean() == ind.coverage.mean() == 1.0
    # each real ball holds its centre and its k neighbours: Σ counts = N(k+1), density = (k+1)/k
    assert ind.density.mean() == pytest.approx((k + 1) / k)


def test_manifold_metrics_equal_brute_force_with_full_distance_matrices():
    x, y = gaussian_sets(70, 50, 6, seed=13, shift=0.5)
    ind = manifold_indicators(x, y, 3, 5, chunk=16)  # several chunks
    dxx, dyy, dyx = cdist(x, x), cdist(y, y), cdist(y, x)
    rx3, ry3, rx5 = np.sort(dxx, 1)[:, 3], np.sort(dyy, 1)[:, 3], np.sort(dxx, 1)[:, 5]
    np.testing.assert_array_equal(ind.precision, (dyx <= rx3[None]).any(1))
    np.testing.assert_array_equal(ind.recall, (dyx.T <= ry3[None]).any(1))
    np.testing.assert_allclose(ind.density, (dyx <= rx5[None]).sum(1) / 5)
    np.testing.assert_array_equal(ind.coverage, (dyx <= rx5[None]).any(0))
    np.testing.assert_allclose(knn_radii(x, 3, chunk=7), rx3, rtol=1e-9)


def test_far_synthetic_set_has_low_precision_and_recall():
    x, _ = gaussian_sets(80, 10, 4, seed=14)
    y = x[:60] + 10.0
    estimates = manifold_estimates(manifold_indicators(x, y), n_boot=100)
    assert estimates["precision"].value == 0 and estimates["recall"].value == 0
    assert estimates["density"].value == 0 and estimates["coverage"].value == 0


def test_too_small_sets_are_refused():
    x, y = gaussian_sets(5, 5, 3)
    with pytest.raises(ValueError, match="at least 6"):
        manifold_indicators(x, y, 3, 5)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance_features(x[:1], y)


def test_standardiser_z_scores_against_the_reference_and_keeps_constant_features_finite():
    reference = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    z = Standardiser.fit(reference)
    np.testing.assert_allclose(z(reference)[:, 0], [-1, 0, 1])
    np.testing.assert_allclose(z(np.array([[3.0, 7.0]])), [[0.0, 2.0]])  # constant feature: scale 1
