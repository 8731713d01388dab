"""`audit data export`: a split as an image folder that the folder reader reads back exactly; resumable."""

import json

import numpy as np

from audit.cli import main
from audit.config import load_data_config
from audit.data.dataset import open_dataset
from audit.data.readers.folder import open_folder
from tests.dicom_factory import write_vindr_tree


def test_export_round_trips_and_resumes(tmp_path, capsys):
    root = tmp_path / "vindr"
    rows = write_vindr_tree(root, n_studies=3)
    out = tmp_path / "train"
    args = ["data", "export", "--data", "vindr", "--data-root", str(root), "--split", "train", "--out", str(out)]
    assert main(args) == 0
    source = open_dataset(load_data_config("vindr", root=root)).subset(split="train")
    exported = open_folder(out)
    assert len(exported) == len(source) == 8
    by_id = {r.id: r for r in exported.records}
    for record in source.records:
        back = by_id[record.id]
        assert back.patient_id == record.patient_id and back.labels.birads == record.labels.birads
        assert back.view == record.view and back.labels.findings == record.labels.findings
        np.testing.assert_allclose(exported.load(back)[0], source.load(record)[0], atol=0.5 / 65535 + 1e-7)
    # an interrupted export: one image lost; the rerun writes just that one and ends with the same folder
    victim = out / f"{rows[0]['image_id']}.png"
    before = victim.read_bytes()
    victim.unlink()
    assert main(args) == 0
    assert victim.read_bytes() == before and "7 already there" in capsys.readouterr().out


def test_export_refuses_foreign_folder_and_reports_failures(tmp_path, capsys):
    root = tmp_path / "vindr"
    rows = write_vindr_tree(root, n_studies=2)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    args = ["data", "export", "--data", "vindr", "--data-root", str(root), "--split", "train"]
    assert main(args + ["--out", str(foreign)]) == 2
    assert (foreign / "keep.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1
    broken = root / "images" / rows[1]["study_id"] / f"{rows[1]['image_id']}.dicom"
    broken.write_bytes(broken.read_bytes()[:-2000])
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(args + ["--out", str(out)]) == 2  # a partial export is an error, its failures listed
    text = capsys.readouterr().err
    assert "INCOMPLETE: 1 of 4 images failed" in text and str(broken) in text and len(text.splitlines()) == 1
    run = json.loads((out / "export.json").read_text())["result"]
    assert run["complete"] is False and run["written"] == 3 and run["failed"][0]["path"] == str(broken)
