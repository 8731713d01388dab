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
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

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


def tiny_training_setup(root: Path, n_images: int = 8, side: int = 16, steps: int = 1) -> list[str]:
    """Write a folder of `n_images` random 16-bit PNGs (split train, BI-RADS labels), its dataset preset and a
    tiny generator preset under `root`; return the `audit generator train` arguments that train `root/ldm`."""
    import numpy as np
    import yaml
    from PIL import Image

    data = root / "data"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["file,split,birads"]
    for i in range(n_images):
        Image.fromarray((rng.random((side, side)) * 65535).astype(np.uint16)).save(data / f"i{i}.png")
        rows.append(f"i{i}.png,train,{1 + i % 3}")
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
