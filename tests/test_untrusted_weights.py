"""Untrusted checkpoints, weights and configs: a pickle that would run code (it writes a marker file when
unpickled) is refused with one clear line by every command that takes a model or weights, in every form a user
could hand over, and the marker never appears. Configs are data: YAML tags that build objects and alias bombs
are refused for every YAML the suite reads.

`FILE_COMMANDS` covers `audit run --model`, `audit attack mia|reid --model`, `audit score fidelity|utility --model`
and the utility classifier's `--weights`; Inception's weights (a torch.save file by origin) are read with
torch.load(weights_only=True) and tested apart; `YAML_COMMANDS` includes the gates file and the run configuration.
"""

from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.cli_harness import check_clean_error, run_cli, tiny_ldm2d_preset
from tests.malicious import (WEIGHT_FILE_FORMS, checkpoint_with_swapped_weights, nifti_with_pickle_extension,
                             npy_object_array, pickle_bytes, pipeline_with_custom_code, pipeline_with_pickled_weights,
                             torch_zip_bytes, write_weight_file, yaml_alias_bomb, yaml_object_tags)


@dataclass
class Workspace:
    root: Path

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def holdout(self) -> Path:
        return self.root / "holdout"

    @property
    def ldm(self) -> Path:
        return self.root / "ldm"

    @property
    def deepssim(self) -> Path:
        return self.root / "deepssim"

    def config(self, name: str) -> str:
        return str(self.root / f"{name}.yaml")



def _write_images(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:16, 0:16]
    rows = []
    for i in range(n):
        cy, cx = rng.uniform(4, 12, 2)
        image = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 10.0) * 0.8 + 0.1 * rng.random((16, 16))
        Image.fromarray(np.round(image * 65535).astype(np.uint16)).save(folder / f"i{i:02d}.png")
        rows.append({"file": f"i{i:02d}.png", "id": f"i{i:02d}", "split": "train", "birads": str(1 + i % 2)})
    with open(folder / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("untrusted"))
    _write_images(ws.images, 8, seed=0)
    _write_images(ws.holdout, 6, seed=1)
    (ws.root / "data.yaml").write_text(yaml.safe_dump({"name": "tiny", "reader": "folder",
                                                       "preprocess": {"shape": [16, 16]}}))
    (ws.root / "generator.yaml").write_text(yaml.safe_dump(tiny_ldm2d_preset(steps=1)))
    # what `audit run` and the attack/score verbs read: both folders as one dataset, train and test
    with open(ws.root / "run-manifest.csv", "w", newline="") as fh:
        fh.write("file,id,patient_id,split,birads\n")
        for folder, split in ((ws.images, "train"), (ws.holdout, "test")):
            for i, png in enumerate(sorted(folder.glob("*.png"))):
                fh.write(f"{folder.name}/{png.name},{folder.name}-{i},{folder.name}-p{i // 2},{split},{(1, 4)[i % 2]}\n")
    (ws.root / "run-data.yaml").write_text(yaml.safe_dump({"name": "tiny-run", "reader": "folder",
                                                           "manifest": "run-manifest.csv",
                                                           "preprocess": {"shape": [16, 16]}}))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trained = run_cli(["generator", "train", "--data", ws.config("data"), "--data-root", ws.images,
                           "--config", ws.config("generator"), "--out", ws.ldm])
        assert trained.code == 0, trained.stderr
        deepssim = run_cli(["deepssim", "train", "--train-folder", ws.images, "--shape", "16x16", "--epochs", "1",
                            "--batch-size", "4", "--out", ws.deepssim])
        assert deepssim.code == 0, deepssim.stderr
    finally:
        torch.set_num_threads(threads)
    return ws


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "MARKER-code-ran"


def assert_refused(result, marker: Path, hostile: Path, words: tuple[str, ...] = ()) -> None:
    assert not marker.exists(), f"the payload ran: {result.argv}"
    problems = check_clean_error(result, words=words)
    # the error names the hostile file or the folder it sits in
    line = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    if str(hostile) not in line and str(hostile.parent) not in line:
        problems.append(f"the error names neither {hostile} nor its folder: {line[:300]!r}")
    assert not problems, problems


# --- commands that take a weights file or a model path ----------------------------------------------------------

def _data(ws: Workspace) -> list:
    return ["--data", ws.config("run-data"), "--data-root", ws.root]


# command name → argv given the workspace, the hostile path and an output folder
FILE_COMMANDS: dict[str, Callable[[Workspace, Path, Path], list[str]]] = {
    "generate --model": lambda ws, p, out: ["generate", "--model", p, "--n", "1", "--out", out],
    "replicas --deepssim": lambda ws, p, out: ["replicas", "--train", ws.images, "--holdout", ws.holdout,
                                               "--synthetic", ws.images, "--out", out, "--scorers", "ncc,deepssim",
                                               "--deepssim", p],
    "replicas --encoder timm --weights": lambda ws, p, out: ["replicas", "--train", ws.images, "--holdout", ws.holdout,
                                                            "--synthetic", ws.images, "--out", out, "--scorers",
                                                            "ncc", "--encoder", "timm:resnet18", "--weights", p],
    "replicas --encoder ssl --weights": lambda ws, p, out: ["replicas", "--train", ws.images, "--holdout", ws.holdout,
                                                           "--synthetic", ws.images, "--out", out, "--scorers",
                                                           "ncc", "--encoder", "ssl", "--weights", p],
    "deepssim train --weights": lambda ws, p, out: ["deepssim", "train", "--train-folder", ws.images, "--shape",
                                                    "16x16", "--epochs", "1", "--backbone", "timm:resnet18",
                                                    "--weights", p, "--out", out],
    # phase 2: the audit and its verbs
    "run --model": lambda ws, p, out: ["run", "--model", p, *_data(ws), "--out", out],
    "attack mia --model": lambda ws, p, out: ["attack", "mia", "--model", p, *_data(ws), "--out", out],
    "attack reid --model": lambda ws, p, out: ["attack", "reid", "--model", p, *_data(ws), "--out", out],
    "score fidelity --model": lambda ws, p, out: ["score", "fidelity", "--model", p, *_data(ws), "--out", out],
    "score utility --model": lambda ws, p, out: ["score", "utility", "--model", p, *_data(ws), "--out", out],
    "score utility --weights": lambda ws, p, out: ["score", "utility", "--synthetic", ws.images, *_data(ws),
                                                   "--classifier", "timm", "--timm-model", "resnet18",
                                                   "--weights", p, "--out", out],
}


@pytest.mark.parametrize("command", list(FILE_COMMANDS))
@pytest.mark.parametrize("form", list(WEIGHT_FILE_FORMS))
def test_pickled_weight_file_is_refused(ws, tmp_path, marker, command, form):
    hostile = write_weight_file(tmp_path / "given", form, marker)
    result = run_cli(FILE_COMMANDS[command](ws, hostile, tmp_path / "out"))
    assert_refused(result, marker, hostile, words=("pickle",))
    # nothing written (`audit run` holds the lock file of OUT while it checks its inputs)
    assert not (tmp_path / "out").exists() or \
        {p.name for p in (tmp_path / "out").iterdir()} <= {".audit-run.lock"}


@pytest.mark.parametrize("form", list(WEIGHT_FILE_FORMS))
def test_inception_weights_load_tensors_only(ws, tmp_path, marker, form):
    """Inception's published weights are a torch.save file, so `score fidelity --extractor inception --weights`
    reads them with torch.load(weights_only=True): a pickle that would run code fails to load, and never runs."""
    hostile = write_weight_file(tmp_path / "given", form, marker)
    result = run_cli(["score", "fidelity", "--real", ws.images, "--synthetic", ws.holdout, "--extractor",
                      "inception", "--weights", hostile, "--out", tmp_path / "out"])
    assert_refused(result, marker, hostile)


def _ldm_swapped(ws: Workspace, target: Path, marker: Path, payload: str) -> Path:
    if payload == "bin-instead":  # the safetensors removed, a torch.save .bin next to where it was
        folder = checkpoint_with_swapped_weights(ws.ldm, target, "unet/diffusion_pytorch_model.safetensors", b"")
        (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
        (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(torch_zip_bytes(marker))
        return folder / "unet" / "diffusion_pytorch_model.bin"
    data = pickle_bytes(marker) if payload == "pickle-renamed" else torch_zip_bytes(marker)
    folder = checkpoint_with_swapped_weights(ws.ldm, target, "vae/diffusion_pytorch_model.safetensors", data)
    return folder / "vae" / "diffusion_pytorch_model.safetensors"


def _deepssim_swapped(ws: Workspace, target: Path, marker: Path, payload: str) -> Path:
    data = pickle_bytes(marker) if payload == "pickle-renamed" else torch_zip_bytes(marker)
    folder = checkpoint_with_swapped_weights(ws.deepssim, target, "model.safetensors", data)
    return folder / "model.safetensors"


# (name, build the hostile folder → the hostile file inside it, command, words the error must say)
FOLDER_CASES = [
    ("ldm: vae weights = pickle under the .safetensors name", lambda ws, t, m: _ldm_swapped(ws, t, m, "pickle-renamed"),
     "generate --model", ()),
    ("ldm: vae weights = torch.save zip under the .safetensors name",
     lambda ws, t, m: _ldm_swapped(ws, t, m, "torch-zip"), "generate --model", ()),
    ("ldm: unet weights only as a pickled .bin", lambda ws, t, m: _ldm_swapped(ws, t, m, "bin-instead"),
     "generate --model", ("pickle",)),
    ("ldm resumed by generator train: pickled .bin", lambda ws, t, m: _ldm_swapped(ws, t, m, "bin-instead"),
     "generator train --out", ("pickle",)),
    ("diffusers pipeline: unet weights only as a pickled .bin",
     lambda ws, t, m: pipeline_with_pickled_weights(t, m, "bin") / "unet" / "diffusion_pytorch_model.bin",
     "generate --model", ("pickle",)),
    ("diffusers pipeline: pickle under the .safetensors name",
     lambda ws, t, m: pipeline_with_pickled_weights(t, m, "renamed") / "unet" / "diffusion_pytorch_model.safetensors",
     "generate --model", ("pickle",)),
    ("diffusers pipeline: custom pipeline.py and a class from it",
     lambda ws, t, m: pipeline_with_custom_code(t, m) / "model_index.json", "generate --model", ()),
    ("deepssim checkpoint: pickle under the .safetensors name",
     lambda ws, t, m: _deepssim_swapped(ws, t, m, "pickle-renamed"), "replicas --deepssim", ("pickle",)),
    ("deepssim checkpoint: torch.save zip under the .safetensors name",
     lambda ws, t, m: _deepssim_swapped(ws, t, m, "torch-zip"), "replicas --deepssim", ("pickle",)),
]


def _folder_command(command: str, ws: Workspace, folder: Path, out: Path) -> list[str]:
    if command == "generator train --out":  # resuming a run whose checkpoint was tampered with
        return ["generator", "train", "--data", ws.config("data"), "--data-root", ws.images,
                "--config", ws.config("generator"), "--out", folder]
    return FILE_COMMANDS[command](ws, folder, out)


@pytest.mark.parametrize("name,build,command,words", FOLDER_CASES,
                         ids=[c.values[0] if hasattr(c, "values") else c[0] for c in FOLDER_CASES])
def test_model_folder_with_pickled_weights_is_refused(ws, tmp_path, marker, name, build, command, words):
    hostile = build(ws, tmp_path / "model", marker)
    folder = tmp_path / "model"
    result = run_cli(_folder_command(command, ws, folder, tmp_path / "out"))
    assert not marker.exists(), f"the payload ran: {name}"
    problems = check_clean_error(result, words=words)
    line = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    assert str(folder) in line, (hostile, line)
    assert not problems, problems


def test_real_checkpoints_still_load(ws, tmp_path):
    """The refusals above are not a loader that refuses everything: the untampered folders work."""
    assert run_cli(["generate", "--model", ws.ldm, "--n", "2", "--out", tmp_path / "g"]).code == 0
    assert len(list((tmp_path / "g").glob("*.png"))) == 2


# --- data files that could carry pickles -------------------------------------------------------------------------

def _export(ws: Workspace, folder: Path, out: Path) -> list[str]:
    return ["data", "export", "--data", ws.config("data3d" if any(folder.glob("*.nii.gz")) else "data"),
            "--data-root", folder, "--split", "all", "--out", out]


@pytest.mark.parametrize("form", ["npy-object-array", "pickle-renamed-npy"])
def test_npy_holding_a_pickle_is_refused_and_never_unpickled(ws, tmp_path, marker, form):
    folder = tmp_path / "data"
    shutil.copytree(ws.images, folder)
    hostile = folder / "i00.npy"
    if form == "npy-object-array":
        npy_object_array(hostile, marker)
    else:
        hostile.write_bytes(pickle_bytes(marker))
    (folder / "manifest.csv").write_text("file,id\ni00.npy,evil\ni01.png,ok\n")
    result = run_cli(_export(ws, folder, tmp_path / "out"))
    assert not marker.exists()
    assert not check_clean_error(result, names=(str(hostile),), words=("pickle",)), result.stderr


def test_nifti_pickle_extension_is_never_unpickled(ws, tmp_path, marker):
    """nibabel keeps a 'pypickle' header extension as bytes; the suite reads the volume and ignores it."""
    folder = tmp_path / "vols"
    folder.mkdir()
    nifti_with_pickle_extension(folder / "v.nii.gz", marker)
    (ws.root / "data3d.yaml").write_text(yaml.safe_dump({"name": "v", "reader": "folder",
                                                         "preprocess": {"shape": [8, 8, 8]}}))
    result = run_cli(_export(ws, folder, tmp_path / "out"))
    assert result.code == 0, result.stderr
    assert not marker.exists() and len(list((tmp_path / "out").glob("*.nii.gz"))) == 1


# --- configs are data ---------------------------------------------------------------------------------------------

# every YAML the suite reads today → a command that reads `path` as that YAML
YAML_COMMANDS: dict[str, Callable[[Workspace, Path, Path], list[str]]] = {
    "dataset preset (--data)": lambda ws, p, out: ["data", "inspect", "--data", p, "--data-root", ws.images,
                                                   "--out", out],
    "generator preset (--config)": lambda ws, p, out: ["generator", "train", "--data", ws.config("data"),
                                                       "--data-root", ws.images, "--config", p, "--out", out],
    "deepssim dataset preset (--data)": lambda ws, p, out: ["deepssim", "train", "--data", p, "--data-root",
                                                            ws.images, "--out", out],
    "gates file (run --gates)": lambda ws, p, out: ["run", "--model", ws.ldm, *_data(ws), "--gates", p,
                                                    "--out", out],
    "run configuration (run --config)": lambda ws, p, out: ["run", "--model", ws.ldm, *_data(ws), "--config", p,
                                                            "--out", out],
}


def _hostile_yamls(marker: Path) -> dict[str, str]:
    return {**yaml_object_tags(marker), "alias-bomb": yaml_alias_bomb()}


def test_option_values_are_never_constructed(ws, tmp_path, marker):
    """`--option SCORER.KEY=VALUE` reads VALUE as YAML: a tag that would build an object is refused."""
    touch = f"open({str(marker)!r}, 'w').write('yaml')"
    result = run_cli(["replicas", "--train", ws.images, "--holdout", ws.holdout, "--synthetic", ws.images,
                      "--out", tmp_path / "out", "--scorers", "ncc",
                      "--option", f"ncc.k=!!python/object/apply:builtins.exec [\"{touch}\"]"])
    assert not marker.exists()
    assert not check_clean_error(result, words=("--option",)), result.stderr


@pytest.mark.parametrize("command", list(YAML_COMMANDS))
@pytest.mark.parametrize("kind", list(_hostile_yamls(Path("m"))))
def test_hostile_yaml_is_refused(ws, tmp_path, marker, command, kind):
    path = tmp_path / "evil.yaml"
    path.write_text(_hostile_yamls(marker)[kind])
    result = run_cli(YAML_COMMANDS[command](ws, path, tmp_path / "out"))
    assert not marker.exists()
    words = ("alias",) if kind == "alias-bomb" else ("refused", "python/")
    assert not check_clean_error(result, names=(str(path),), words=words), result.stderr
