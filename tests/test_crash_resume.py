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

import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli_harness import cli_command, run_cli, subprocess_env, tiny_training_setup


@dataclass(frozen=True)
class KillMoment:
    fraction: float  # wait until the output holds this share of the items...
    delay: float  # ... then this many seconds more, then SIGKILL


def kill_moments(seed: int, count: int) -> list[KillMoment]:
    rng = np.random.default_rng(seed)
    shares, delays = np.sort(rng.uniform(0.0, 1.0, count)), rng.uniform(0.0, 0.04, count)
    return [KillMoment(float(f), float(d)) for f, d in zip(shares, delays)]


@dataclass
class CrashTarget:
    name: str
    argv: Callable[[Path], list[str]]  # output folder → the command's arguments
    progress: Callable[[Path], int]  # output folder → items written so far
    compare: Callable[[Path, Path], list[str]]  # (reference, resumed) → differences
    whole: Callable[[Path], list[str]]  # output folder → files under a final name that are not whole
    total: int  # items a complete run writes
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class CrashLog:
    kills: int = 0  # processes actually killed (still running at the moment)
    finished_first: int = 0  # processes that ended before their moment came
    progress_at_kill: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def crash_and_resume(target: CrashTarget, out: Path, moments: list[KillMoment], log: CrashLog,
                     timeout: float = 300) -> None:
    """Kill a run at each moment in turn (each a fresh process on the same folder), then run it to the end."""
    for moment in moments:
        goal = int(moment.fraction * target.total)
        proc = subprocess.Popen(cli_command(target.argv(out)), env=subprocess_env(target.env),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while proc.poll() is None and target.progress(out) < goal and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(moment.delay)
        if proc.poll() is None:
            progress = target.progress(out)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            log.kills += 1
            log.progress_at_kill.append(progress)
        else:
            log.finished_first += 1
            if proc.returncode != 0:
                log.problems.append(f"{target.name}: a run ended with {proc.returncode}: {proc.stderr.read()[-500:]}")
        proc.stderr.close()
        log.problems += [f"after a kill: {p}" for p in target.whole(out)]
    final = subprocess.run(cli_command(target.argv(out)), env=subprocess_env(target.env), capture_output=True,
                           text=True, timeout=timeout)
    if final.returncode != 0:
        log.problems.append(f"{target.name}: the rerun failed ({final.returncode}): {final.stderr[-800:]}")


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
    train = tiny_training_setup(root, n_images=8, side=16, steps=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_cli(train)
    finally:
        torch.set_num_threads(threads)
    assert result.code == 0, result.stderr
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


def _check(target: CrashTarget, reference: Path, out: Path, log: CrashLog) -> None:
    assert not log.problems, log.problems
    assert not temporary_files(out), temporary_files(out)
    assert not target.compare(reference, out), target.compare(reference, out)[:5]


def test_generate_killed_then_rerun_equals_an_uninterrupted_run(tiny_model, reference, tmp_path):
    """The quick variant: one kill during start-up or the first batch, one in the middle of writing."""
    target = generate_target(tiny_model)
    log = CrashLog()
    crash_and_resume(target, tmp_path / "out", [KillMoment(0.0, 0.0), KillMoment(0.5, 0.005)], log)
    _check(target, reference, tmp_path / "out", log)
    assert log.kills >= 1


@pytest.mark.slow
def test_generate_survives_ten_seeded_kills(tiny_model, reference, tmp_path):
    """2 folders × 5 kills each (moments from seeds 13 and 14), every folder then finished and compared."""
    target = generate_target(tiny_model)
    log = CrashLog()
    for trial in range(2):
        out = tmp_path / f"trial{trial}"
        crash_and_resume(target, out, kill_moments(13 + trial, 5), log)
        _check(target, reference, out, log)
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
