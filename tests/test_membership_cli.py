"""`audit attack mia` end to end (folder contract and dataset form), its one-line errors, and the membership stage
of `audit run` (tiny diffusers pipeline, tiny LDM checkpoint, image folders)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from audit.cli import main

ATTACK_COLUMNS = ["loss", "pia", "secmi", "sima", "dcr", "dcr_embed"]
BASE = ["--n-boot", "100", "--n-synthetic", "6", "--sample-steps", "3", "--threads", "1"]
FAST = ["--option", "secmi.t_sec=40", "--option", "secmi.step=20", "--option", "sima.timesteps=[0,50]", *BASE]


@pytest.fixture(autouse=True, scope="module")
def quiet_single_thread(tmp_path_factory):
    patch = pytest.MonkeyPatch()
    patch.setenv("SYNTH_AUDIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    patch.setenv("SYNTH_AUDIT_PROGRESS", "off")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    patch.undo()


def write_folder(folder: Path, images: np.ndarray, manifest: list[dict] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(np.round(image * 65535).astype(np.uint16)).save(folder / f"{i:03d}.png")
    if manifest:
        with open(folder / "manifest.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["file", *manifest[0]])
            writer.writeheader()
            writer.writerows({"file": f"{i:03d}.png", **row} for i, row in enumerate(manifest))
    return folder


@pytest.fixture(scope="module")
def pipeline_workspace(tmp_path_factory):
    """A tiny random diffusers DDPM pipeline (8×8, 1000 training steps) and member/non-member folders."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    root = tmp_path_factory.mktemp("mia")
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), add_attention=False)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(root / "pipe")
    rng = np.random.default_rng(0)
    views = [{"view": ("CC", "MLO")[i % 2], "density": "AB"[i // 2 % 2]} for i in range(18)]
    write_folder(root / "members", rng.random((18, 8, 8)), views)
    write_folder(root / "nonmembers", rng.random((20, 8, 8)), views + views[:2])
    return root


def read_scores(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def mia(*args) -> int:
    return main(["attack", "mia", *map(str, args)])


def test_folder_contract_on_a_diffusers_pipeline(pipeline_workspace, tmp_path, capsys):
    ws = pipeline_workspace
    out = tmp_path / "out"
    assert mia("--model", ws / "pipe", "--members", ws / "members", "--nonmembers", ws / "nonmembers",
               "--out", out, *FAST) == 0
    rows = read_scores(out / "mia_scores.csv")
    assert list(rows[0]) == ["file", "is_member", *ATTACK_COLUMNS]
    assert len(rows) == 36 and sum(r["is_member"] == "true" for r in rows) == 18
    assert {r["file"] for r in rows if r["is_member"] == "true"} == {f"{i:03d}.png" for i in range(18)}
    for name in ATTACK_COLUMNS[:5]:
        assert all(np.isfinite(float(r[name])) for r in rows)
    assert all(r["dcr_embed"] == "" for r in rows)  # no patient ids in the folders: no re-id embedding
    result = json.loads((out / "mia.json").read_text())
    assert result["matching"]["matched_exactly"] == 18 and result["matching"]["fields"] == ["view", "density",
                                                                                            "birads"]
    assert "dcr_embed" in result["skipped"] and result["attacks"]["dcr"]["dcr"]["n_synthetic"] == 6
    assert result["attacks"]["secmi"]["queries_per_sample"] == 4
    assert result["attacks"]["loss"]["space"] == "pixel"
    for key in ("loss/auc", "loss/tpr_at_fpr_1pct", "loss/tpr_at_fpr_0.1pct", "loss/balanced_accuracy",
                "loss/control_auc", "best/auc", "best/tpr_at_fpr_1pct", "dcr/share"):
        assert set(result["figures"][key]) == {"value", "ci_low", "ci_high", "n", "higher_is_better", "method"}
    assert (out / "roc_loglog.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "loss: AUC" in printed and "dcr_embed: skipped" in printed
    # the same command gives the same scores (seeded noise, seeded matching)
    assert mia("--model", ws / "pipe", "--members", ws / "members", "--nonmembers", ws / "nonmembers",
               "--out", tmp_path / "again", *FAST) == 0
    assert read_scores(tmp_path / "again" / "mia_scores.csv") == rows


def test_folder_model_skips_white_box_attacks_with_the_reason_and_refuses_them_by_name(pipeline_workspace,
                                                                                       tmp_path, capsys):
    ws = pipeline_workspace
    images = np.random.default_rng(1).random((5, 8, 8))
    model = write_folder(tmp_path / "gan", images)
    out = tmp_path / "out"
    assert mia("--model", model, "--members", ws / "members", "--nonmembers", ws / "nonmembers", "--out", out,
               "--n-boot", "50") == 0
    result = json.loads((out / "mia.json").read_text())
    for name in ("loss", "pia", "secmi", "sima"):
        assert "folder" in result["skipped"][name] and "white-box" in result["skipped"][name]
    assert result["attacks"]["dcr"]["dcr"]["n_synthetic"] == 5
    rows = read_scores(out / "mia_scores.csv")
    assert all(r["loss"] == "" and r["dcr"] != "" for r in rows)
    capsys.readouterr()
    assert mia("--model", model, "--members", ws / "members", "--nonmembers", ws / "nonmembers", "--out", out,
               "--attacks", "sima,dcr") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "attack 'sima' cannot run on this model" in err and "folder" in err


def test_bad_input_is_one_line_and_exit_2(pipeline_workspace, tmp_path, capsys):
    ws = pipeline_workspace
    few = write_folder(tmp_path / "few", np.random.default_rng(2).random((5, 8, 8)))
    broken = tmp_path / "broken"
    shutil.copytree(ws / "pipe", broken)
    shutil.rmtree(broken / "unet")
    cases = [
        (["--members", ws / "members", "--nonmembers", ws / "members"], "both members and non-members"),
        (["--members", ws / "members", "--nonmembers", few], "too few members: 5 member/non-member pairs"),
        (["--members", ws / "members"], "give both folders"),
        (["--members", ws / "members", "--nonmembers", ws / "nonmembers", "--attacks", "loss,nope"],
         "unknown attack 'nope'"),
        (["--members", ws / "members", "--nonmembers", ws / "nonmembers", "--option", "loss.t=3"],
         "unknown parameter 't'"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert mia("--model", ws / "pipe", "--out", tmp_path / "o", *extra, *FAST) == 2, message
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and err.count("\n") == 0, err
    assert mia("--model", broken, "--members", ws / "members", "--nonmembers", ws / "nonmembers",
               "--out", tmp_path / "o") == 2
    assert "cannot load the diffusers pipeline" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ldm_workspace(tmp_path_factory):
    """A labelled 16×16 folder dataset (14 train, 8 test images) and a tiny LDM trained on 8 of the training
    images (max_records), so that the members are the checkpoint's list, not the train split."""
    root = tmp_path_factory.mktemp("mia_ldm")
    data = root / "data"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:16, 0:16]
    images, rows = [], []
    for i in range(22):
        cy, cx = rng.uniform(5, 11, 2)
        images.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 12.0))
        rows.append({"id": f"r{i:02d}", "patient_id": f"p{i // 2}", "split": "train" if i < 14 else "test",
                     "view": ("CC", "MLO")[i % 2], "laterality": "L", "birads": str(1 + i % 2),
                     "density": "AB"[i // 2 % 2], "findings": ""})
    write_folder(data, np.stack(images), rows)
    (root / "data.yaml").write_text(yaml.safe_dump({"name": "tiny", "reader": "folder", "manifest": "manifest.csv",
                                                    "preprocess": {"shape": [16, 16]}}))
    (root / "gen.yaml").write_text(yaml.safe_dump({
        "kind": "ldm2d", "shape": [16, 16],
        "conditioning": {"fields": ["birads", "density", "view"], "embed_dim": 16},
        "autoencoder": {"channels": [8, 16], "latent_channels": 2, "norm_num_groups": 4, "steps": 4, "batch_size": 4},
        "unet": {"channels": [16, 32], "attention_levels": [False, True], "norm_num_groups": 4, "head_channels": 16,
                 "steps": 4, "batch_size": 4},
        "sampling": {"num_inference_steps": 2, "guidance_scale": 2.0},
        "training": {"max_records": 8, "checkpoint_every": 100}}))
    assert main(["generator", "train", "--data", str(root / "data.yaml"), "--data-root", str(data),
                 "--config", str(root / "gen.yaml"), "--out", str(root / "ckpt"), "--threads", "1"]) == 0
    return root


def test_dataset_form_takes_the_members_from_the_checkpoint(ldm_workspace, tmp_path):
    from generators.loading import load_generator

    ws = ldm_workspace
    out = tmp_path / "out"
    assert mia("--model", ws / "ckpt", "--data", ws / "data.yaml", "--data-root", ws / "data", "--out", out,
               "--attacks", "loss,secmi,sima,dcr", "--min-members", "4", *FAST) == 0
    trained = {c.source_id for c in load_generator(ws / "ckpt").training_conditions}
    rows = read_scores(out / "mia_scores.csv")
    members = {r["file"] for r in rows if r["is_member"] == "true"}
    nonmembers = {r["file"] for r in rows if r["is_member"] == "false"}
    assert len(trained) == 8 and members == trained and len(nonmembers) == 8
    assert nonmembers == {f"r{i:02d}" for i in range(14, 22)}
    result = json.loads((out / "mia.json").read_text())
    assert result["attacks"]["loss"]["space"] == "latent" and result["attacks"]["loss"]["conditioning"] == "own"
    assert "checkpoint's training records (8 of 8" in result["sources"]["members"]
    assert result["matching"]["pairs"] == 8
    # members named in a CSV of record ids instead
    ids = tmp_path / "ids.csv"
    ids.write_text("id\n" + "\n".join(sorted(trained)[:5]) + "\n")
    assert mia("--model", ws / "ckpt", "--data", ws / "data.yaml", "--data-root", ws / "data", "--members", ids,
               "--out", tmp_path / "csv", "--attacks", "sima", "--min-members", "4", *BASE) == 0
    rows = read_scores(tmp_path / "csv" / "mia_scores.csv")
    assert {r["file"] for r in rows if r["is_member"] == "true"} == set(sorted(trained)[:5])


def test_membership_stage_figures_and_artefacts(pipeline_workspace, tmp_path):
    from audit.artifacts import ArtifactCache
    from audit.data.readers.folder import open_folder
    from audit.registry import Runtime
    from audit.stages import STAGES, StageContext, StageInputs
    from generators.loading import load_generator

    ws = pipeline_workspace
    stage = STAGES.create("membership", {"options": {"secmi": {"t_sec": 40, "step": 20}}, "n_boot": 100},
                          Runtime())
    members, holdout = open_folder(ws / "members", shape=(8, 8)), open_folder(ws / "nonmembers", shape=(8, 8))
    synthetic = open_folder(ws / "members", shape=(8, 8))  # a model that emits its training images
    inputs = StageInputs(data_config=None, train=members, holdout=holdout, synthetic=synthetic,
                         generator=load_generator(ws / "pipe"), members=members)
    assert stage.requirements(inputs) is None
    output = stage.run(inputs, StageContext(tmp_path, Runtime(), ArtifactCache(tmp_path / "cache")))
    for name in ("loss", "pia", "secmi", "sima", "dcr"):
        for metric in ("auc", "tpr_at_fpr_1pct", "tpr_at_fpr_0.1pct", "balanced_accuracy", "control_auc"):
            assert f"{name}/{metric}" in output.figures
    assert output.figures["dcr/auc"].value == 1.0 and output.figures["dcr/share"].value == 1.0
    assert output.figures["best/auc"].value == 1.0 and "dcr_embed" in output.skipped
    assert {a.path for a in output.artefacts.values()} == {"mia_scores.csv", "mia.json", "roc_loglog.png"}
    assert "optimistic" in output.details["best"]["note"]
    folder_only = StageInputs(data_config=None, train=members, holdout=holdout, synthetic=None,
                              generator=load_generator(ws / "members"), members=members)
    assert "no attack can run" in stage.requirements(folder_only)
