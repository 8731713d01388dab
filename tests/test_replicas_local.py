"""The local scorer (`ncc_local`): template NCC against brute force, a planted partial copy found with its region,
and the region shown in the outputs."""

import json

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from attacks.replicas.local import box_sums, detail, template_ncc, window_grid
from attacks.replicas.registry import make_scorer
from audit.metrics.similarity import ncc


def textured(n, shape, seed):
    rng = np.random.default_rng(seed)
    out = np.stack([gaussian_filter(rng.random(shape), 1.0) for _ in range(n)])
    lo = out.reshape(n, -1).min(1).reshape((n,) + (1,) * len(shape))
    hi = out.reshape(n, -1).max(1).reshape((n,) + (1,) * len(shape))
    return ((out - lo) / (hi - lo)).astype(np.float32)


@pytest.mark.parametrize("template,region", [((6, 5), (10, 9)), ((3, 4, 3), (6, 6, 5))])
def test_template_ncc_is_the_best_ncc_over_positions_by_brute_force(template, region):
    rng = np.random.default_rng(1)
    templates = torch.from_numpy(rng.random((4, *template)).astype(np.float32))
    regions = torch.from_numpy(rng.random((4, *region)).astype(np.float32))
    regions[2][tuple(slice(1, 1 + t) for t in template)] = templates[2] * 0.5 + 0.2  # an exact (affine) match
    best, offset = template_ncc(templates, regions)
    offsets = [range(r - t + 1) for r, t in zip(region, template)]
    for b in range(4):
        values = {}
        for o in np.ndindex(*[len(x) for x in offsets]):
            patch = regions[b][tuple(slice(a, a + t) for a, t in zip(o, template))].numpy()
            values[o] = ncc(templates[b].numpy()[None], patch[None])[0]
        where = max(values, key=values.get)
        assert best[b].item() == pytest.approx(values[where], abs=1e-5)
        assert tuple(offset[b].tolist()) == where
    assert best[2].item() == pytest.approx(1.0, abs=1e-5) and offset[2].tolist() == [1] * len(template)


def test_box_sums_and_window_grid():
    x = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(2, 5, 6)
    sums = box_sums(x, (2, 3))
    expected = torch.stack([x[:, i:i + 2, j:j + 3].sum(dim=(1, 2)) for i in range(4) for j in range(4)], 1)
    np.testing.assert_allclose(sums.reshape(2, -1).numpy(), expected.numpy())
    starts = window_grid((10, 7), (4, 4), (4, 2))
    assert sorted({tuple(s) for s in starts}) == [(a, b) for a in (0, 4, 6) for b in (0, 2, 3)]


@pytest.fixture(scope="module")
def planted():
    """30 training images; queries: 4 new images, each with a region of a training image pasted in (44% and 56%
    of each side), and 4 new images untouched."""
    train = textured(30, (64, 64), seed=2)
    new = textured(8, (64, 64), seed=3)
    queries = new.copy()
    pastes = [(5, (8, 20), (30, 4), (28, 28)), (11, (0, 0), (10, 24), (36, 36)),
              (17, (30, 30), (0, 0), (30, 34)), (23, (20, 8), (24, 22), (28, 36))]
    for q, (src, at_train, at_query, size) in enumerate(pastes):
        region = tuple(slice(a, a + s) for a, s in zip(at_train, size))
        queries[q][tuple(slice(a, a + s) for a, s in zip(at_query, size))] = train[src][region]
    return train, queries, pastes


def test_local_scorer_finds_partial_copies_and_their_regions(planted):
    train, queries, pastes = planted
    local = make_scorer("ncc_local").fit(train)
    result = local.score(queries)
    whole = make_scorer("ncc").fit(train).score(queries)
    for q, (src, at_train, at_query, size) in enumerate(pastes):
        assert result.nearest[q] == src and result.scores[q] == pytest.approx(1.0, abs=1e-3)
        # the matched window lies inside the pasted region, at the paste's displacement
        qb, tb = result.query_box[q], result.train_box[q]
        assert np.all(qb[0] >= at_query) and np.all(qb[1] <= np.add(at_query, size))
        np.testing.assert_array_equal(tb[0] - qb[0], np.subtract(at_train, at_query))
    # new images stay well below, and the whole-image NCC does not see the partial copies
    assert result.scores[4:].max() < 0.8
    assert whole.scores[:4].max() < 0.6
    # a flat image has no informative window: no match, score 0
    assert local.score(np.full((1, 64, 64), 0.5, np.float32)).scores[0] == 0.0
    # scores do not depend on how queries are batched (the stage streams them)
    halves = [local.score(queries[:3]), local.score(queries[3:])]
    np.testing.assert_array_equal(np.concatenate([h.scores for h in halves]), result.scores)
    np.testing.assert_array_equal(np.concatenate([h.query_box for h in halves]), result.query_box)
    # the fitted state round-trips (what `audit run` caches)
    restored = make_scorer("ncc_local").restore(local.fitted_state())
    np.testing.assert_array_equal(restored.score(queries).scores, result.scores)


def test_local_scorer_3d_finds_a_pasted_block():
    train = textured(12, (20, 20, 20), seed=4)
    query = textured(1, (20, 20, 20), seed=5)
    query[0, 2:14, 5:17, 4:16] = train[7, 6:18, 0:12, 8:20]
    result = make_scorer("ncc_local").fit(train).score(query)
    assert result.nearest[0] == 7 and result.scores[0] == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_array_equal(result.train_box[0, 0] - result.query_box[0, 0], [4, -5, 4])


@pytest.mark.parametrize("shape,sigma", [((3, 20, 17), 2.0), ((2, 9, 10, 11), 1.0)])
def test_detail_is_the_image_minus_scipys_gaussian_with_its_own_mirrored_border(shape, sigma):
    x = np.random.default_rng(7).random(shape).astype(np.float32)
    expected = np.stack([im - gaussian_filter(im, sigma, mode="mirror", truncate=3.0) for im in x])
    np.testing.assert_allclose(detail(torch.from_numpy(x), sigma).numpy(), expected, atol=1e-5)
    ramp = torch.linspace(0, 1, 32).repeat(32, 1)[None]
    assert detail(ramp, 2.0)[0, 8:-8, 8:-8].abs().max() < 1e-5  # a linear ramp has no detail inside
    assert detail(ramp, 0) is ramp


def test_cli_draws_the_copied_region(tmp_path, planted):
    from tests.test_replicas import write_png

    train, queries, pastes = planted
    for name, images in (("train", train), ("holdout", textured(20, (64, 64), seed=6)), ("synthetic", queries)):
        (tmp_path / name).mkdir()
        for i, image in enumerate(images):
            write_png(tmp_path / name / f"{name[0]}{i:02d}.png", image)
    from audit.cli import main

    assert main(["replicas", "--train", str(tmp_path / "train"), "--holdout", str(tmp_path / "holdout"),
                 "--synthetic", str(tmp_path / "synthetic"), "--out", str(tmp_path / "out"),
                 "--scorers", "ncc,ncc_local", "--gate", "0.9"]) == 0
    summary = json.loads((tmp_path / "out" / "replicas.json").read_text())
    top = {p["synthetic"]: p for p in summary["top_pairs"][:4]}
    assert set(top) == {"s00.png", "s01.png", "s02.png", "s03.png"}
    for q, (src, at_train, at_query, size) in enumerate(pastes):
        pair = top[f"s{q:02d}.png"]
        assert pair["is_replica"] and pair["nearest_train"] == f"t{src:02d}.png"
        assert pair["region"]["scorer"] == "ncc_local"
        box = np.array(pair["region"]["synthetic_box"])
        assert np.all(box[0] >= at_query) and np.all(box[1] <= np.add(at_query, size))
    assert (tmp_path / "out" / "pairs.png").stat().st_size > 0


def test_images_too_small_for_the_local_level_skip_it_with_a_stated_reason(tmp_path, capsys):
    """24² images give 6-px windows, no wider than the 2D detail filter's reach (3σ = 6 px): the default set runs
    without ncc_local and says why (stderr and replicas.json), never a traceback; 27² is the smallest that keeps
    it. Asked for alone, it is a one-line input error (exit 2)."""
    from audit.cli import main
    from tests.test_replicas import make_folders, write_png

    local = make_scorer("ncc_local")
    assert "6 px" in local.unsupported((24, 24)) and "at least 27 px" in local.unsupported((24, 24))
    assert local.unsupported((27, 27)) is None and local.unsupported((8, 8, 8)) is None
    root = make_folders(tmp_path, write_png, ".png", (24, 24), n_train=8, n_holdout=8, n_novel=2)
    args = ["replicas", "--train", str(root / "train"), "--holdout", str(root / "holdout"), "--synthetic",
            str(root / "synthetic"), "--out", str(root / "out"), "--gate", "0.99"]
    assert main(args + ["--scorers", "ncc,ncc_local"]) == 0
    assert "note: scorer ncc_local skipped: images of 24x24 px" in capsys.readouterr().err
    summary = json.loads((root / "out" / "replicas.json").read_text())
    assert summary["parameters"]["scorers"] == ["ncc"] and list(summary["scorers"]) == ["ncc"]
    assert "detail filter" in summary["skipped_scorers"]["ncc_local"]
    assert main(args + ["--scorers", "ncc_local"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no scorer can score these images" in err and "\n" not in err


@pytest.fixture(scope="module")
def burned_in():
    """40 training images with a dark band at the top (as exported scans have); 8 of them carry the same
    annotation text burned in at one place of the band; 10 holdout-like images, the first 3 with the text too;
    plus a partial copy of a training region away from the text."""
    rng = np.random.default_rng(0)
    train, new = textured(40, (64, 64), 2), textured(10, (64, 64), 5)
    train[:, :18] *= 0.05
    new[:, :18] *= 0.05
    text = rng.random((10, 26)) > 0.55

    def burn(image):
        out = image.copy()
        out[4:14, 30:56] = np.where(text, 1.0, out[4:14, 30:56])
        return out

    burned = list(range(0, 16, 2))
    for i in burned:
        train[i] = burn(train[i])
    new[:3] = np.stack([burn(x) for x in new[:3]])
    copy = new[5].copy()
    copy[30:60, 2:32] = train[7, 20:50, 20:50]
    return train, np.concatenate([new, copy[None]]), text, burned


def test_burned_in_graphics_are_found_where_they_were_planted(burned_in):
    from attacks.replicas.local import burned_in_graphics

    train, _, text, burned = burned_in
    masks = burned_in_graphics(train, need=4, reach=6)
    for i in burned:  # every text pixel of every burned image is masked
        assert masks[i][4:14, 30:56][text].all()
    others = np.setdiff1d(np.arange(40), burned)
    assert masks[others].mean() < 0.01  # chance coincidences of the other images: rare, small
    assert masks[burned][:, 30:].mean() == 0.0  # nothing below the band in the burned images either
    assert burned_in_graphics(train[others], need=4) is None or burned_in_graphics(train[others], need=4).mean() < 0.01


def test_masking_burned_in_graphics_keeps_them_out_of_the_local_null_but_not_real_copies(burned_in):
    train, queries, _, _ = burned_in
    plain = make_scorer("ncc_local", {"mask_graphics": False}).fit(train).score(queries)
    masked_scorer = make_scorer("ncc_local").fit(train)  # masking is the default
    masked = masked_scorer.score(queries)
    clean = slice(3, 10)
    # without the mask, the 3 new images carrying the text match a training window perfectly: a "copy"
    assert plain.scores[:3].min() > 0.999 and plain.scores[clean].max() < 0.95
    # with it, they score like the other new images; the real partial copy still scores 1 with its source
    assert masked.scores[:3].max() < 0.95
    assert masked.scores[10] == pytest.approx(1.0, abs=1e-3) and masked.nearest[10] == 7
    np.testing.assert_allclose(masked.scores[clean], plain.scores[clean], atol=0.05)
    graphics = masked_scorer.components()["burned_in_graphics"]
    assert graphics["masked"] and graphics["training_images_with_graphics"] >= 8
    # the fitted state round-trips with its mask
    restored = make_scorer("ncc_local").restore(masked_scorer.fitted_state())
    np.testing.assert_array_equal(restored.score(queries).scores, masked.scores)


def test_recentring_moves_a_straddling_window_into_a_pasted_region():
    """64² images, 16-px windows on an 8-px query grid (0, 8, …, 48): a region pasted at rows and columns 3–22
    (20 px) holds no grid window, only windows starting at 3–7 px — reached by moving a grid window by a
    quarter step (2 px) or two. Without re-centring the copy is not found at 1; with it it is,
    with its source and a box inside the region. New images stay below every copy. (An option, off by default.)"""
    train = textured(30, (64, 64), seed=2)
    queries = textured(10, (64, 64), seed=3)
    pastes = [(4, (30, 9)), (13, (0, 40)), (22, (41, 2)), (27, (17, 33))]  # (source, region start in the source)
    for q, (src, (r, c)) in enumerate(pastes):
        queries[q, 3:23, 3:23] = train[src, r:r + 20, c:c + 20]
    # (graphics masking off: these small random textures share 8-bit values at the same place by chance)
    off = make_scorer("ncc_local", {"recentre_windows": 0, "mask_graphics": False}).fit(train).score(queries)
    on = make_scorer("ncc_local", {"recentre_windows": 3, "mask_graphics": False}).fit(train).score(queries)
    assert off.scores[:4].max() < 0.99  # every grid window straddles the region's border
    for q, (src, (r, c)) in enumerate(pastes):
        assert on.scores[q] == pytest.approx(1.0, abs=1e-3) and on.nearest[q] == src
        qb, tb = on.query_box[q], on.train_box[q]
        assert np.all(qb[0] >= 3) and np.all(qb[1] <= 23)
        np.testing.assert_array_equal(tb[0] - qb[0], [r - 3, c - 3])
    assert on.scores[4:].max() < on.scores[:4].min() - 0.2
    assert np.all(on.scores >= off.scores)  # re-centring only adds windows to the maximum
    # off by default (2D and 3D): on the tuning split it raised the null as much as the copies (docs/replicas.md)
    assert make_scorer("ncc_local").resolved_recentre(2) == 0 == make_scorer("ncc_local").resolved_recentre(3)


def test_query_scales_find_a_magnified_crop_and_its_region():
    """A crop of 40 px of a training image resized back to 64 px (magnification 1.6, as a crop-and-resize copy
    is): searched only at the query's scale its windows match nothing (score at the new images' level); with the
    query also searched at 1/1.6 it is found with its source, and the box in the training image is where the
    query's box maps to."""
    from skimage.transform import resize

    train = textured(30, (64, 64), seed=2)
    new = textured(4, (64, 64), seed=3)
    crops = [(5, (8, 12)), (23, (16, 16))]
    copies = np.stack([resize(train[s][r:r + 40, c:c + 40], (64, 64), order=1, mode="edge", preserve_range=True)
                       for s, (r, c) in crops]).astype(np.float32)
    queries = np.concatenate([copies, new])
    plain = make_scorer("ncc_local").fit(train).score(queries)
    scaled = make_scorer("ncc_local", {"query_scales": [1.6]}).fit(train).score(queries)
    assert plain.scores[:2].max() < plain.scores[2:].max() + 0.1  # not told apart from new images
    for q, (src, (r, c)) in enumerate(crops):
        assert scaled.nearest[q] == src and scaled.scores[q] > 0.95
        np.testing.assert_allclose(scaled.train_box[q, 0], np.add((r, c), scaled.query_box[q, 0] / 1.6), atol=2)
    np.testing.assert_allclose(scaled.scores[2:], plain.scores[2:], atol=0.05)
    assert scaled.scores[2:].max() < 0.8
    with pytest.raises(Exception, match="query_scales"):
        make_scorer("ncc_local", {"query_scales": [0.0]})
