"""Re-identification retrieval post-processing (database-side augmentation, average query expansion) against
hand-computed closed forms, its place in the figures, and the attacker's generator-smoothing augmentation."""

import numpy as np
import pytest

from attacks.reid.augment import make_augmenter
from attacks.reid.evaluate import (EvaluationParams, evaluate_embeddings, expanded_retrieval_sets,
                                   expansion_depths)
from attacks.reid.expansion import database_augmentation, query_expansion
from attacks.reid.retrieval import pml_retrieval

# three unit vectors: cos(g0, g1) = 0.8, cos(g1, g2) = 0.6, cos(g0, g2) = 0
GALLERY = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], np.float32)


def unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def test_query_expansion_closed_form():
    query = np.array([[1.0, 0.0]], np.float32)
    # k = 1: its best match is g0 (cosine 1) → (1 + 1, 0) → (1, 0)
    np.testing.assert_allclose(query_expansion(query, GALLERY, 1), [[1.0, 0.0]], atol=1e-6)
    # k = 2: g0 weighted 1, g1 weighted 0.8 → (1 + 1 + 0.64, 0.48)
    np.testing.assert_allclose(query_expansion(query, GALLERY, 2)[0], unit([2.64, 0.48]), atol=1e-6)
    # g2 is orthogonal: weight 0, so asking for every gallery row changes nothing
    np.testing.assert_allclose(query_expansion(query, GALLERY, 9)[0], unit([2.64, 0.48]), atol=1e-6)
    # alpha = 0: Chum's plain average
    np.testing.assert_allclose(query_expansion(query, GALLERY, 2, alpha=0)[0], unit([2.8, 0.6]), atol=1e-6)
    np.testing.assert_allclose(query_expansion(query, GALLERY, 9, alpha=0)[0], unit([2.8, 1.6]), atol=1e-6)
    # alpha = 2: g1 weighted 0.64
    np.testing.assert_allclose(query_expansion(query, GALLERY, 2, alpha=2)[0], unit([2.512, 0.384]), atol=1e-6)
    # k = 0 is the identity
    np.testing.assert_array_equal(query_expansion(query, GALLERY, 0), query)


def test_database_augmentation_excludes_each_row_itself():
    out = database_augmentation(GALLERY, 1)
    # g0's nearest other row is g1 (0.8 > 0); g1's is g0 (0.8 > 0.6); g2's is g1 (0.6 > 0)
    np.testing.assert_allclose(out[0], unit([1.64, 0.48]), atol=1e-6)
    np.testing.assert_allclose(out[1], unit([1.6, 0.6]), atol=1e-6)
    np.testing.assert_allclose(out[2], unit([0.48, 1.36]), atol=1e-6)
    # the plain average makes the mutual neighbours g0 and g1 one vector (a tie in every ranking)
    plain = database_augmentation(GALLERY, 1, alpha=0)
    np.testing.assert_allclose(plain[0], plain[1], atol=1e-6)
    assert not np.allclose(out[0], out[1], atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(database_augmentation(GALLERY, 2), axis=1), 1.0, atol=1e-6)


def test_sanity_set_expansion_is_symmetric_and_matches_pml():
    """Queries = gallery for the held-out set: the expanded set serves as both, so PML's ref_includes_query
    applies, and with k = 0 the embeddings are unchanged."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.repeat(np.arange(4), 3)
    q, g = expanded_retrieval_sets(x, x, labels, EvaluationParams(database_augmentation=1, query_expansion=1),
                                   queries_are_gallery=True)
    assert q is g
    gallery = database_augmentation(x, 1)
    expected = query_expansion(gallery, gallery, 1, exclude_self=True)
    np.testing.assert_allclose(q, expected, atol=1e-6)
    q0, g0 = expanded_retrieval_sets(x, x, labels, EvaluationParams(database_augmentation=0, query_expansion=0),
                                     queries_are_gallery=True)
    np.testing.assert_array_equal(q0, x)


def test_expansion_depth_is_capped_by_the_images_a_patient_has():
    params = EvaluationParams(database_augmentation=2, query_expansion=1)
    assert expansion_depths(np.repeat(np.arange(5), 4), params) == (2, 1)  # 4 views: 3 partners
    assert expansion_depths(np.repeat(np.arange(5), 2), params) == (1, 1)  # 2 scans: 1 partner
    assert expansion_depths(np.arange(5), params) == (0, 0)  # one image each: nothing to average with


def chain_patients():
    """Two patients whose images lie on short arcs that interleave: patient 0 at 0°, 17°, 36°; patient 1 at
    28°, 47°, 67° (no two distances from one image are equal: no ties). Plain cosine ranks a foreign image
    before a same-patient partner two hops away: AP@R (R = 2) per image 1/2, 1/4, 0, 0, 1/4, 1/2 → 0.25."""
    angles = {0: [0, 17, 36], 1: [28, 47, 67]}
    emb, labels = [], []
    for patient, degrees in angles.items():
        for d in degrees:
            emb.append([np.cos(np.radians(d)), np.sin(np.radians(d))])
            labels.append(patient)
    return np.array(emb, np.float32), np.array(labels)


def test_expansion_changes_the_sanity_figure_by_what_pml_computes_on_the_expanded_set():
    emb, labels = chain_patients()
    names = [str(v) for v in labels]
    train = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    plain = EvaluationParams(database_augmentation=0, query_expansion=0, n_boot=20, n_permutations=10)
    expanded = EvaluationParams(database_augmentation=1, query_expansion=1, n_boot=20, n_permutations=10)
    values = []
    for params in (plain, expanded):
        result = evaluate_embeddings(train, ["a", "b"], emb, names, emb[:1], [None], params, seed=0)
        values.append(result.figures["sanity/map_at_r"].value)
        q, g = expanded_retrieval_sets(emb, emb, labels, params, queries_are_gallery=True)
        reference = pml_retrieval(q, labels, g, labels, ref_includes_query=True)["mean_average_precision_at_r"]
        assert result.figures["sanity/map_at_r"].value == pytest.approx(reference)
        # the plain-cosine value is always kept beside it
        plain_reference = pml_retrieval(emb, labels, emb, labels, True)["mean_average_precision_at_r"]
        assert result.details["sanity"]["map_at_r_plain_cosine"] == pytest.approx(plain_reference)
    # averaging with one neighbour, twice, pulls each arc together: 0.25 → 5/12 on this chain
    assert values == pytest.approx([0.25, 5 / 12])


def high_frequency_energy(images):
    lap = images[:, 1:-1, 1:-1] * 4 - images[:, :-2, 1:-1] - images[:, 2:, 1:-1] - images[:, 1:-1, :-2] \
        - images[:, 1:-1, 2:]
    return (lap ** 2).mean(axis=(1, 2))


def test_generator_blur_smooths_about_half_of_the_training_images():
    """Planted: a checkerboard of 2-pixel squares. Two steps remove most of its Laplacian energy: the default's
    3 × 3 blur (p = 0.2) and the generator blur (σ 0.3…2 px, p = 0.5). So about 20 % of the images lose it
    without the generator blur and about 1 − 0.8 · 0.5 = 60 % with it (400 images: SE ≈ 0.025)."""
    squares = np.indices((48, 48)) // 2
    checker = (squares.sum(axis=0) % 2).astype(np.float32) * 0.4 + 0.3
    batch = np.repeat(checker[None], 400, axis=0)
    base = high_frequency_energy(batch)
    plain = high_frequency_energy(make_augmenter("default", 2, seed=1)(batch)) / base
    blurred = high_frequency_energy(make_augmenter("default", 2, seed=1, generator_blur=2.0)(batch)) / base
    assert abs((plain < 0.1).mean() - 0.2) < 0.075
    assert abs((blurred < 0.1).mean() - 0.6) < 0.075
