"""Untrusted names and paths: manifest rows that escape the dataset folder are refused (naming the manifest and the
line), files declaring enormous images are refused from their header before anything is decoded, and hostile file
names travel through the data layer and the CSV writers as plain text.

Phase 2: the same hostile names through `audit run` into the HTML report (rendered in Chromium: no dialog, no
script) — add them to `HOSTILE_NAMES` consumers in the report tests.
"""

from __future__ import annotations

import csv
import os
import resource
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from audit.data.imageio import read_image
from audit.errors import AuditInputError
from tests.bombs import dicom_bomb, nifti_bomb, npy_bomb, png_bomb, png_between_limits, tiff_bomb
from tests.cli_harness import check_clean_error, run_cli, tree_digest
from tests.dicom_factory import write_vindr_tree


def _png(path: Path, seed: int = 0, shape=(12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 65535, shape, dtype=np.uint16)
    Image.fromarray(image).save(path)
    return path


def _folder_preset(tmp_path: Path, shape=(12, 10)) -> str:
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump({"name": "f", "reader": "folder", "preprocess": {"shape": list(shape)}}))
    return str(path)


# --- manifests that escape their root ---------------------------------------------------------------------------

@pytest.fixture
def outside(tmp_path) -> Path:
    """A real image outside every dataset folder: what an escaping row would make the suite read."""
    return _png(tmp_path / "elsewhere" / "secret.png", seed=9)


ESCAPES = {
    "dot-dot": lambda root, outside: os.path.relpath(outside, root),
    "absolute": lambda root, outside: str(outside),
    "symlink-out": lambda root, outside: (root / "link.png").symlink_to(outside) or "link.png",
    "symlinked-dir-out": lambda root, outside: (root / "sub").symlink_to(outside.parent) or "sub/secret.png",
}


@pytest.mark.parametrize("escape", list(ESCAPES))
def test_folder_manifest_escaping_its_root_is_refused(tmp_path, outside, escape):
    root = tmp_path / "data"
    _png(root / "a.png")
    listed = ESCAPES[escape](root, outside)
    (root / "manifest.csv").write_text(f"file,id\na.png,a\n{listed},b\n")
    preset = _folder_preset(tmp_path)
    before = tree_digest(tmp_path)
    for argv in (["data", "export", "--data", preset, "--data-root", root, "--split", "all",
                  "--out", tmp_path / "out"],
                 ["replicas", "--train", root, "--holdout", root, "--synthetic", root, "--out", tmp_path / "rep"]):
        result = run_cli(argv)
        assert not check_clean_error(result, names=(str(root / "manifest.csv"), "line 3")), result.stderr
    assert tree_digest(tmp_path) == before  # nothing written, nothing changed


def test_folder_without_manifest_refuses_a_symlink_out(tmp_path, outside):
    root = tmp_path / "data"
    _png(root / "a.png")
    (root / "z.png").symlink_to(outside)
    result = run_cli(["replicas", "--train", root, "--holdout", root, "--synthetic", root, "--out", tmp_path / "r"])
    assert not check_clean_error(result, names=(str(root / "z.png"),), words=("outside",)), result.stderr


def test_a_dataset_root_that_is_itself_a_symlink_works(tmp_path):
    real = tmp_path / "real"
    _png(real / "a.png")
    (real / "manifest.csv").write_text("file,id\na.png,a\n")
    (tmp_path / "alias").symlink_to(real)
    result = run_cli(["data", "export", "--data", _folder_preset(tmp_path), "--data-root", tmp_path / "alias",
                      "--split", "all", "--out", tmp_path / "out"])
    assert result.code == 0, result.stderr


@pytest.mark.parametrize("escape", ["dot-dot", "absolute", "symlink-out"])
def test_nifti_manifest_escaping_its_root_is_refused(tmp_path, escape):
    import nibabel as nib

    root = tmp_path / "vols"
    root.mkdir()
    outside = tmp_path / "elsewhere" / "v.nii.gz"
    outside.parent.mkdir()
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.eye(4)), outside)
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.eye(4)), root / "ok.nii.gz")
    listed = ESCAPES[escape](root, outside)
    (root / "manifest.csv").write_text(f"id,patient_id,split,path\na,p1,train,ok.nii.gz\nb,p2,train,{listed}\n")
    preset = tmp_path / "nifti.yaml"
    preset.write_text(yaml.safe_dump({"name": "n", "reader": "nifti", "preprocess": {"shape": [6, 6, 6]}}))
    result = run_cli(["data", "inspect", "--data", preset, "--data-root", root, "--out", tmp_path / "out"])
    assert not check_clean_error(result, names=(str(root / "manifest.csv"), "line 3")), result.stderr


@pytest.mark.parametrize("image_id", ["../../../elsewhere/x", "sub/dir", "..", "a\\b"])
def test_vindr_ids_that_would_name_other_paths_are_refused(tmp_path, image_id):
    root = tmp_path / "vindr"
    write_vindr_tree(root, n_studies=2)
    csv_path = root / "breast-level_annotations.csv"
    rows = list(csv.DictReader(open(csv_path)))
    rows[1]["image_id"] = image_id
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = run_cli(["data", "inspect", "--data", "vindr", "--data-root", root, "--out", tmp_path / "out"])
    assert not check_clean_error(result, names=(str(csv_path), "line 3"), words=("image_id",)), result.stderr


# --- decompression bombs -----------------------------------------------------------------------------------------

BOMBS = {
    "png-60000x60000": (png_bomb, "bomb.png", "Pillow"),
    "png-12000x12000-between-limits": (png_between_limits, "bomb.png", "header declares"),
    "dicom-60000x60000": (dicom_bomb, "bomb.dcm", "header declares"),
    "nifti-32767^3": (nifti_bomb, "bomb.nii.gz", "header declares"),
    "nifti-32767^3-uncompressed": (nifti_bomb, "bomb.nii", "header declares"),
    "npy-60000x60000": (npy_bomb, "bomb.npy", "header declares"),
    "tiff-60000x60000": (tiff_bomb, "bomb.tif", "header declares"),
}


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_decompression_bomb_is_refused_from_its_header(tmp_path, bomb):
    build, name, words = BOMBS[bomb]
    path = build(tmp_path / name)
    assert path.stat().st_size < 2000  # the whole bomb is a header
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(AuditInputError, match=words):
        read_image(path)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < 100, f"peak memory grew by {grown_mb:.0f} MB"


def test_bombs_through_the_commands_a_user_runs(tmp_path):
    """A bomb among ordinary images: `audit replicas` stops with one line naming it; a VinDr DICOM bomb stops
    `audit data export` the same way."""
    root = tmp_path / "imgs"
    for i in range(3):
        _png(root / f"ok{i}.png", seed=i)
    png_bomb(root / "zz-bomb.png")
    result = run_cli(["replicas", "--train", root, "--holdout", root, "--synthetic", root, "--out", tmp_path / "r"])
    assert not check_clean_error(result, names=(str(root / "zz-bomb.png"),), words=("bomb",)), result.stderr
    vindr = tmp_path / "vindr"
    rows = write_vindr_tree(vindr, n_studies=2)
    victim = vindr / "images" / rows[0]["study_id"] / f"{rows[0]['image_id']}.dicom"
    dicom_bomb(victim)
    result = run_cli(["data", "export", "--data", "vindr", "--data-root", vindr, "--split", "train",
                      "--out", tmp_path / "out"])
    assert not check_clean_error(result, names=(str(victim),), words=("INCOMPLETE", "header declares")), \
        result.stderr


def test_size_limit_is_overridable(tmp_path, monkeypatch):
    small = _png(tmp_path / "small.png", shape=(40, 40))  # 1600 pixels
    monkeypatch.setenv("SYNTH_AUDIT_MAX_ELEMENTS", "1000")
    with pytest.raises(AuditInputError, match="above the limit of 1,000"):
        read_image(small)
    monkeypatch.setenv("SYNTH_AUDIT_MAX_ELEMENTS", "2000")
    assert read_image(small).shape == (40, 40)


# --- hostile file names ---------------------------------------------------------------------------------------

HOSTILE_NAMES = [
    "<img src=x onerror=alert(1)>",
    "<script>alert('x')</script>",
    'quote"double',
    "quote'single",
    "line\nbreak",
    "carriage\rreturn",
    "tab\there",
    "comma,semi;colon",
    "dollar$\\frac{a}{$math",
    "=HYPERLINK(\"x\")",
    "%s%n{0}{__class__}",
    "ünïcödé-名前-😀",
    "back\\slash",
]


def _hostile_folder(tmp_path: Path) -> Path:
    root = tmp_path / "names"
    for i, name in enumerate(HOSTILE_NAMES):
        _png(root / f"{name}.png", seed=i)
    return root


def test_hostile_file_names_round_trip_as_plain_text(tmp_path):
    """Through the folder reader, `audit data inspect` (contact sheet captions), `audit data export`
    (manifest.csv), the folder reader again and `audit generate` with the folder as a model: every name comes
    back exactly, as text."""
    root = _hostile_folder(tmp_path)
    before = tree_digest(root)
    preset = _folder_preset(tmp_path)
    inspect = run_cli(["data", "inspect", "--data", preset, "--data-root", root, "--out", tmp_path / "inspect"])
    assert inspect.code == 0, inspect.stderr
    export = run_cli(["data", "export", "--data", preset, "--data-root", root, "--split", "all",
                      "--out", tmp_path / "export"])
    assert export.code == 0, export.stderr
    with open(tmp_path / "export" / "manifest.csv", newline="", encoding="utf-8") as fh:
        exported = list(csv.DictReader(fh))
    assert sorted(r["id"] for r in exported) == sorted(f"{n}.png" for n in HOSTILE_NAMES)
    assert all("/" not in r["file"] and "\n" not in r["file"] for r in exported)  # written file names are safe

    from audit.data.readers.folder import open_folder

    back = open_folder(tmp_path / "export")
    assert sorted(r.id for r in back.records) == sorted(f"{n}.png" for n in HOSTILE_NAMES)
    generated = run_cli(["generate", "--model", root, "--n", str(len(HOSTILE_NAMES)), "--out", tmp_path / "gen"])
    assert generated.code == 0, generated.stderr
    assert tree_digest(root) == before


def test_hostile_file_names_through_replicas(tmp_path):
    root = _hostile_folder(tmp_path)
    before = tree_digest(root)
    replicas = run_cli(["replicas", "--train", root, "--holdout", root, "--synthetic", root,
                        "--out", tmp_path / "rep", "--scorers", "ncc"])
    assert replicas.code in (0, 1), replicas.stderr  # 1: the gate flags the copies (synthetic = training images)
    with open(tmp_path / "rep" / "replicas.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["synthetic"] for r in rows) == sorted(f"{n}.png" for n in HOSTILE_NAMES)
    assert tree_digest(root) == before


def test_error_naming_a_file_with_a_newline_stays_one_line(tmp_path):
    root = tmp_path / "imgs"
    _png(root / "ok.png")
    (root / "bro\nken.png").write_bytes(b"not a png")
    result = run_cli(["replicas", "--train", root, "--holdout", root, "--synthetic", root, "--out", tmp_path / "r"])
    assert not check_clean_error(result, words=("cannot read image",)), result.stderr
    assert "bro\\nken.png" in result.stderr, result.stderr  # the name shown with its newline escaped
