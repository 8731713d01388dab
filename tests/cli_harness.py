"""Running `audit` commands the way a user does and checking how they end — shared by the reliability tests.

- `run_cli(argv)`: in-process (`audit.cli.main`), capturing stdout, stderr, every `logging` record (DEBUG and
  up, from any library) and every warning — fast, so the privacy and bad-input suites can run dozens of commands.
- `run_cli_subprocess(argv)`: a real process (`python -m audit.cli`), for what only a process shows (exit
  status after a signal, import-time output).
- `CliCase`: a named command whose argv is built from a workspace; phase-2 commands (`audit run`, `audit attack
  reid|mia`, `audit score fidelity|utility`) are added by appending a `CliCase` to the lists in the test modules.
- `tree_digest(folder)`: sha256 over every path, file content and symlink target: inputs must be byte-identical
  after a command.
- `check_clean_error(result, ...)`: the contract for bad input: exit 2, one line `error: <input>: <problem>`,
  no traceback, nothing on stdout claiming success.
- `CrashTarget` / `crash_and_resume`: a command killed with SIGKILL at moments drawn from a seed, then rerun
  (tests/test_crash_resume.py: `audit generate`; tests/test_crash_run.py: `audit run`).
- `tiny_training_setup`: a tiny labelled image folder and generator preset whose model trains in seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]


@dataclass
class CliResult:
    argv: list[str]
    code: int
    stdout: str
    stderr: str
    log: str = ""  # logging records and warnings, one per line

    @property
    def text(self) -> str:
        return "\n".join((self.stdout, self.stderr, self.log))


def run_cli(argv: Sequence[str], env: dict[str, str] | None = None) -> CliResult:
    """`audit ARGV` in this process; an exception escaping `main` is recorded as exit code 99 with its traceback
    in stderr (a bad-input test then fails on it, which is the point)."""
    from audit.cli import main

    argv = [str(a) for a in argv]
    out, err, log = io.StringIO(), io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            warnings.simplefilter("always")
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse errors
                code = exit_.code if isinstance(exit_.code, int) else 2
            except BaseException:  # noqa: BLE001 — recorded, and the test asserts on it
                import traceback

                traceback.print_exc(file=err)
                code = 99
        for w in caught:
            log.write(f"warning: {w.category.__name__}: {w.message} ({w.filename}:{w.lineno})\n")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return CliResult(argv, int(code), out.getvalue(), err.getvalue(), log.getvalue())


def cli_command(argv: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "audit.cli", *[str(a) for a in argv]]


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "SYNTH_AUDIT_PROGRESS": "off", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.update(extra or {})
    return env


def run_cli_subprocess(argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 600) -> CliResult:
    proc = subprocess.run(cli_command(argv), capture_output=True, text=True, env=subprocess_env(env),
                          timeout=timeout, cwd=REPO)
    return CliResult([str(a) for a in argv], proc.returncode, proc.stdout, proc.stderr)


@dataclass
class CliCase:
    """A command of the suite, built from a workspace object (attributes = paths the command needs)."""

    name: str
    argv: Callable[[Any], list[str]]
    expect_codes: tuple[int, ...] = (0,)
    notes: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


# --- crash and resume: SIGKILL at seeded moments, then rerun -------------------------------------------------

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
    expect_codes: tuple[int, ...] = (0,)  # exit codes of a run that was not killed (audit run: its verdict's)


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
            if proc.returncode not in target.expect_codes:
                log.problems.append(f"{target.name}: a run ended with {proc.returncode}: {proc.stderr.read()[-500:]}")
        proc.stderr.close()
        log.problems += [f"after a kill: {p}" for p in target.whole(out)]
    final = subprocess.run(cli_command(target.argv(out)), env=subprocess_env(target.env), capture_output=True,
                           text=True, timeout=timeout)
    if final.returncode not in target.expect_codes:
        log.problems.append(f"{target.name}: the rerun failed ({final.returncode}): {final.stderr[-800:]}")



def check_resumed(target: CrashTarget, reference: Path, out: Path, log: CrashLog,
                  leftovers: Callable[[Path], list[str]]) -> None:
    """After crash_and_resume: no problem logged, no temporary file left, the outputs equal the reference's."""
    assert not log.problems, log.problems
    assert not leftovers(out), leftovers(out)
    assert not target.compare(reference, out), target.compare(reference, out)[:5]


def survive_seeded_kills(target: CrashTarget, reference: Path, root: Path, seeds: Sequence[int], kills_each: int,
                         leftovers: Callable[[Path], list[str]]) -> CrashLog:
    """One folder per seed, `kills_each` kills at the seed's moments, then finished and compared."""
    log = CrashLog()
    for seed in seeds:
        out = root / f"seed{seed}"
        crash_and_resume(target, out, kill_moments(seed, kills_each), log)
        check_resumed(target, reference, out, log, leftovers)
    return log


def run_cli_one_thread(argv: Sequence[str], env: dict[str, str] | None = None) -> CliResult:
    """`run_cli` with torch on one thread (training on a shared 2-core machine), asserting success."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_cli(argv, env)
    finally:
        torch.set_num_threads(threads)
    assert result.code == 0, result.stderr
    return result


def tiny_ldm2d_preset(steps: int = 2, side: int = 16) -> dict:
    """A generator preset small enough to train in seconds on a CPU (what the reliability tests need is a real
    checkpoint, not a good model)."""
    return {
        "kind": "ldm2d", "shape": [side, side],
        "autoencoder": {"channels": [8, 16], "latent_channels": 2, "norm_num_groups": 4, "steps": steps,
                        "batch_size": 4},
        "unet": {"channels": [16, 32], "attention_levels": [False, True], "norm_num_groups": 4, "head_channels": 16,
                 "steps": steps, "batch_size": 4},
        "sampling": {"num_inference_steps": 2},
    }


def tiny_training_setup(root: Path, n_images: int = 8, side: int = 16, steps: int = 1,
                        n_test: int = 0) -> list[str]:
    """Write a folder of `n_images` random 16-bit PNGs (split train, BI-RADS labels), its dataset preset and a
    tiny generator preset under `root`; return the `audit generator train` arguments that train `root/ldm`.

    With `n_test` > 0 (what `audit run` needs) `n_test` held-out images follow, and every image gets a patient
    (two views each: CC, MLO), laterality and density."""
    import yaml
    from PIL import Image

    data = root / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["file,split,birads" if not n_test else "file,id,patient_id,split,view,laterality,birads,density"]
    for i in range(n_images + n_test):
        Image.fromarray((rng.random((side, side)) * 65535).astype(np.uint16)).save(data / f"i{i}.png")
        split = "train" if i < n_images else "test"
        rows.append(f"i{i}.png,{split},{1 + i % 3}" if not n_test else
                    f"i{i}.png,i{i},p{i // 2},{split},{('CC', 'MLO')[i % 2]},L,{1 + i % 3},{'ABCD'[i % 4]}")
    (data / "manifest.csv").write_text("\n".join(rows) + "\n")
    (root / "data.yaml").write_text(yaml.safe_dump({"name": "tiny", "reader": "folder",
                                                    "preprocess": {"shape": [side, side]}}))
    (root / "gen.yaml").write_text(yaml.safe_dump(tiny_ldm2d_preset(steps=steps, side=side)))
    return ["generator", "train", "--data", str(root / "data.yaml"), "--data-root", str(data),
            "--config", str(root / "gen.yaml"), "--out", str(root / "ldm"), "--threads", "1"]


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path → sha256 of content (files) or 'link:' + target (symlinks), for every entry under folder."""
    digest = {}
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            digest[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            digest[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            digest[rel] = "dir"
    return digest


def check_clean_error(result: CliResult, names: Sequence[str] = (), words: Sequence[str] = ()) -> list[str]:
    """Problems with how a bad-input command ended (empty list = it ended as the contract says)."""
    problems = []
    err_lines = [line for line in result.stderr.splitlines() if line.strip()]
    if result.code != 2:
        problems.append(f"exit code {result.code}, expected 2")
    if "Traceback (most recent call last)" in result.stderr or "Traceback" in result.stdout:
        problems.append("a traceback was printed without --debug")
    if len(err_lines) != 1:
        problems.append(f"{len(err_lines)} lines on stderr, expected 1: {result.stderr[-600:]!r}")
    elif not err_lines[0].startswith("error: "):
        problems.append(f"stderr does not start with 'error: ': {err_lines[0][:200]!r}")
    line = err_lines[-1] if err_lines else ""
    lowered = line.lower()
    for name in names:
        if name not in line:
            problems.append(f"the error does not name {name!r}: {line[:300]!r}")
    for word in words:
        if word.lower() not in lowered:
            problems.append(f"the error does not say {word!r}: {line[:300]!r}")
    if "PASS" in result.stdout:
        problems.append("stdout says PASS")
    return problems
