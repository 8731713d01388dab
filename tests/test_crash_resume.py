"""Crash and resume: a command killed with SIGKILL at moments drawn from a seed, then rerun, ends with exactly the
outputs of an uninterrupted run — byte for byte — and no truncated or temporary file.

`CrashTarget` describes a command for the harness: its argv for an output folder, how far a run has got (to aim
kills at the writing phase, not only at start-up) and how to compare its outputs. Phase 2 adds `audit run`
(compare report.json without timestamps, every figure and table byte for byte) as another `CrashTarget`.

The moments: the k kills on one folder draw k shares of the work uniformly in [0, 1), sorted; a kill waits until
the folder holds that share of the items (at once if it already does: a kill during start-up), then a further
`delay` drawn in [0, 40 ms] (a short one lands among the writes of a batch's files). Share 0 kills during start-up,
model loading or the first batch; a run with nothing left to write is killed while it writes its manifest.
After every kill, every file under its final name must be whole (written atomically) before the rerun.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.cli_harness import (CrashLog, CrashTarget, KillMoment, check_resumed, cli_command, crash_and_resume,
                               run_cli, run_cli_one_thread, subprocess_env, survive_seeded_kills, tiny_training_setup)


# --- audit generate ---------------------------------------------------------------------------------------------

N_IMAGES = 24


def png_count(out: Path) -> int:
    return sum(1 for p in out.glob("[!.]*.png")) if out.is_dir() else 0


def folders_differ(reference: Path, resumed: Path) -> list[str]:
    names = sorted(p.name for p in reference.iterdir())
    got = sorted(p.name for p in resumed.iterdir())
    if names != got:
        return [f"files differ: extra {sorted(set(got) - set(names))}, missing {sorted(set(names) - set(got))}"]
    return [f"{name} differs" for name in names if (reference / name).read_bytes() != (resumed / name).read_bytes()]


def broken_files(out: Path) -> list[str]:
    problems = []
    for path in sorted(out.glob("*")) if out.is_dir() else []:
        if path.name.startswith(".") and path.name.endswith(".tmp.png"):
            continue  # a temp file may stay until the rerun removes it; never under a final name
        if path.suffix == ".png":
            try:
                with Image.open(path) as im:
                    im.load()
            except Exception as err:  # noqa: BLE001 — any decoder error means a torn file
                problems.append(f"{path.name} is not a whole PNG ({type(err).__name__})")
    return problems


def temporary_files(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash")
    run_cli_one_thread(tiny_training_setup(root, n_images=8, side=16, steps=1))
    return root / "ldm"


def generate_target(model: Path) -> CrashTarget:
    return CrashTarget(
        name="audit generate",
        argv=lambda out: ["generate", "--model", model, "--n", N_IMAGES, "--batch-size", 4, "--steps", 20,
                          "--seed", 3, "--threads", 1, "--out", out],
        progress=png_count, compare=folders_differ, whole=broken_files, total=N_IMAGES)


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    target = generate_target(tiny_model)
    result = subprocess.run(cli_command(target.argv(out)), env=subprocess_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert png_count(out) == N_IMAGES
    return out


def test_generate_killed_then_rerun_equals_an_uninterrupted_run(tiny_model, reference, tmp_path):
    """The quick variant: one kill during start-up or the first batch, one in the middle of writing."""
    target = generate_target(tiny_model)
    log = CrashLog()
    crash_and_resume(target, tmp_path / "out", [KillMoment(0.0, 0.0), KillMoment(0.5, 0.005)], log)
    check_resumed(target, reference, tmp_path / "out", log, temporary_files)
    assert log.kills >= 1


@pytest.mark.slow
def test_generate_survives_ten_seeded_kills(tiny_model, reference, tmp_path):
    """2 folders × 5 kills each (moments from seeds 13 and 14), every folder then finished and compared."""
    log = survive_seeded_kills(generate_target(tiny_model), reference, tmp_path, (13, 14), 5, temporary_files)
    print(f"\ncrash/resume (audit generate): {log.kills} kills survived ({log.finished_first} runs ended before "
          f"their moment); images present at the kills (of {N_IMAGES}): {log.progress_at_kill}")
    assert log.kills >= 10


def test_generate_twice_with_one_seed_is_byte_identical(tiny_model, reference, tmp_path):
    """Determinism: a second uninterrupted run (in this process, same thread count) writes the same bytes."""
    threads = torch.get_num_threads()
    try:
        result = run_cli(generate_target(tiny_model).argv(tmp_path / "again"))
    finally:
        torch.set_num_threads(threads)
    assert result.code == 0, result.stderr
    assert not folders_differ(reference, tmp_path / "again")
