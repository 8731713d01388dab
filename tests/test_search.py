"""The chunked search must return exactly the brute-force top-k, whatever the chunk sizes."""

import numpy as np
import pytest
import torch

from audit.search import faiss_available, normalise_rows, topk_similarity


def brute_force_topk(q: np.ndarray, r: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = q.astype(np.float64) @ r.astype(np.float64).T  # the dense matrix: fine for a test
    idx = np.empty((len(q), min(k, len(r))), dtype=np.int64)
    for row in range(len(q)):
        # lexsort: last key primary → score descending, then index ascending
        order = np.lexsort((np.arange(len(r)), -sims[row]))
        idx[row] = order[:idx.shape[1]]
    return np.take_along_axis(sims, idx, axis=1), idx


@pytest.mark.parametrize("chunks", [(1, 1), (3, 7), (16, 5), (64, 1000), (1000, 1000)])
def test_integer_dot_with_many_ties_is_exact(chunks):
    rng = np.random.default_rng(0)
    # small integers: float32 products are exact, and many scores tie, so tie order is really tested
    q = rng.integers(-2, 3, size=(37, 6)).astype(np.float32)
    r = rng.integers(-2, 3, size=(53, 6)).astype(np.float32)
    want_s, want_i = brute_force_topk(q, r, 8)
    got_s, got_i = topk_similarity(q, r, k=8, metric="dot", chunk_queries=chunks[0], chunk_references=chunks[1])
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_s, want_s.astype(np.float32))


@pytest.mark.parametrize("metric", ["cosine", "ncc"])
@pytest.mark.parametrize("chunks", [(1, 2), (7, 11), (50, 64), (4096, 4096)])
def test_random_float_matches_brute_force(metric, chunks):
    rng = np.random.default_rng(1)
    q = rng.normal(size=(41, 33)).astype(np.float32) + 0.3
    r = rng.normal(size=(97, 33)).astype(np.float32) * 2 + 1
    qn = normalise_rows(torch.from_numpy(q), metric).numpy()
    rn = normalise_rows(torch.from_numpy(r), metric).numpy()
    want_s, want_i = brute_force_topk(qn, rn, 5)
    got_s, got_i = topk_similarity(q, r, k=5, metric=metric, chunk_queries=chunks[0], chunk_references=chunks[1])
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_s, want_s, atol=1e-5)


@pytest.mark.parametrize("chunks", [(5, 7), (64, 1000)])
def test_l2_is_negative_squared_distance(chunks):
    rng = np.random.default_rng(6)
    q, r = rng.random((23, 10)).astype(np.float32), rng.random((71, 10)).astype(np.float32)
    dist = ((q[:, None].astype(np.float64) - r[None]) ** 2).sum(-1)
    want_i = np.argsort(dist, axis=1, kind="stable")[:, :4]
    s, i = topk_similarity(q, r, k=4, metric="l2", chunk_queries=chunks[0], chunk_references=chunks[1])
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_allclose(s, -np.take_along_axis(dist, want_i, 1), atol=1e-5)


def test_ncc_is_pearson_correlation_and_cosine_is_normalised_dot():
    rng = np.random.default_rng(2)
    q, r = rng.random((3, 4, 5)), rng.random((6, 4, 5))  # image-shaped rows are flattened
    s, i = topk_similarity(q.astype(np.float32), r.astype(np.float32), k=6, metric="ncc")
    pearson = np.corrcoef(q.reshape(3, -1), r.reshape(6, -1))[:3, 3:]
    np.testing.assert_allclose(s, np.take_along_axis(pearson, i, 1), atol=1e-6)
    s, i = topk_similarity(q.astype(np.float32), r.astype(np.float32), k=2, metric="cosine")
    qf, rf = q.reshape(3, -1), r.reshape(6, -1)
    cos = (qf @ rf.T) / np.linalg.norm(qf, axis=1)[:, None] / np.linalg.norm(rf, axis=1)[None]
    np.testing.assert_allclose(s, np.sort(cos, axis=1)[:, ::-1][:, :2], atol=1e-6)


def test_k_larger_than_references_and_constant_rows():
    q = np.ones((2, 8), np.float32)  # constant: NCC undefined → 0 by convention
    r = np.random.default_rng(3).random((3, 8)).astype(np.float32)
    s, i = topk_similarity(q, r, k=10, metric="ncc")
    assert s.shape == (2, 3) and i.shape == (2, 3)
    np.testing.assert_array_equal(s, 0.0)
    np.testing.assert_array_equal(i, [[0, 1, 2], [0, 1, 2]])  # all tied → index order


def test_exact_copy_is_found():
    rng = np.random.default_rng(4)
    r = rng.random((200, 64)).astype(np.float32)
    q = np.concatenate([r[[17, 123]], rng.random((1, 64)).astype(np.float32)])
    s, i = topk_similarity(q, r, k=1, metric="ncc", chunk_references=50)
    assert i[0, 0] == 17 and i[1, 0] == 123
    np.testing.assert_allclose(s[:2, 0], 1.0, atol=1e-5)
    assert s[2, 0] < 0.9


@pytest.mark.skipif(not faiss_available(), reason="faiss-cpu is not installed (optional extra)")
def test_faiss_backend_agrees_with_torch():
    rng = np.random.default_rng(5)
    q, r = rng.normal(size=(30, 16)).astype(np.float32), rng.normal(size=(300, 16)).astype(np.float32)
    s1, i1 = topk_similarity(q, r, k=4, metric="cosine")
    s2, i2 = topk_similarity(q, r, k=4, metric="cosine", backend="faiss")
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-5)
