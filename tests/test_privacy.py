"""The suite's own privacy: identifying DICOM values planted in the headers never reach any output."""

import subprocess
import sys
from pathlib import Path

from tests.dicom_factory import write_vindr_tree

PLANTED = {
    "PatientName": "Sentinel^Henrietta",
    "PatientID": "PID-7781-QX",
    "PatientBirthDate": "19431127",
    "StudyDate": "20190314",
    "InstitutionName": "Hospital Zebedee",
    "ReferringPhysicianName": "Dr^Quimby",
    "AccessionNumber": "ACC99731",
}


def every_output_file(*folders: Path):
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                yield path


def test_planted_identity_never_reaches_cache_reports_or_logs(tmp_path):
    root = tmp_path / "vindr"
    write_vindr_tree(root, n_studies=2, identity=PLANTED)
    cache, out = tmp_path / "cache", tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "audit.cli", "data", "inspect", "--data", "vindr", "--data-root", str(root),
         "--out", str(out), "--cache-dir", str(cache)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    written = list(every_output_file(cache, out))
    assert any(p.suffix == ".npz" for p in written) and any(p.name == "inspect.json" for p in written)
    assert any(p.parent.name == "dicom-headers" for p in written)  # header memo exists and is searched too
    logs = (result.stdout + result.stderr).encode()
    for value in PLANTED.values():
        for needle in {value.encode(), value.replace("^", " ").encode(), value.split("^")[-1].encode()}:
            assert needle not in logs
            for path in written:
                assert needle not in path.read_bytes(), f"{value!r} leaked into {path}"
    # the planted values really are in the inputs, so the search above could have found them
    some_dicom = next(root.rglob("*.dicom")).read_bytes()
    assert PLANTED["PatientID"].encode() in some_dicom
