"""`audit data inspect` end to end, and the CLI's error contract (one line, exit 2, --debug traceback)."""

import json
import subprocess
import sys

import pytest

from audit.cli import build_parser, main
from tests.dicom_factory import write_vindr_tree


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for name in build_parser()._subparsers._group_actions[0].choices:
        assert name in out


def test_inspect_counts_skips_and_draws(tmp_path, capsys):
    root = tmp_path / "vindr"
    rows = write_vindr_tree(root, n_studies=3, for_processing={5})
    broken = root / "images" / rows[7]["study_id"] / f"{rows[7]['image_id']}.dicom"
    broken.write_bytes(broken.read_bytes()[:-3000])  # truncated pixel data: found at decode time
    out = tmp_path / "inspect"
    code = main(["data", "inspect", "--data", "vindr", "--data-root", str(root), "--out", str(out)])
    assert code == 0
    report = json.loads((out / "inspect.json").read_text())
    assert report["n_records"] == 11 and report["decoded"] == 10
    assert report["counts"]["split"] == {"test": 4, "train": 7}
    assert report["counts"]["birads"] == {"1": 9, "4": 2}
    assert report["patients"]["train"]["patients"] == 2 and report["patients"]["patients_in_train_and_other_splits"] == 0
    assert [f["path"] for f in report["failed"]] == [str(broken)] and "truncated" in report["failed"][0]["reason"]
    assert report["skipped"][0]["kind"] == "excluded"
    text = capsys.readouterr().out
    assert str(broken) in text and "FOR PROCESSING" in text
    assert (out / "contact_sheet.png").stat().st_size > 10_000


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "audit.cli", *args], capture_output=True, text=True)


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    result = run_cli("data", "inspect", "--data", "vindr", "--data-root", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "breast-level_annotations.csv: not found" in result.stderr and "Traceback" not in result.stderr
    debug = run_cli("data", "inspect", "--data", "vindr", "--data-root", str(tmp_path), "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_empty_folder_under_nifti_preset(tmp_path):
    result = run_cli("data", "inspect", "--data", "phantom-brain3d", "--data-root", str(tmp_path))
    assert result.returncode == 2 and "manifest.csv: manifest not found" in result.stderr


def test_phantom_cli_writes_a_tree_the_reader_accepts(tmp_path, capsys):
    out = tmp_path / "mammo"
    assert main(["data", "phantom", "--kind", "mammo", "--patients", "3", "--out", str(out), "--seed", "1"]) == 0
    assert (out / "breast-level_annotations.csv").is_file() and len(list(out.glob("images/*/*.dicom"))) == 12
    assert main(["data", "inspect", "--data", "phantom-mammo", "--data-root", str(out),
                 "--out", str(tmp_path / "i"), "--decode", "sample"]) == 0
    report = json.loads((tmp_path / "i" / "inspect.json").read_text())
    assert report["n_records"] == 12 and report["failed"] == [] and report["skipped"] == []
    # refuses to write into a non-empty folder, and refuses bad arguments, with exit 2
    assert main(["data", "phantom", "--patients", "3", "--out", str(out)]) == 2
    assert main(["data", "phantom", "--patients", "3", "--out", str(tmp_path / "n"), "--seed", "-1"]) == 2
    assert "seed" in capsys.readouterr().err
