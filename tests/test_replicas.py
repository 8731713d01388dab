"""Replica scorers, calibration, combination and the `audit replicas` folder CLI, on planted ground truth."""

import csv
import json

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from scipy.stats import norm

from attacks.replicas.calibrate import calibrate, calibrated_threshold, label_metrics, read_labels_csv
from attacks.replicas.combined import MaxZCombiner, TailModel, TailPCombiner
from attacks.replicas.registry import SCORERS, make_scorer, parse_scorer_list
from audit.cli import main
from audit.errors import AuditInputError
from audit.metrics.similarity import ncc, ssim


def smooth_images(n, shape, seed, sigma=2.0):
    rng = np.random.default_rng(seed)
    out = np.stack([gaussian_filter(rng.random(shape), sigma) for _ in range(n)])
    lo = out.reshape(n, -1).min(1).reshape((n,) + (1,) * len(shape))
    hi = out.reshape(n, -1).max(1).reshape((n,) + (1,) * len(shape))
    return ((out - lo) / (hi - lo)).astype(np.float32)


# ------------------------------------------------------------------------------------------- voxel scorers


@pytest.mark.parametrize("shape", [(40, 36), (12, 14, 16)])
def test_voxel_scorers_find_planted_copies(shape):
    train = smooth_images(30, shape, seed=0)
    rng = np.random.default_rng(1)
    noisy = np.clip(train[3] + rng.normal(0, 0.03, shape), 0, 1)
    flipped = np.flip(train[21], axis=-1)
    queries = np.stack([train[12], noisy, flipped, smooth_images(1, shape, seed=9)[0]]).astype(np.float32)
    for measure in ("ncc", "ssim"):
        result = make_scorer(measure, {"k": 5}).fit(train).score(queries)
        np.testing.assert_array_equal(result.nearest[:3], [12, 3, 21])
        assert result.scores[0] == pytest.approx(1.0, abs=1e-5)
        assert result.scores[2] == pytest.approx(1.0, abs=1e-5)  # mirrored copy: the flip orientation matches
        assert result.scores[1] > 0.9 and result.scores[3] < result.scores[1] - 0.2
        assert result.topk_scores.shape == (4, 5) and np.all(np.diff(result.topk_scores, axis=1) <= 0)
    # without flips the mirrored copy is no longer found
    assert make_scorer("ncc", {"k": 5, "flips": False}).fit(train).score(queries).scores[2] < 0.6


@pytest.mark.parametrize("measure", ["ncc", "ssim"])
def test_full_shortlist_equals_brute_force(measure):
    """With a shortlist of every training image the search is exhaustive: it must return the brute-force best."""
    train = smooth_images(25, (24, 24), seed=2)
    queries = smooth_images(6, (24, 24), seed=3)
    options = {"k": 25, "flips": False} | ({"candidates": 25, "verify": 25} if measure == "ssim" else {})
    result = make_scorer(measure, options).fit(train).score(queries)
    fn = ncc if measure == "ncc" else ssim
    for q in range(len(queries)):
        values = fn(np.repeat(queries[q:q + 1], 25, 0), train)
        assert result.nearest[q] == int(np.argmax(values))
        assert result.scores[q] == pytest.approx(values.max(), abs=1e-6)


def test_ssim_scorer_is_the_ssim_search_per_orientation():
    """The shipped `ssim` scorer runs the measured SSIM search (audit.ssim_search) on each orientation: its score
    is the best over orientations of SSIMSearch's top-1 exact SSIM."""
    from audit.ssim_search import SSIMSearch

    train = smooth_images(40, (32, 32), seed=41)
    queries = np.concatenate([np.flip(train[5:7], axis=1), smooth_images(3, (32, 32), seed=42)]).astype(np.float32)
    result = make_scorer("ssim").fit(train).score(queries)
    search = SSIMSearch().fit(train)
    best = np.max([search.topk(np.ascontiguousarray(np.flip(queries, axis=axes)) if axes else queries, 1)[0][:, 0]
                   for axes in [(), (1,), (2,)]], axis=0)
    np.testing.assert_allclose(result.scores, best)
    np.testing.assert_array_equal(result.nearest[:2], [5, 6])
    described = make_scorer("ssim").fit(train).describe()
    assert described["searchers"]["as_is"]["candidates"] == 200 and described["params"]["verify"] == 5


# ------------------------------------------------------------------------------------------- calibration


def test_calibration_on_known_distributions():
    rng = np.random.default_rng(4)
    null = rng.normal(0, 1, 200_000)  # holdout→train scores ~ N(0, 1)
    synthetic = rng.normal(3, 1, 20_000)  # a model whose images sit 3 σ closer to training images
    cal = calibrate("x", null, synthetic, quantile=0.99)
    assert cal.threshold == pytest.approx(norm.ppf(0.99), abs=0.02)  # 2.326
    expected_share = norm.sf(norm.ppf(0.99) - 3)  # P(N(3,1) > 2.326) = 0.750
    assert cal.synthetic_flagged.ci_low - 0.01 < expected_share < cal.synthetic_flagged.ci_high + 0.01
    assert cal.holdout_flagged.value == pytest.approx(0.01, abs=1e-3)
    assert calibrated_threshold(np.arange(101.0), 0.9) == pytest.approx(90.0)  # linear interpolation
    with pytest.raises(AuditInputError):
        calibrated_threshold(null, 1.0)


def test_label_metrics_on_separable_and_overlapping_scores():
    labels = np.r_[np.ones(10, bool), np.zeros(40, bool)]
    scores = np.r_[np.linspace(0.8, 1.0, 10), np.linspace(0.0, 0.7, 40)]
    m = label_metrics(labels, scores, calibrated=0.75, n_boot=200)
    assert m["auc"]["value"] == 1.0 and m["optimal"]["balanced_accuracy"] == 1.0
    assert m["calibrated"]["f1"] == 1.0 and m["calibrated"]["tpr"] == 1.0
    m = label_metrics(labels, scores, calibrated=0.9, n_boot=200)  # 5 of 10 replicas above 0.9
    assert m["calibrated"]["tpr"] == 0.5 and m["calibrated"]["fpr"] == 0.0
    assert m["calibrated"]["balanced_accuracy"] == 0.75 and m["calibrated"]["f1"] == pytest.approx(2 / 3)


def test_max_z_combination_closed_form():
    combiner = MaxZCombiner().fit({"a": np.array([0.0, 2.0]), "b": np.array([10.0, 10.0, 10.0, 14.0])})
    assert combiner.means == {"a": 1.0, "b": 11.0}
    assert combiner.stds["a"] == pytest.approx(1.0) and combiner.stds["b"] == pytest.approx(np.sqrt(3.0))
    combined, decisive = combiner.combine({"a": np.array([4.0, 1.0]), "b": np.array([11.0, 11.0 + 5 * np.sqrt(3)])})
    np.testing.assert_allclose(combined, [3.0, 5.0])
    np.testing.assert_array_equal(decisive, [0, 1])


def test_tail_p_closed_form_and_monotone():
    null = np.arange(1.0, 11.0)  # n = 10 → tail m = 5 values 6..10 above u = 5, excesses 1..5, β = 3
    model = TailModel.fit(null)
    assert (model.u, model.beta, model.tail_mass) == (5.0, 3.0, 5 / 11)
    np.testing.assert_allclose(model.neg_log10_p(np.array([3.0, 13.0])),
                               [-np.log10(9 / 11), -np.log10(5 / 11 * np.exp(-8 / 3))])
    grid = np.linspace(-5, 30, 400)
    assert np.all(np.diff(model.neg_log10_p(grid)) >= 0)  # monotone: ranks within a scorer are kept
    # a scorer with a long-tailed null does not dominate the max with its outliers
    combiner = TailPCombiner().fit({"narrow": np.r_[np.zeros(95), np.full(5, 0.1)],
                                    "long": np.r_[np.zeros(95), np.linspace(1, 10, 5)]})
    combined, decisive = combiner.combine({"narrow": np.array([1.0, 0.0]), "long": np.array([0.0, 12.0])})
    assert decisive.tolist() == [0, 1] and combined[0] > combined[1]


# ------------------------------------------------------------------------------------------- registry


def test_registry_names_options_and_runtime(monkeypatch):
    from audit.registry import Runtime

    assert parse_scorer_list("ncc, ssim") == ["ncc", "ssim"]
    with pytest.raises(AuditInputError, match="unknown scorer 'nope'"):
        parse_scorer_list("ncc,nope")
    with pytest.raises(AuditInputError, match="named twice"):
        parse_scorer_list("ncc,ncc")
    # an option a scorer does not declare is an error naming what it declares (it was silently dropped before)
    with pytest.raises(AuditInputError, match="scorer 'ncc_reg': unknown parameter 'kk' \\(declared: .*max_angle"):
        make_scorer("ncc_reg", {"kk": 3})
    with pytest.raises(AuditInputError, match="scorer 'ncc': bad value for 'k'"):
        make_scorer("ncc", {"k": 0})
    # device, batch size and seed travel in the Runtime, which every scorer receives
    for name in ("ncc", "ssim", "ncc_reg", "ncc_local"):
        scorer = make_scorer(name, None, Runtime(device="cpu", batch_size=7, seed=3))
        assert scorer.runtime.batch_size == 7 and scorer.runtime.seed == 3
    assert make_scorer("ncc_reg", {"max_angle": 20}).describe()["params"]["max_angle"] == 20
    from attacks.replicas import registry

    monkeypatch.setattr(registry.SCORERS.entry("segmentation"), "target", "attacks.replicas.no_such_module_for_test")
    monkeypatch.setattr(registry.SCORERS.entry("segmentation"), "_loaded", None)
    with pytest.raises(AuditInputError, match="scorer 'segmentation' is not available"):
        make_scorer("segmentation")


def test_cli_options_reach_the_scorers_and_bad_options_are_input_errors(tmp_path, capsys):
    root = make_folders(tmp_path, write_png, ".png", (24, 24), n_train=10, n_holdout=10, n_novel=2)
    assert run_cli(root, "--scorers", "ncc,ncc_reg", "--option", "ncc_reg.max_angle=4",
                   "--option", "ncc.k=3", "--gate", "0.9") == 0
    described = json.loads((root / "out" / "replicas.json").read_text())["scorers"]
    assert described["ncc_reg"]["describe"]["params"]["max_angle"] == 4
    assert described["ncc"]["describe"]["params"]["k"] == 3
    assert run_cli(root, "--scorers", "ncc", "--option", "ncc.kk=3") == 2
    assert "unknown parameter 'kk'" in capsys.readouterr().err
    assert run_cli(root, "--scorers", "ncc", "--option", "ssim.k=3") == 2  # ssim does not run: not ignored
    assert "not among the scorers" in capsys.readouterr().err
    assert run_cli(root, "--scorers", "ncc", "--option", "ncc") == 2
    assert "expected NAME.KEY=VALUE" in capsys.readouterr().err


def test_labels_csv_errors(tmp_path):
    good = tmp_path / "labels.csv"
    good.write_text("file,is_replica\na.png,true\nb.png,0\n")
    assert read_labels_csv(good, ["a.png", "b.png", "c.png"]) == {"a.png": True, "b.png": False}
    bad = tmp_path / "bad.csv"
    bad.write_text("file,is_replica\nzzz.png,true\n")
    with pytest.raises(AuditInputError, match="not an image of the synthetic folder"):
        read_labels_csv(bad, ["a.png"])
    bad.write_text("file,label\na.png,true\n")
    with pytest.raises(AuditInputError, match="missing column\\(s\\): is_replica"):
        read_labels_csv(bad, ["a.png"])


# ------------------------------------------------------------------------------------------- CLI end to end


def write_png(path, image):
    from PIL import Image

    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(path)


def write_nifti(path, volume):
    import nibabel as nib

    nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), str(path))


def make_folders(root, writer, suffix, shape, n_train=40, n_holdout=40, n_novel=8, seed=0):
    images = smooth_images(n_train + n_holdout + n_novel, shape, seed=seed)
    for name in ("train", "holdout", "synthetic"):
        (root / name).mkdir()
    for i in range(n_train):
        writer(root / "train" / f"t{i:03d}{suffix}", images[i])
    for i in range(n_holdout):
        writer(root / "holdout" / f"h{i:03d}{suffix}", images[n_train + i])
    for i in range(n_novel):
        writer(root / "synthetic" / f"novel{i}{suffix}", images[n_train + n_holdout + i])
    writer(root / "synthetic" / f"copy{suffix}", images[7])  # the planted exact copy of t007
    return root


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def run_cli(root, *extra):
    return main(["replicas", "--train", str(root / "train"), "--holdout", str(root / "holdout"),
                 "--synthetic", str(root / "synthetic"), "--out", str(root / "out"), *extra])


def test_cli_2d_png_flags_the_planted_copy(tmp_path):
    root = make_folders(tmp_path, write_png, ".png", (48, 48))
    (tmp_path / "labels.csv").write_text("file,is_replica\ncopy.png,true\n" +
                                         "".join(f"novel{i}.png,false\n" for i in range(8)))
    assert run_cli(root, "--labels", str(tmp_path / "labels.csv"), "--quantile", "0.95", "--preset", "fast",
                   "--gate", "0.5") == 0  # at q = 0.95 one novel image in 8 may pass too: not what this checks
    rows = read_csv(root / "out" / "replicas.csv")
    assert list(rows[0]) == ["synthetic", "nearest_train", "score", "is_replica", "ncc", "ssim", "flagged_by"]
    by_name = {r["synthetic"]: r for r in rows}
    assert by_name["copy.png"]["is_replica"] == "true" and by_name["copy.png"]["nearest_train"] == "t007.png"
    assert float(by_name["copy.png"]["ncc"]) == pytest.approx(1.0, abs=1e-3)  # PNG quantisation only
    assert max(float(r["score"]) for r in rows) == float(by_name["copy.png"]["score"])
    summary = json.loads((root / "out" / "replicas.json").read_text())
    assert summary["parameters"]["quantile"] == 0.95 and summary["parameters"]["shape"] == [48, 48]
    assert summary["labels"]["combined"]["auc"]["value"] == 1.0
    assert set(summary["scorers"]) == {"ncc", "ssim"} and summary["combined"]["threshold"] > 0
    top = summary["top_pairs"][0]  # the planted copy heads the list, with the SSIM of its pair
    assert top["synthetic"] == "copy.png" and top["nearest_train"] == "t007.png"
    assert top["pair_ssim"] == pytest.approx(1.0, abs=1e-3) and top["is_replica"] is True
    assert (root / "out" / "pairs.png").stat().st_size > 0 and (root / "out" / "histograms.png").is_file()


def test_cli_3d_nifti_and_npy_with_resampling(tmp_path):
    root = make_folders(tmp_path, write_nifti, ".nii.gz", (16, 16, 16), n_train=20, n_holdout=20, n_novel=4)
    # an .npy volume of another size is resampled to the training shape
    np.save(root / "synthetic" / "big.npy", smooth_images(1, (20, 20, 20), seed=5)[0])
    assert run_cli(root, "--scorers", "ncc") == 0
    rows = {r["synthetic"]: r for r in read_csv(root / "out" / "replicas.csv")}
    assert rows["copy.nii.gz"]["nearest_train"] == "t007.nii.gz" and rows["copy.nii.gz"]["is_replica"] == "true"
    assert "big.npy" in rows and list(next(iter(rows.values())))[-2:] == ["ncc", "flagged_by"]
    assert rows["copy.nii.gz"]["flagged_by"] == "whole" and rows["big.npy"]["flagged_by"] in ("", "whole")


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    root = make_folders(tmp_path, write_png, ".png", (32, 32), n_train=6, n_holdout=6, n_novel=2)
    (tmp_path / "empty").mkdir()
    assert main(["replicas", "--train", str(tmp_path / "empty"), "--holdout", str(root / "holdout"),
                 "--synthetic", str(root / "synthetic"), "--out", str(tmp_path / "o")]) == 2
    assert "no image files" in capsys.readouterr().err
    np.save(root / "synthetic" / "volume.npy", np.zeros((8, 8, 8), np.float32))  # mixed 2D/3D
    assert run_cli(root) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "volume.npy" in err and "3D" in err
    (root / "synthetic" / "volume.npy").unlink()
    (root / "holdout" / "broken.png").write_bytes(b"not a png")  # unreadable file
    assert run_cli(root) == 2
    assert "broken.png" in capsys.readouterr().err
    (root / "holdout" / "broken.png").unlink()
    (tmp_path / "labels.csv").write_text("file,is_replica\nunknown.png,true\n")
    assert run_cli(root, "--labels", str(tmp_path / "labels.csv")) == 2
    assert "unknown.png" in capsys.readouterr().err
    assert run_cli(root, "--scorers", "ncc,bogus") == 2
    assert "bogus" in capsys.readouterr().err


def test_ncc_shift_finds_a_translated_copy_plain_ncc_scores_low():
    train = smooth_images(30, (40, 40), seed=6, sigma=1.0)
    shifted = np.roll(train[9], (3, -4), axis=(0, 1))[None]  # 7.5% / 10% of the side
    plain = make_scorer("ncc").fit(train).score(shifted)
    tolerant = make_scorer("ncc_shift").fit(train).score(shifted)
    assert tolerant.nearest[0] == 9 and tolerant.scores[0] == pytest.approx(1.0, abs=1e-5)
    assert plain.scores[0] < 0.5


def test_ncc_zoom_finds_a_crop_and_resize_copy():
    from audit.data.imageio import fit_to_shape

    train = smooth_images(30, (48, 48), seed=7, sigma=1.5)
    # a centred 40/48 crop resized back: the source magnified 1.2×
    copy = fit_to_shape(train[4][4:44, 4:44], (48, 48))[None]
    zoom = make_scorer("ncc_zoom").fit(train).score(copy)
    shift = make_scorer("ncc_shift").fit(train).score(copy)
    assert zoom.nearest[0] == 4 and zoom.scores[0] > 0.97
    assert shift.scores[0] < zoom.scores[0] - 0.1


@pytest.mark.parametrize("shape,angle_axis", [((48, 48), 0), ((20, 20, 20), 1)])
def test_ncc_reg_finds_a_rotated_shifted_copy(shape, angle_axis):
    import torch

    from audit.metrics.similarity import rotate_images, rotation_matrix

    train = smooth_images(30, shape, seed=12, sigma=2.0)
    src = torch.from_numpy(train[17:18])
    turned = rotate_images(src, rotation_matrix(10, len(shape), angle_axis))  # on the grid's edge
    moved = torch.roll(turned, (2,) + (-2,) * (len(shape) - 1), dims=tuple(range(1, len(shape) + 1)))
    queries = np.concatenate([moved.numpy(), np.flip(moved.numpy(), -1), smooth_images(1, shape, seed=77)])
    reg_scorer = make_scorer("ncc_reg", {"k": 5}).fit(train)
    reg = reg_scorer.score(queries)
    zoom = make_scorer("ncc_zoom", {"k": 5}).fit(train).score(queries)
    np.testing.assert_array_equal(reg.nearest[:2], [17, 17])
    # not 1: the copy's reflected corners (10°) do not match the source's; measured 0.926 (2D) / 0.931 (3D)
    assert reg.scores[0] > 0.9
    assert reg.scores[0] > zoom.scores[0] + 0.05  # rotation search adds what shifts and zooms cannot
    # only the as-is orientation is registered: a mirrored rotated copy keeps its shift-only score (of the images
    # as ncc_reg compares them: low-pass filtered in 2D)
    shift_only = make_scorer("ncc_shift", {"k": 5}).fit(reg_scorer.prefilter(train))
    assert reg.scores[1] == pytest.approx(shift_only.score(reg_scorer.prefilter(queries[1:2])).scores[0], abs=1e-6)
    assert reg.scores[2] < reg.scores[0] - 0.3  # a new image stays low


def test_rotated_topk_equals_brute_force_max_over_rotations():
    import torch

    from attacks.replicas.voxel import downsample, rotated_topk
    from audit.metrics.similarity import rotate_images, rotation_grid
    from audit.search import normalise_rows

    rng = np.random.default_rng(21)
    queries = rng.random((7, 40, 40)).astype(np.float32)
    refs_small = downsample(rng.random((50, 40, 40)).astype(np.float32), 16)
    rotations = rotation_grid(2, 10.0, 5.0)
    scores, index = rotated_topk(queries, refs_small, 16, rotations, k=6, batch_size=3)
    # brute force: the full NCC matrix of every rotation, maximum over rotations, top 6
    r = normalise_rows(torch.from_numpy(refs_small), "ncc")
    full = np.max([(normalise_rows(torch.from_numpy(downsample(rotate_images(torch.from_numpy(queries), m).numpy(),
                                                                16)), "ncc") @ r.T).numpy() for m in rotations], 0)
    expected = np.argsort(-full, axis=1, kind="stable")[:, :6]
    np.testing.assert_array_equal(index, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, 1), atol=1e-5)


def test_ncc_reg_prefilter_is_scipy_gaussian_in_2d_only():
    from scipy.ndimage import gaussian_filter

    from attacks.replicas.voxel import REG_PREFILTER_SIGMA

    images2d, images3d = smooth_images(3, (24, 20), seed=31), smooth_images(2, (8, 9, 10), seed=32)
    reg, ncc_scorer = make_scorer("ncc_reg"), make_scorer("ncc")
    np.testing.assert_allclose(reg.make_prefilter(2)(images2d),
                               np.stack([gaussian_filter(x, REG_PREFILTER_SIGMA[2]) for x in images2d]), atol=1e-6)
    assert reg.make_prefilter(3)(images3d) is images3d and ncc_scorer.make_prefilter(2)(images2d) is images2d
    assert make_scorer("ncc_reg", {"prefilter_sigma": 0}).make_prefilter(2)(images2d) is images2d
    # a noisy copy of a smooth image correlates better with its source once both are filtered
    rng = np.random.default_rng(33)
    noisy = images2d + rng.normal(0, 0.2, images2d.shape).astype(np.float32)
    plain = make_scorer("ncc_shift", {"k": 3}).fit(images2d).score(noisy).scores
    assert np.all(reg.fit(images2d).score(noisy).scores > plain)


def test_robust_shortlist_signature_and_merge():
    from attacks.replicas.voxel import fourier_signature, merge_shortlists

    images = smooth_images(3, (32, 32), seed=13)
    rolled = np.roll(images, (5, -3), axis=(1, 2))
    # |FFT| ignores circular shifts exactly (area downsampling by 1 keeps the 32² image)
    np.testing.assert_allclose(fourier_signature(rolled, 32), fourier_signature(images, 32), atol=1e-4)
    assert not np.allclose(fourier_signature(images[1:2], 32), fourier_signature(images[:1], 32), atol=1e-2)
    merged = merge_shortlists(np.array([[4, 2, 9], [1, 1, 1]]), np.array([[2, 7, 4], [1, 1, 1]]), 4)
    np.testing.assert_array_equal(merged, [[4, 2, 7, 9], [1, 1, 1, 1]])


def test_weighted_tail_p_gives_ncc_reg_half_the_weight():
    from attacks.replicas.combined import scorer_weights

    rng = np.random.default_rng(14)
    hold = {"ncc": rng.normal(0, 1, 200), "ncc_reg": rng.normal(0, 1, 200), "ssim": rng.normal(0, 1, 200)}
    new = {"ncc": np.array([0.0, 3.0, 0.5]), "ncc_reg": np.array([2.9, 0.0, 0.2]), "ssim": np.array([0.0, 0.0, 0.1])}
    assert scorer_weights(list(hold)) == {"ncc": 0.25, "ncc_reg": 0.5, "ssim": 0.25}
    assert scorer_weights(["ncc", "ssim"]) == {"ncc": 0.5, "ssim": 0.5}
    weighted = TailPCombiner().fit(hold)
    equal = TailPCombiner(primary_weight=None).fit(hold)
    p = {s: TailModel.fit(hold[s]).neg_log10_p(new[s]) for s in hold}
    expected = np.max([p["ncc"] + np.log10(0.75), p["ncc_reg"] + np.log10(1.5), p["ssim"] + np.log10(0.75)], 0)
    np.testing.assert_allclose(weighted.combine(new)[0], expected)
    np.testing.assert_allclose(equal.combine(new)[0], np.max([p[s] for s in hold], 0))
    assert weighted.combine(new)[1][0] == 1 and weighted.combine(new)[1][1] == 0  # the scorer that decided
    without = TailPCombiner().fit({s: hold[s] for s in ("ncc", "ssim")})
    np.testing.assert_allclose(without.combine(new)[0], np.max([p["ncc"], p["ssim"]], 0))  # unchanged rule


def test_replicas_json_says_what_ran_and_the_gate_sets_the_exit_code(tmp_path, capsys):
    import audit

    root = make_folders(tmp_path, write_png, ".png", (32, 32), n_train=20, n_holdout=30, n_novel=2)
    images = smooth_images(20, (32, 32), seed=0)  # the training images make_folders wrote
    for i in range(8):  # a synthetic set that is mostly copies
        write_png(root / "synthetic" / f"dup{i}.png", images[i])
    assert run_cli(root, "--preset", "fast") == 1  # 9 of 11 flagged: the Wilson lower bound is far above 5%
    out = capsys.readouterr().out
    assert "FAIL" in out and "cross-fitted" in out
    summary = json.loads((root / "out" / "replicas.json").read_text())
    assert summary["suite"]["version"] == audit.__version__
    assert summary["suite"]["git_commit"] is None or len(summary["suite"]["git_commit"]) == 40
    assert summary["gate"]["value"] == 0.05 and summary["gate"]["exceeded"] is True
    assert summary["parameters"]["preset"] == "fast" and summary["parameters"]["scorers"] == ["ncc", "ssim"]
    assert summary["calibration"] == {"n_train": 20, "n_holdout": 30, "n_synthetic": 11,
                                      "holdout_images_above_threshold_expected": pytest.approx(0.3)}
    described = summary["scorers"]["ssim"]["describe"]
    assert described["params"]["candidates"] == 200 and "SSIM search" in described["searchers"]["as_is"]["kind"]
    assert summary["scorers"]["ncc"]["holdout_null"]["n"] == 30
    combination = summary["combined"]["describe"]
    assert combination["combination"] == "tail_p" and combination["weights"] == {"ncc": 0.5, "ssim": 0.5}
    assert combination["tail"]["ncc"]["n"] == 30
    assert summary["holdout_flagged_crossfit"]["n"] == 30
    # the same set passes a gate above its lower bound
    assert run_cli(root, "--preset", "fast", "--gate", "0.95") == 0
    assert run_cli(root, "--preset", "fast", "--gate", "1.5") == 2


def test_crossfit_share_is_the_rule_applied_to_the_other_half():
    from attacks.replicas.pipeline import crossfit_flagged_share

    rng = np.random.default_rng(3)
    null = {"a": rng.normal(size=400), "b": rng.normal(size=400)}
    estimate = crossfit_flagged_share(null, 0.9, seed=1)
    # a threshold at the 0.9-quantile of one half flags about 10% of the exchangeable other half
    assert estimate.n == 400 and 0.05 < estimate.value < 0.16 and "cross-fitted" in estimate.method
    order = np.random.default_rng(1).permutation(400)
    halves = (order[:200], order[200:])
    flagged = 0
    for fit, test in (halves, halves[::-1]):
        combiner = TailPCombiner().fit({s: v[fit] for s, v in null.items()})
        threshold = np.quantile(combiner.combine({s: v[fit] for s, v in null.items()})[0], 0.9)
        flagged += int((combiner.combine({s: v[test] for s, v in null.items()})[0] > threshold).sum())
    assert estimate.value == flagged / 400
