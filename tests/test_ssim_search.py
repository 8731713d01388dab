"""SSIM nearest-neighbour cascade: sampled SSIM against scikit-image's SSIM map, the embedding's closed forms,
and the search against brute-force SSIM."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

from audit.metrics.similarity import SSIM_K1, SSIM_K2, candidate_moments_of, ssim, ssim_against
from audit.ssim_search import SSIMSearch, luminance_factors, ssim_embedding


def textured(shape, n, seed, background=True):
    """Smoothed noise, optionally on a zero background outside a random ellipse (like a breast on film)."""
    rng = np.random.default_rng(seed)
    out = []
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    for _ in range(n):
        image = gaussian_filter(rng.random(shape), 1.2)
        image = (image - image.min()) / (image.max() - image.min())
        if background:
            radii = rng.uniform(0.5, 1.0, len(shape))
            centre = rng.uniform(-0.3, 0.3, len(shape))
            inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1
            image = np.where(inside, image, 0.0)
        out.append(image)
    return np.stack(out).astype(np.float32)


@pytest.mark.parametrize("shape,stride", [((40, 36), 3), ((40, 36), 4), ((24, 22, 20), 3)])
def test_sampled_ssim_is_the_mean_of_skimages_ssim_map_on_the_grid(shape, stride):
    a, b = textured(shape, 2, seed=1)
    b = np.clip(0.7 * b + 0.3 * a, 0, 1)
    _, full = structural_similarity(a.astype(np.float64), b.astype(np.float64), gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0, full=True)
    grid = tuple(slice(5, s - 5, stride) for s in shape)  # valid positions (window inside), every stride-th
    expected = full[grid].mean()
    got = ssim_against(a[None], b[None, None], stride=stride)[0, 0]
    assert got == pytest.approx(expected, abs=1e-5)
    assert ssim_against(a[None], b[None, None], stride=1)[0, 0] == pytest.approx(ssim(a[None], b[None])[0], abs=1e-6)


@pytest.mark.parametrize("shape,stride", [((40, 36), 1), ((40, 36), 4), ((24, 22, 20), 3)])
def test_cached_candidate_moments_give_the_same_ssim(shape, stride):
    queries, refs = textured(shape, 3, seed=9), textured(shape, 5, seed=10)
    index = np.array([[0, 3], [4, 1], [2, 2]])
    moments = candidate_moments_of(refs, stride=stride)[index]
    np.testing.assert_allclose(ssim_against(queries, refs[index], stride=stride, candidate_moments=moments),
                               ssim_against(queries, refs[index], stride=stride), atol=1e-6)


def test_ssim_embedding_closed_form_for_constant_images():
    """The two-vector luminance form (luminance_rank=None): exact closed form for flat images."""
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2
    values = (0.0, 0.2, 0.7, 1.0)
    images = np.stack([np.full((30, 26), v, np.float32) for v in values])
    emb = ssim_embedding(images, pool=1, luminance_rank=None).astype(np.float64)
    positions = 20 * 16  # valid window positions of a 30 × 26 image
    for i, a in enumerate(values):
        for j, b in enumerate(values):
            luminance = (a * b + c1 / 2) / np.sqrt((a * a + c1 / 2) * (b * b + c1 / 2))
            # rel 1e-3: float32 local variances of a flat image are ~1e-7 instead of 0 (cancellation in
            # E[x²] − μ²), against C2/2 = 4.5e-4 in the structure term's denominator
            assert emb[i] @ emb[j] == pytest.approx(positions * luminance, rel=1e-3)
    # equal constant images: SSIM is 1 at every position, and so is the embedding's term
    assert emb[1] @ emb[1] == pytest.approx(positions * ssim(images[1:2], images[1:2])[0], rel=1e-3)
    assert c2 > 0  # the structure term of a flat pair is (C2/2) / (C2/2) = 1, included above


@pytest.mark.parametrize("rank,mean_error", [(4, 0.0074), (6, 0.0019), (8, 0.0004)])
def test_luminance_factorisation_approximates_ssims_luminance_term(rank, mean_error):
    c1 = SSIM_K1 ** 2
    means, factors = luminance_factors(rank)
    kernel = (2 * np.outer(means, means) + c1) / (means[:, None] ** 2 + means[None] ** 2 + c1)
    error = np.abs(factors @ factors.T - kernel)
    assert error.mean() == pytest.approx(mean_error, abs=2e-4)  # the values in the docstring
    assert np.all(np.diff([np.abs(luminance_factors(r)[1] @ luminance_factors(r)[1].T - kernel).mean()
                           for r in (2, 4, 6, 8)]) < 0)  # more rank, closer


def test_ssim_embedding_with_factorised_luminance_on_flat_images():
    """Flat images of local means a, b (the edge of the range included): per position the dot product is
    φ(a)·φ(b) ≈ l(a, b), and the structure factor is exactly 1."""
    c1 = SSIM_K1 ** 2
    values = (0.0, 0.3, 0.8, 1.0)
    images = np.stack([np.full((24, 24), v, np.float32) for v in values])
    emb = ssim_embedding(images, pool=1, luminance_rank=8).astype(np.float64)
    for i, a in enumerate(values):
        for j, b in enumerate(values):
            luminance = (2 * a * b + c1) / (a * a + b * b + c1)
            assert emb[i] @ emb[j] / (14 * 14) == pytest.approx(luminance, abs=0.05)


def test_ssim_embedding_ranks_like_ssim():
    """Dot products of the embeddings against exact SSIM over pairs of images with backgrounds. Rank correlations
    measured on these images: factorised luminance (rank 6) 0.911 (pool 1) / 0.896 (pool 2); two-vector
    luminance 0.886 / 0.870; NCC of the images 0.576."""
    queries, refs = textured((48, 48), 12, seed=2), textured((48, 48), 40, seed=3)
    exact = ssim_against(queries, np.broadcast_to(refs, (len(queries), *refs.shape))).ravel()

    def rho(pool, rank):
        dots = ssim_embedding(queries, pool=pool, luminance_rank=rank) @ \
            ssim_embedding(refs, pool=pool, luminance_rank=rank).T
        return spearmanr(dots.ravel(), exact)[0]

    for pool, floor in ((1, 0.89), (2, 0.87)):
        assert rho(pool, 6) > floor
        assert rho(pool, 6) > rho(pool, None) > floor - 0.03


def brute_force(queries, refs):
    return ssim_against(queries, np.broadcast_to(refs, (len(queries), *refs.shape)))


@pytest.mark.parametrize("shape", [(40, 40), (20, 20, 20)])
def test_ssim_search_without_preselection_is_the_brute_force_top_k(shape):
    refs, queries = textured(shape, 30, seed=4), textured(shape, 6, seed=5)
    values, index = SSIMSearch(candidates=30, verify=30, stride=2).fit(refs).topk(queries, k=5)
    exact = brute_force(queries, refs)
    order = np.argsort(-exact, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(index, order)
    np.testing.assert_allclose(values, np.take_along_axis(exact, order, 1), atol=1e-6)


def test_ssim_search_finds_planted_copies_and_returns_exact_ssim():
    rng = np.random.default_rng(6)
    refs = textured((48, 48), 80, seed=7)
    sources = rng.choice(len(refs), 10, replace=False)
    copies = np.clip(refs[sources] + rng.normal(0, 0.03, refs[sources].shape), 0, 1).astype(np.float32)
    queries = np.concatenate([copies, textured((48, 48), 10, seed=8)])
    values, index = SSIMSearch(candidates=20, verify=5, stride=3).fit(refs).topk(queries, k=3)
    np.testing.assert_array_equal(index[:10, 0], sources)
    np.testing.assert_array_equal(index[:, 0], brute_force(queries, refs).argmax(1))
    np.testing.assert_allclose(values[:, 0], ssim(queries, refs[index[:, 0]]), atol=1e-6)
    assert np.all(np.diff(values, axis=1) <= 0)


def test_ssim_search_rejects_bad_parameters_and_use_before_fit():
    with pytest.raises(ValueError, match="verify"):
        SSIMSearch(candidates=5, verify=10)
    with pytest.raises(RuntimeError, match="fit"):
        SSIMSearch().topk(np.zeros((1, 16, 16), np.float32))
