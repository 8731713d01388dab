"""`audit score utility` end to end on a tiny folder dataset: outputs, the cached TRTR arm, one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from audit.cli import main
from tests.utility_factory import planted_lesion_images
from tests.utility_factory import one_thread  # noqa: F401  (autouse fixture: one torch thread)

SHAPE = (24, 24)
FAST = ["--steps", "10", "--timm-model", "test_resnet", "--n-boot", "50", "--threads", "1", "--batch-size", "16"]


def write_folder(folder: Path, images: np.ndarray, rows: list[dict] | None) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(np.round(image * 65535).astype(np.uint16)).save(folder / f"{i:04d}.png")
    if rows is not None:
        with open(folder / "manifest.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["file", *rows[0]])
            writer.writeheader()
            writer.writerows({"file": f"{i:04d}.png", **row} for i, row in enumerate(rows))
    return folder


def birads_of(lesion: np.ndarray, seed: int) -> list[str]:
    """A disc ↔ BI-RADS 4/5, none ↔ 1/2 (so malignancy is the planted label)."""
    rng = np.random.default_rng(seed)
    return [str(int(rng.integers(4, 6)) if v else int(rng.integers(1, 3))) for v in lesion]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("utility_cli")
    train_images, train_y = planted_lesion_images(40, SHAPE, 0)
    test_images, test_y = planted_lesion_images(24, SHAPE, 1)
    images = np.concatenate([train_images, test_images])
    birads = birads_of(train_y, 0) + birads_of(test_y, 1)
    rows = [{"id": f"r{i}", "patient_id": f"p{i // 2}", "split": "train" if i < 40 else "test",
             "birads": birads[i]} for i in range(64)]
    write_folder(root / "data", images, rows)
    (root / "data.yaml").write_text(yaml.safe_dump({"name": "tiny", "reader": "folder", "manifest": "manifest.csv",
                                                    "preprocess": {"shape": list(SHAPE)}}))
    synth_images, synth_y = planted_lesion_images(24, SHAPE, 2)
    write_folder(root / "synthetic", synth_images, [{"birads": b} for b in birads_of(synth_y, 2)])
    write_folder(root / "unlabelled", synth_images, None)
    # a second real root of the same preset whose test patients are the first one's: not a held-out set
    write_folder(root / "overlap", images, rows)
    return root


def score(workspace: Path, out: Path, *extra: str) -> int:
    return main(["score", "utility", "--data", str(workspace / "data.yaml"), "--data-root",
                 str(workspace / "data"), "--cache-dir", str(workspace / "cache"), "--out", str(out), *FAST, *extra])


def test_writes_estimates_and_a_roc_plot_and_reuses_the_real_arm(workspace, tmp_path, capsys):
    assert score(workspace, tmp_path / "a", "--synthetic", str(workspace / "synthetic")) == 0
    result = json.loads((tmp_path / "a" / "utility.json").read_text())
    for key in ("tstr_auc", "trtr_auc", "gap"):
        assert {"value", "ci_low", "ci_high", "n"} <= set(result[key]) and result[key]["n"] == 24
    assert result["target"]["name"] == "malignancy"  # auto: the images carry BI-RADS
    assert result["sets"]["trtr"]["images"] == 40 and result["sets"]["tstr"]["images"] == 24
    assert result["sets"]["test"]["patients"] == 12
    assert result["trtr_from_cache"] is False
    assert (tmp_path / "a" / "roc.png").stat().st_size > 1000

    # --model: a folder model with a manifest is sampled into OUT/synthetic; the real arm comes from the cache
    capsys.readouterr()
    assert score(workspace, tmp_path / "b", "--model", str(workspace / "synthetic"), "--n", "24", "--mixed") == 0
    assert "(TRTR from cache)" in capsys.readouterr().out
    again = json.loads((tmp_path / "b" / "utility.json").read_text())
    assert again["trtr_auc"] == result["trtr_auc"] and "mixed_auc" in again
    assert len(list((tmp_path / "b" / "synthetic").glob("*.png"))) == 24


@pytest.mark.parametrize("extra, message", [
    (["--synthetic", "unlabelled"], "the synthetic images carry no 'birads' labels for target 'malignancy'"),
    (["--model", "unlabelled"], "the model's conditions carry no 'birads' labels"),
    (["--synthetic", "synthetic", "--target", "tumour"], "unknown target 'tumour'"),
    (["--synthetic", "synthetic", "--target", "malignancy:6"],
     "the real training images hold only class 'negative' of target 'malignancy'"),
    (["--synthetic", "synthetic", "--holdout-root", "overlap"], "patients are also in the training split"),
])
def test_bad_input_is_one_line_and_exit_2(workspace, tmp_path, capsys, extra, message):
    extra = [str(workspace / a) if a in ("unlabelled", "synthetic", "overlap") else a for a in extra]
    assert score(workspace, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("error: ")
    assert not (tmp_path / "out" / "utility.json").exists()
