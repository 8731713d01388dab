"""`audit score fidelity` (the fixed folder contract) and `FidelityStage` (figures, real floor, caching)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from audit.artifacts import ArtifactCache
from audit.cli import main
from audit.data.imageio import image_file_name, write_image_file
from audit.data.readers.folder import open_folder
from audit.metrics.fidelity_stage import FidelityStage
from audit.registry import Runtime
from audit.stages import STAGES, StageContext, StageInputs
from tests.image_factory import structured_images
from tests.test_fidelity import one_torch_thread  # noqa: F401  (autouse: one torch thread in this module too)

CONTRACT_KEYS = ("fid", "kid", "precision", "recall", "density", "coverage")


def write_folder(folder, images):
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        write_image_file(image, folder / image_file_name(f"{i:03d}", image.ndim))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    images = structured_images(60, (32, 32), seed=21)
    blurred = np.stack([gaussian_filter(im, 2.0) for im in images[36:]])
    return {"real": write_folder(root / "real", images[:36]), "holdout": write_folder(root / "holdout", images[36:48]),
            "synthetic": write_folder(root / "synthetic", images[48:]),
            "blurred": write_folder(root / "blurred", blurred[:12]), "root": root}


def test_folder_contract_writes_fidelity_json_with_the_fixed_keys(folders, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["score", "fidelity", "--real", str(folders["real"]), "--synthetic", str(folders["synthetic"]),
                 "--out", str(out), "--n-boot", "30", "--cache-dir", str(tmp_path / "cache")])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "fidelity.json").read_text())
    assert result["extractor"]["name"] == "radiomics" and "weights_sha256" in result["extractor"]
    for key in CONTRACT_KEYS:
        entry = result[key]
        assert {"value", "ci_low", "ci_high", "n"} <= set(entry)
        assert entry["n_real"] == 36 and entry["n_synthetic"] == 12
        assert entry["n"] == (36 if key in ("recall", "coverage") else 12)  # the set the metric averages over
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    assert result["real_floor"] is None and result["fid_over_floor"] is None  # no --holdout
    assert (out / "pca.png").stat().st_size > 1000
    assert "fid" in capsys.readouterr().out


def test_folder_form_with_holdout_reports_the_real_floor_and_orders_a_blurred_set_behind(folders, tmp_path):
    results = {}
    for name in ("synthetic", "blurred"):
        out = tmp_path / name
        assert main(["score", "fidelity", "--real", str(folders["real"]), "--holdout", str(folders["holdout"]),
                     "--synthetic", str(folders[name]), "--out", str(out), "--n-boot", "30",
                     "--cache-dir", str(tmp_path / "cache")]) == 0
        results[name] = json.loads((out / "fidelity.json").read_text())
    real_like, blurred = results["synthetic"], results["blurred"]
    assert real_like["real_floor"]["n_holdout"] == 12 and real_like["fid_over_floor"]["size"] == 12
    # new real images are about as far as the floor; blurred ones far further
    assert blurred["fid"]["value"] > 3 * real_like["fid"]["value"]
    assert blurred["fid_over_floor"]["value"] > 3 * real_like["fid_over_floor"]["value"]
    assert blurred["real_features_from_cache"]  # the second run read the real features from the cache
    shifts = blurred["largest_feature_shifts"]  # what the FID is made of, largest first
    assert len(shifts) == 10 and abs(shifts[0]["shift_in_real_sd"]) >= abs(shifts[-1]["shift_in_real_sd"]) > 1
    assert all(s["feature"].split("/")[0] in ("original", "log1", "log2", "log4") for s in shifts)


@pytest.mark.parametrize("extra,message", [
    (["--extractor", "nope"], "unknown extractor 'nope'"),
    (["--extractor", "inception", "--weights", "{tmp}/missing.pth"], "missing.pth: InceptionV3 FID weights not found"),
    (["--extractor-option", "levels"], "expected KEY=VALUE"),
])
def test_bad_input_is_one_line_and_exit_2(folders, tmp_path, capsys, extra, message):
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    code = main(["score", "fidelity", "--real", str(folders["real"]), "--synthetic", str(folders["synthetic"]),
                 "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err and err.startswith("error: ")
    assert not (tmp_path / "out" / "fidelity.json").exists()


def test_a_set_smaller_than_the_metrics_need_is_refused(folders, tmp_path, capsys):
    tiny = write_folder(tmp_path / "tiny", structured_images(4, (32, 32), seed=1))
    code = main(["score", "fidelity", "--real", str(folders["real"]), "--synthetic", str(tiny), "--out",
                 str(tmp_path / "out")])
    assert code == 2 and "the synthetic set has 4 images; fidelity needs at least 6" in capsys.readouterr().err


def test_stage_figures_and_cached_floor(folders, tmp_path):
    assert STAGES.component("fidelity") is FidelityStage
    runtime = Runtime(batch_size=8)
    stage = STAGES.create("fidelity", {"n_boot": 20, "pca_plot": False}, runtime)
    real = open_folder(folders["real"])
    inputs = StageInputs(data_config=None, train=real, holdout=open_folder(folders["holdout"], shape=real.shape),
                         synthetic=open_folder(folders["synthetic"], shape=real.shape))
    cache = ArtifactCache(tmp_path / "cache")
    assert stage.requirements(inputs) is None
    output = stage.run(inputs, StageContext(tmp_path / "run1", runtime, cache))
    assert set(output.figures) >= {"fid", "kid", "precision", "recall", "density", "coverage", "real_floor/fid",
                                   "real_floor/kid", "fid_over_floor"}
    builds = cache.builds  # train features, holdout features, floor
    assert builds == 3
    again = STAGES.create("fidelity", {"n_boot": 20, "pca_plot": False}, runtime).run(
        inputs, StageContext(tmp_path / "run2", runtime, cache))
    assert cache.builds == builds and cache.hits == 3  # nothing real recomputed
    assert again.figures["fid"] == output.figures["fid"]
    assert again.figures["real_floor/fid"] == output.figures["real_floor/fid"]
    assert STAGES.create("fidelity", {}, runtime).requirements(
        StageInputs(data_config=None, train=real, holdout=None)) == "no synthetic images to score"


def test_volumes_score_natively_with_radiomics(tmp_path):
    volumes = structured_images(20, (12, 12, 12), seed=2)
    real = write_folder(tmp_path / "real", [v for v in volumes[:12]])
    synthetic = write_folder(tmp_path / "synthetic", [v for v in volumes[12:]])
    out = tmp_path / "out"
    assert main(["score", "fidelity", "--real", str(real), "--synthetic", str(synthetic), "--out", str(out),
                 "--n-boot", "10", "--cache-dir", str(tmp_path / "cache")]) == 0
    result = json.loads((out / "fidelity.json").read_text())
    assert result["extractor"]["params"]["volume"] == "native" and result["fid"]["n_synthetic"] == 8
