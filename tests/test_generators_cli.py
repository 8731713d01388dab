"""`audit generator train` / `audit generate` end to end on a tiny folder dataset; checkpoint errors; adapters."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from audit.cli import main
from audit.data.readers.folder import open_folder
from generators.base import Condition, image_seed
from generators.loading import load_generator

TRAIN_IDS = [f"img{i:02d}" for i in range(10)]


@pytest.fixture(autouse=True, scope="module")
def quiet_single_thread(tmp_path_factory):
    # one thread: the machine is shared and OpenMP threads spin against other jobs; module scope so that the
    # module-scoped training fixture runs under it; a private preprocessing cache; no progress bars
    patch = pytest.MonkeyPatch()
    patch.setenv("SYNTH_AUDIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    patch.setenv("SYNTH_AUDIT_PROGRESS", "off")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
    patch.undo()


def write_png(path: Path, image: np.ndarray) -> None:
    Image.fromarray(np.round(image * 65535).astype(np.uint16)).save(path)


def read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.float32) / 65535


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A 16×16 labelled image folder, its dataset preset, a tiny generator preset and a trained checkpoint."""
    root = tmp_path_factory.mktemp("gen_cli")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:16, 0:16]
    rows = []
    for i, rid in enumerate(TRAIN_IDS + ["held0", "held1"]):
        cy, cx = rng.uniform(5, 11, 2)
        write_png(data / f"{rid}.png", np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 12.0))
        rows.append({"file": f"{rid}.png", "id": rid, "patient_id": f"p{i // 2}",
                     "split": "train" if rid.startswith("img") else "test", "view": ("CC", "MLO")[i % 2],
                     "laterality": "L", "birads": str(1 + i % 3), "density": "ABCD"[i % 4],
                     "findings": "Mass" if i % 3 == 2 else ""})
    with open(data / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (root / "data.yaml").write_text(yaml.safe_dump({"name": "tiny", "reader": "folder", "manifest": "manifest.csv",
                                                    "preprocess": {"shape": [16, 16]}}))
    (root / "gen.yaml").write_text(yaml.safe_dump({
        "kind": "ldm2d", "shape": [16, 16],
        "conditioning": {"fields": ["birads", "density", "view", "finding"], "embed_dim": 16},
        "autoencoder": {"channels": [8, 16], "latent_channels": 2, "norm_num_groups": 4, "steps": 6, "batch_size": 4},
        "unet": {"channels": [16, 32], "attention_levels": [False, True], "norm_num_groups": 4, "head_channels": 16,
                 "steps": 6, "batch_size": 4},
        "sampling": {"num_inference_steps": 3, "guidance_scale": 2.0},
        "training": {"checkpoint_every": 4}}))
    code = main(["generator", "train", "--data", str(root / "data.yaml"), "--data-root", str(data),
                 "--config", str(root / "gen.yaml"), "--out", str(root / "ckpt"), "--seed", "1", "--threads", "1"])
    assert code == 0
    return root


def generate(model: Path, out: Path, *extra: str) -> int:
    return main(["generate", "--model", str(model), "--out", str(out), "--threads", "1", *extra])


def test_train_writes_a_complete_checkpoint_of_the_training_split(workspace):
    ckpt = workspace / "ckpt"
    for part in ("generator.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
                 "unet/diffusion_pytorch_model.safetensors", "label_encoder/config.json",
                 "scheduler/scheduler_config.json", "training_state/state.json", "training_conditions.csv"):
        assert (ckpt / part).is_file(), part
    assert not list(ckpt.rglob("*.bin")) and not list(ckpt.rglob("*.pt"))
    gen = load_generator(ckpt)
    assert gen.describe()["training"]["complete"] is True
    assert sorted(c.source_id for c in gen.training_conditions) == TRAIN_IDS  # held-out images never trained on
    # rerunning a finished training is a no-op that leaves the model as it was
    before = gen.describe()["checkpoint_hash"]
    assert main(["generator", "train", "--data", str(workspace / "data.yaml"), "--data-root",
                 str(workspace / "data"), "--config", str(workspace / "gen.yaml"), "--out", str(ckpt),
                 "--seed", "1"]) == 0
    assert load_generator(ckpt).describe()["checkpoint_hash"] == before


def test_generate_rerun_after_a_crash_equals_an_uninterrupted_run(workspace, tmp_path, capsys):
    ckpt = workspace / "ckpt"
    assert generate(ckpt, tmp_path / "a", "--n", "7", "--batch-size", "3", "--seed", "4") == 0
    assert generate(ckpt, tmp_path / "b", "--n", "7", "--batch-size", "3", "--seed", "4") == 0
    # the crash: two images and the manifest missing, a half-written temp file left behind
    for name in ("000001.png", "000005.png", "manifest.csv"):
        (tmp_path / "b" / name).unlink()
    (tmp_path / "b" / ".000002.png.tmp.png").write_bytes(b"\x89PNG half")
    capsys.readouterr()
    assert generate(ckpt, tmp_path / "b", "--n", "7", "--batch-size", "3", "--seed", "4") == 0
    assert "generated 2 images (5 already there)" in capsys.readouterr().out
    files_a = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files_a == sorted(p.name for p in (tmp_path / "b").iterdir())
    for i in range(7):
        np.testing.assert_allclose(read_png(tmp_path / "b" / f"{i:06d}.png"),
                                   read_png(tmp_path / "a" / f"{i:06d}.png"), atol=2 / 65535)
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()
    # batch size does not change the images
    assert generate(ckpt, tmp_path / "c", "--n", "7", "--batch-size", "7", "--seed", "4") == 0
    for i in range(7):
        np.testing.assert_allclose(read_png(tmp_path / "c" / f"{i:06d}.png"),
                                   read_png(tmp_path / "a" / f"{i:06d}.png"), atol=2 / 65535)
    # another seed or sampling setting into the same folder would mix two runs: refused; more images: fine
    assert generate(ckpt, tmp_path / "a", "--n", "7", "--seed", "5") == 2
    assert generate(ckpt, tmp_path / "a", "--n", "7", "--seed", "4", "--guidance", "1.0") == 2
    assert generate(ckpt, tmp_path / "a", "--n", "8", "--seed", "4") == 0
    assert (tmp_path / "a" / "000007.png").is_file()


def test_generated_folder_reads_back_with_conditions_and_source_ids(workspace, tmp_path):
    assert generate(workspace / "ckpt", tmp_path / "g", "--n", "12", "--seed", "0") == 0
    ds = open_folder(tmp_path / "g")
    assert len(ds) == 12 and ds.shape == (16, 16)
    train_rows = {r["id"]: r for r in csv.DictReader(open(workspace / "data" / "manifest.csv"))}
    # the first 10 conditions are a shuffled pass over the whole training split, then it repeats
    assert sorted(r.source_id for r in ds.records[:10]) == TRAIN_IDS
    for r in ds.records:
        src = train_rows[r.source_id]
        assert (r.view, str(r.labels.birads), r.labels.density) == (src["view"], src["birads"], src["density"])
    image, _ = ds.load(ds.records[0])
    assert image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1 and image.std() > 0.01


def test_conditions_csv_drives_generation(workspace, tmp_path):
    (tmp_path / "cond.csv").write_text("birads,density,view,findings,boxes,source_id\n"
                                       "4,D,MLO,Mass,\"2,3,9,10,Mass\",img02\n1,A,CC,,,\n")
    assert generate(workspace / "ckpt", tmp_path / "g", "--n", "3", "--conditions", str(tmp_path / "cond.csv")) == 0
    rows = list(csv.DictReader(open(tmp_path / "g" / "manifest.csv")))
    assert [(r["birads"], r["density"], r["source_id"], r["boxes"]) for r in rows] == [
        ("4", "D", "img02", "2,3,9,10,Mass"), ("1", "A", "", ""), ("4", "D", "img02", "2,3,9,10,Mass")]


# --- checkpoint errors --------------------------------------------------------------------------------------

def test_truncated_checkpoint_is_a_clean_error(workspace, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(workspace / "ckpt", broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    capsys.readouterr()
    assert generate(broken, tmp_path / "out", "--n", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "unet" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "000000.png").exists()


@pytest.mark.parametrize("damage", ["foreign_json", "missing_vae", "wrong_shape_weights", "empty"])
def test_foreign_or_incomplete_checkpoint_is_a_clean_error(workspace, tmp_path, capsys, damage):
    target = tmp_path / "model"
    if damage == "empty":
        target.mkdir()
    else:
        shutil.copytree(workspace / "ckpt", target)
    if damage == "foreign_json":
        (target / "generator.json").write_text('{"format": "something-else"}')
    elif damage == "missing_vae":
        shutil.rmtree(target / "vae")
    elif damage == "wrong_shape_weights":
        shutil.copy(workspace / "ckpt" / "vae" / "diffusion_pytorch_model.safetensors",
                    target / "unet" / "diffusion_pytorch_model.safetensors")
    capsys.readouterr()
    assert generate(target, tmp_path / "out", "--n", "1") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1


def test_pickles_are_refused(workspace, tmp_path, capsys):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "model.pt")
    capsys.readouterr()
    assert generate(tmp_path / "model.pt", tmp_path / "out", "--n", "1") == 2
    assert "pickle" in capsys.readouterr().err
    folder = tmp_path / "pickled"
    shutil.copytree(workspace / "ckpt", folder)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({}, folder / "unet" / "diffusion_pytorch_model.bin")
    assert generate(folder, tmp_path / "out", "--n", "1") == 2
    assert "pickle" in capsys.readouterr().err
    only_pickle = tmp_path / "only"
    only_pickle.mkdir()
    torch.save({}, only_pickle / "weights.ckpt")
    assert generate(only_pickle, tmp_path / "out", "--n", "1") == 2
    assert "pickle" in capsys.readouterr().err


# --- adapters -----------------------------------------------------------------------------------------------

def test_folder_generator_round_trips_images_and_conditions(workspace, tmp_path):
    from generators.folder import FolderGenerator

    assert generate(workspace / "ckpt", tmp_path / "made", "--n", "4", "--seed", "2") == 0
    folder_model = load_generator(tmp_path / "made")
    assert isinstance(folder_model, FolderGenerator) and folder_model.describe()["kind"] == "folder"
    assert folder_model.denoiser() is None
    conds = folder_model.default_conditions(4, seed=0)
    manifest = list(csv.DictReader(open(tmp_path / "made" / "manifest.csv")))
    assert [c.source_id for c in conds] == [r["source_id"] for r in manifest]
    assert [c.ref for c in conds] == [r["file"] for r in manifest]
    images = folder_model.sample(conds, seed=123)
    for i in range(4):
        np.testing.assert_array_equal(images[i], read_png(tmp_path / "made" / f"{i:06d}.png"))
    np.testing.assert_array_equal(folder_model.sample(conds[::-1], seed=0), images[::-1])  # matched by file
    # through the CLI: a folder model re-exported is the same images and conditions
    assert generate(tmp_path / "made", tmp_path / "again", "--n", "4") == 0
    for i in range(4):
        np.testing.assert_array_equal(read_png(tmp_path / "again" / f"{i:06d}.png"), images[i])
    again = list(csv.DictReader(open(tmp_path / "again" / "manifest.csv")))
    assert [(r["source_id"], r["birads"], r["view"]) for r in again] == \
           [(r["source_id"], r["birads"], r["view"]) for r in manifest]


def test_folder_generator_without_manifest_returns_images_in_order(tmp_path):
    from audit.errors import AuditInputError

    rng = np.random.default_rng(1)
    pictures = rng.random((3, 12, 10)).astype(np.float32)
    for i, p in enumerate(pictures):
        write_png(tmp_path / f"b{i}.png", p)
    model = load_generator(tmp_path)
    out = model.sample([Condition()] * 3, seed=0)
    np.testing.assert_allclose(out, pictures, atol=1 / 65535)
    np.testing.assert_allclose(model.sample([Condition()], seed=0, first_index=2)[0], pictures[2], atol=1 / 65535)
    with pytest.raises(AuditInputError, match="holds 3 images"):
        model.sample([Condition()] * 4, seed=0)


def tiny_pipeline(kind: str = "ddpm"):
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), add_attention=False)
    if kind == "ddpm":
        return DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50))
    return DDIMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=50))


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_diffusers_pipeline_adapter_matches_the_pipeline(tmp_path, kind):
    from generators.diffusers_pipeline import DiffusersPipelineGenerator

    pipe = tiny_pipeline(kind)
    pipe.save_pretrained(tmp_path / "pipe")
    model = load_generator(tmp_path / "pipe").with_sampling(num_inference_steps=6)
    assert isinstance(model, DiffusersPipelineGenerator) and model.shape == (8, 8)
    ours = model.sample([Condition()] * 3, seed=9)
    for i in range(3):
        reference = pipe(batch_size=1, generator=torch.Generator().manual_seed(image_seed(9, i)),
                         num_inference_steps=6, output_type="np").images[0, ..., 0]
        np.testing.assert_allclose(ours[i], reference, atol=1e-5)
    np.testing.assert_allclose(model.sample([Condition()], seed=9, first_index=1)[0], ours[1], atol=1e-5)
    den = model.denoiser()
    x0 = den.encode(ours)
    assert den.space == "pixel" and x0.shape == (3, 1, 8, 8) and den.predict_noise(x0, 5, None).shape == x0.shape
    assert generate(tmp_path / "pipe", tmp_path / "out", "--n", "2", "--steps", "4") == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["000000.png", "000001.png"]


def test_diffusers_pipeline_with_pickled_weights_is_refused(tmp_path, capsys):
    tiny_pipeline().save_pretrained(tmp_path / "pipe", safe_serialization=False)
    capsys.readouterr()
    assert generate(tmp_path / "pipe", tmp_path / "out", "--n", "1") == 2
    assert "pickle" in capsys.readouterr().err


def test_train_and_generate_on_phantom_datasets(tmp_path):
    """The dataset presets end to end: VinDr-layout mammography phantom (labels + lesion boxes) and NIfTI brains."""
    from audit.data.phantoms import write_brain3d_phantom, write_mammo_phantom

    write_mammo_phantom(tmp_path / "mammo", patients=5, seed=0, image_size=(128, 104))
    write_brain3d_phantom(tmp_path / "brain", patients=3, seed=0, shape=(24, 24, 24), scans_per_patient=1)
    tiny = {"autoencoder": {"channels": [8, 16], "latent_channels": 2, "norm_num_groups": 4, "steps": 2,
                            "batch_size": 2},
            "unet": {"channels": [16, 32], "norm_num_groups": 4, "head_channels": 16, "steps": 2, "batch_size": 2},
            "sampling": {"num_inference_steps": 2}}
    (tmp_path / "g2.yaml").write_text(yaml.safe_dump({"kind": "ldm2d", **tiny}))
    (tmp_path / "g3.yaml").write_text(yaml.safe_dump(
        {"kind": "ldm3d", "shape": [16, 16, 16], "conditioning": {"fields": ["lesion", "age_group"]},
         **{**tiny, "unet": {**tiny["unet"], "attention_levels": [False, False]}}}))
    for data, root, config in (("phantom-mammo", "mammo", "g2.yaml"), ("phantom-brain3d", "brain", "g3.yaml")):
        assert main(["generator", "train", "--data", data, "--data-root", str(tmp_path / root), "--config",
                     str(tmp_path / config), "--out", str(tmp_path / f"ckpt_{root}"), "--threads", "1"]) == 0
        assert generate(tmp_path / f"ckpt_{root}", tmp_path / f"synth_{root}", "--n", "3") == 0
    mammo = load_generator(tmp_path / "ckpt_mammo")
    assert mammo.shape == (64, 64) and mammo.vocabulary.fields == ("birads", "density", "view", "laterality",
                                                                   "finding")
    assert len(mammo.training_conditions) == 16 and any(c.boxes for c in mammo.training_conditions)
    rows = list(csv.DictReader(open(tmp_path / "synth_mammo" / "manifest.csv")))
    ids = {c.source_id for c in mammo.training_conditions}
    assert all(r["source_id"] in ids and r["view"] in ("CC", "MLO") for r in rows)
    synth_brain = open_folder(tmp_path / "synth_brain")
    assert synth_brain.shape == (16, 16, 16) and synth_brain.records[0].path.endswith(".nii.gz")
    assert {dict(r.labels.extra).get("lesion") for r in synth_brain.records} <= {"0", "1"}
