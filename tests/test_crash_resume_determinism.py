"""Determinism of what exists today: two runs with one seed (same thread count, same device, same batch size)
write byte-identical outputs — `audit data export`, `audit replicas` (timings aside) and `audit generate`
(tested in test_crash_resume.py). What is *not* bit-identical across thread counts and batch sizes is measured by
`python -m tests.determinism_probe` and written down in docs/reliability.md.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli_harness import run_cli, tree_digest
from tests.dicom_factory import write_vindr_tree


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_export_twice_is_byte_identical(tmp_path):
    root = tmp_path / "vindr"
    write_vindr_tree(root, n_studies=3)
    for name in ("a", "b"):
        argv = ["data", "export", "--data", "vindr", "--data-root", root, "--split", "train,test",
                "--out", tmp_path / name, "--cache-dir", tmp_path / f"cache-{name}"]  # both decode from scratch
        assert run_cli(argv).code == 0
    a, b = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "b")
    assert len(a) >= 12 and {k: v for k, v in a.items() if k != "export.json"} == \
        {k: v for k, v in b.items() if k != "export.json"}
    records = [json.loads((tmp_path / name / "export.json").read_text()) for name in ("a", "b")]
    for record in records:
        record["result"].pop("out")  # the folder's own path
    assert records[0] == records[1]


def _folder(folder, seed: int, n: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 65535, (48, 48), dtype=np.uint16)).save(folder / f"{folder.name}{i}.png")


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in ("seconds", "timings", "created")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def test_replicas_twice_is_identical_but_for_timings(tmp_path, one_thread):
    for name, seed, n in (("train", 0, 8), ("holdout", 1, 6), ("synth", 2, 5)):
        _folder(tmp_path / name, seed, n)
    for out in ("r1", "r2"):
        result = run_cli(["replicas", "--train", tmp_path / "train", "--holdout", tmp_path / "holdout",
                          "--synthetic", tmp_path / "synth", "--out", tmp_path / out, "--seed", "5"])
        assert result.code in (0, 1), result.stderr  # 1 = the release gate said FAIL; the outputs are written
    first, second = tree_digest(tmp_path / "r1"), tree_digest(tmp_path / "r2")
    assert sorted(first) == sorted(second)
    for name in first:
        if name.endswith(".json"):
            a = json.loads((tmp_path / "r1" / name).read_text())
            b = json.loads((tmp_path / "r2" / name).read_text())
            assert _without_timings(a) == _without_timings(b), name
        else:
            assert first[name] == second[name], name
