"""The chunked search must return exactly the brute-force top-k, whatever the chunk sizes."""

import numpy as np
import pytest
import torch

from audit import search
from audit.errors import AuditInputError
from audit.registry import Runtime
from audit.search import normalise_rows, search_topk, topk_similarity


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


# faiss-cpu is installed by `make test` (the dev extra): these tests must run, not skip
@pytest.mark.parametrize("metric", ["cosine", "ncc", "dot", "l2"])
@pytest.mark.parametrize("chunks", [(7, 40), (1024, 16384)])
def test_faiss_kernel_agrees_with_brute_force(metric, chunks):
    rng = np.random.default_rng(5)
    q, r = rng.normal(size=(30, 16)).astype(np.float32), rng.normal(size=(300, 16)).astype(np.float32) + 0.2
    qn = normalise_rows(torch.from_numpy(q), metric).numpy().astype(np.float64)
    rn = normalise_rows(torch.from_numpy(r), metric).numpy().astype(np.float64)
    sims = -((qn[:, None] - rn[None]) ** 2).sum(-1) if metric == "l2" else qn @ rn.T
    want_i = np.argsort(-sims, axis=1, kind="stable")[:, :4]
    s, i = topk_similarity(q, r, k=4, metric=metric, backend="faiss", chunk_queries=chunks[0],
                           chunk_references=chunks[1])
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_allclose(s, np.take_along_axis(sims, want_i, 1), atol=1e-4)


def test_auto_backend_switches_to_faiss_above_the_threshold(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert search.choose_backend("auto", 100, 100, cpu) == "torch"
    big = int(np.ceil(np.sqrt(search.FAISS_MIN_PAIRS)))
    assert search.choose_backend("auto", big, big, cpu) == "faiss"
    assert search.choose_backend("auto", big, big, gpu) == "torch"  # faiss-cpu never takes a GPU search
    assert search.choose_backend("torch", big, big, cpu) == "torch"
    # the auto path really calls the faiss kernel above the threshold, and gives the torch answer
    calls = []
    kernel = search.BLOCK_KERNELS["faiss"]
    monkeypatch.setitem(search.BLOCK_KERNELS, "faiss", lambda *a: calls.append(1) or kernel(*a))
    monkeypatch.setattr(search, "FAISS_MIN_PAIRS", 50 * 200)
    rng = np.random.default_rng(7)
    q, r = rng.random((50, 12)).astype(np.float32), rng.random((200, 12)).astype(np.float32)
    s_auto, i_auto = topk_similarity(q, r, k=3, metric="ncc", chunk_references=64)
    assert len(calls) == 4  # one per reference chunk
    s_torch, i_torch = topk_similarity(q, r, k=3, metric="ncc", backend="torch")
    np.testing.assert_array_equal(i_auto, i_torch)
    np.testing.assert_allclose(s_auto, s_torch, atol=1e-5)


def brute_force_recall(q, r, approximate_index, k):
    _, exact = brute_force_topk(normalise_rows(torch.from_numpy(q), "cosine").numpy(),
                                normalise_rows(torch.from_numpy(r), "cosine").numpy(), k)
    return np.mean([len(set(a) & set(e)) / k for a, e in zip(approximate_index, exact)]), exact


def clustered(rng, n, centres, spread=0.3):
    return (centres[rng.integers(0, len(centres), n)] + spread * rng.normal(size=(n, centres.shape[1]))).astype(
        np.float32)


def test_ivf_searching_every_cell_is_exact_and_says_so():
    rng = np.random.default_rng(8)
    centres = rng.normal(size=(20, 24))
    r, q = clustered(rng, 2000, centres), clustered(rng, 60, centres)
    result = search_topk(q, r, k=5, metric="cosine", method="ivf", options={"nlist": 16, "nprobe": 16})
    recall, exact = brute_force_recall(q, r, result.index, 5)
    np.testing.assert_array_equal(result.index, exact)
    assert result.info["recall_at_k"]["value"] == 1.0 and result.info["nlist"] == 16
    assert result.info["recall_queries"] == 60  # fewer queries than the default sample: all are checked


@pytest.mark.parametrize("method, options", [("ivf", {"nlist": 64, "nprobe": 1}),
                                             ("hnsw", {"neighbours": 4, "ef_search": 5, "ef_construction": 8})])
def test_measured_recall_is_the_recall_against_brute_force(method, options):
    # unstructured data and a deliberately weak index: the recall must come out below 1 and equal to the one
    # computed independently from the dense similarity matrix
    rng = np.random.default_rng(9)
    r, q = rng.normal(size=(3000, 32)).astype(np.float32), rng.normal(size=(80, 32)).astype(np.float32)
    result = search_topk(q, r, k=10, metric="cosine", method=method, options={**options, "recall_queries": 0})
    recall, _ = brute_force_recall(q, r, result.index, 10)
    assert result.info["recall_at_k"]["value"] == pytest.approx(recall, abs=1e-12)
    assert recall < 0.9
    low, high = result.info["recall_at_k"]["ci_low"], result.info["recall_at_k"]["ci_high"]
    assert low < recall < high
    # scores are the true similarities of the returned references
    qn = normalise_rows(torch.from_numpy(q), "cosine").numpy()
    rn = normalise_rows(torch.from_numpy(r), "cosine").numpy()
    valid = result.index >= 0
    np.testing.assert_allclose(result.scores[valid], np.einsum("qd,qkd->qk", qn, rn[result.index.clip(0)])[valid],
                               atol=1e-5)


def test_hnsw_finds_planted_neighbours_deterministically():
    rng = np.random.default_rng(10)
    centres = rng.normal(size=(30, 16)) * 3
    r, q = clustered(rng, 3000, centres), clustered(rng, 300, centres)
    first = search_topk(q, r, k=5, metric="cosine", method="hnsw", runtime=Runtime(seed=1))
    again = search_topk(q, r, k=5, metric="cosine", method="hnsw", runtime=Runtime(seed=1))
    np.testing.assert_array_equal(first.index, again.index)
    recall, _ = brute_force_recall(q, r, first.index, 5)
    assert recall > 0.95  # HNSW's defaults on clustered data (an unstructured weak index scored < 0.9 above)
    assert first.info["recall_queries"] == 256  # the default sample, drawn with the seed
    assert abs(first.info["recall_at_k"]["value"] - recall) < 0.03


def test_search_methods_are_registry_components():
    result = search_topk(np.eye(3, dtype=np.float32), np.eye(3, dtype=np.float32), k=1, method="exact")
    np.testing.assert_array_equal(result.index[:, 0], [0, 1, 2])
    assert result.info["kernel"] == "torch" and result.info["method"] == "exact"
    with pytest.raises(AuditInputError, match="unknown parameter 'nprobes'"):
        search_topk(np.eye(3), np.eye(3), method="ivf", options={"nprobes": 3})
    with pytest.raises(AuditInputError, match="unknown search 'annoy'"):
        search_topk(np.eye(3), np.eye(3), method="annoy")
