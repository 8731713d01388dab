"""Crash and resume of `audit run`, and one run per OUT: real stages (fidelity, membership, replicas) on a tiny
trained LDM, killed with SIGKILL at moments drawn from a seed, then rerun; the outputs must equal an
uninterrupted run's and no temporary file may remain. A second `audit run` on an OUT that a running process holds
exits 2 saying the folder is in use.

Compared after the rerun: the same files; every image, plot and table byte for byte; every JSON record (report.json,
stage.json, each stage's own JSON) equal once what describes this run rather than its results is removed —
timestamps and durations, data-cache hits (`*from_cache`: the rerun finds the real features the reference run
cached), the output folder's path and the git commit (the working tree is shared, so a commit can land between
the reference run and the rerun). The moments: shares of the work (generated images + finished
stages) drawn from a seed, as for `audit generate` (tests/cli_harness.py: `kill_moments`).

The fail-closed rules themselves (a stage error → ERROR exit 2, a skipped required stage and a gate on a missing
figure → never PASS, the lock held by a holder process, an interrupted stage resumed) are tested with planted
stages in tests/test_pipeline.py.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from reports.schema import strip_volatile
from tests.cli_harness import (CrashLog, CrashTarget, KillMoment, check_resumed, cli_command, crash_and_resume,
                               run_cli, run_cli_one_thread, subprocess_env, survive_seeded_kills, tiny_training_setup)

N_SYNTHETIC = 16
STAGES = ("fidelity", "membership", "replicas")
# CPU-sized stage parameters (the defaults are sized for real data sets): what is tested is the run's bookkeeping
RUN_CONFIG = {
    "n": N_SYNTHETIC, "seed": 3, "batch_size": 8, "threads": 1, "stages": ",".join(STAGES),
    "generate": {"batch_size": 4, "steps": 2},
    "fidelity": {"n_boot": 20, "kid_subsets": 10, "ratio_repeats": 2, "pca_plot": False},
    "membership": {"attacks": ["loss", "dcr"], "n_boot": 20, "min_pairs": 4},
    "replicas": {"scorers": ["ncc"]},
}
GATES = {"version": 1, "required_stages": list(STAGES), "gates": [
    {"metric": "replicas/flagged_share", "op": "<=", "threshold": 0.5, "on": "value", "severity": "fail"},
    {"metric": "membership/best/auc", "op": "<=", "threshold": 0.9, "on": "value", "severity": "fail"},
    {"metric": "fidelity/fid_over_floor", "op": "<=", "threshold": 3.0, "on": "value", "severity": "warn"}]}
VOLATILE_KEYS = {"created_at", "started_at", "finished_at", "seconds", "git_commit", "git_dirty"}
LOCK = ".audit-run.lock"  # kept on purpose: the lock of OUT (flock), not a leftover


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """16 training images of 8 patients, 8 held-out, a tiny LDM trained on them (seconds), the run's config and
    gates."""
    root = tmp_path_factory.mktemp("crash-run")
    run_cli_one_thread(tiny_training_setup(root, n_images=16, side=16, steps=1, n_test=8))
    (root / "run.yaml").write_text(yaml.safe_dump(RUN_CONFIG))
    (root / "gates.yaml").write_text(yaml.safe_dump(GATES, sort_keys=False))
    return {"root": root, "model": root / "ldm", "data": root / "data", "preset": root / "data.yaml",
            "config": root / "run.yaml", "gates": root / "gates.yaml", "cache": root / "cache"}


def run_argv(world: dict[str, Path], out: Path, *extra) -> list:
    return ["run", "--model", world["model"], "--data", world["preset"], "--data-root", world["data"],
            "--config", world["config"], "--gates", world["gates"], "--cache-dir", world["cache"], "--quiet",
            "--out", out, *extra]


def progress(out: Path) -> int:
    """Generated images + finished stages (generation's included): the moments are shares of this."""
    images = out / "generate" / "images"
    n_images = sum(1 for p in images.glob("[!.]*.png")) if images.is_dir() else 0
    return n_images + sum(1 for _ in out.glob("*/stage.json"))


def files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file())


def torn_files(out: Path) -> list[str]:
    """Files under a final name that are not whole: a PNG that does not decode, a JSON that does not parse."""
    problems = []
    for path in files(out) if out.is_dir() else []:
        if path.name.startswith("."):
            continue  # temporary names: removed by the rerun, checked at the end
        try:
            if path.suffix == ".png":
                with Image.open(path) as image:
                    image.load()
            elif path.suffix == ".json":
                json.loads(path.read_text())
        except Exception as err:  # noqa: BLE001 — any decoder error means a torn file
            problems.append(f"{path.relative_to(out)} is not whole ({type(err).__name__})")
    return problems


def scrub(value, out: Path):
    """A JSON record without what describes the run rather than its result (see the module's docstring)."""
    if isinstance(value, dict):
        return {k: scrub(v, out) for k, v in value.items() if k not in VOLATILE_KEYS and
                not k.startswith("seconds") and not k.endswith("from_cache")}
    if isinstance(value, list):
        return [scrub(v, out) for v in value]
    if isinstance(value, str):
        return value.replace(str(out), "<OUT>")
    return value


def outputs_differ(reference: Path, resumed: Path) -> list[str]:
    ref, got = ([p.relative_to(o).as_posix() for p in files(o)] for o in (reference, resumed))
    if ref != got:
        return [f"files differ: extra {sorted(set(got) - set(ref))}, missing {sorted(set(ref) - set(got))}"]
    problems = []
    for name in ref:
        a, b = reference / name, resumed / name
        if name == LOCK or a.suffix in (".html", ".md"):
            continue  # the lock holds a pid; the HTML/Markdown renderings of report.json show its timestamps
        if a.suffix == ".json":
            x, y = json.loads(a.read_text()), json.loads(b.read_text())
            if name == "report.json":
                x, y = strip_volatile(x), strip_volatile(y)
            if scrub(x, reference) != scrub(y, resumed):
                problems.append(f"{name} differs")
        elif a.read_bytes() != b.read_bytes():
            problems.append(f"{name} differs byte for byte")
    return problems


def temporary_files(out: Path) -> list[str]:
    return [p.relative_to(out).as_posix() for p in files(out) if p.name.startswith(".") and p.name != LOCK]


def run_target(world: dict[str, Path]) -> CrashTarget:
    return CrashTarget(name="audit run", argv=lambda out: run_argv(world, out), progress=progress,
                       compare=outputs_differ, whole=torn_files, total=N_SYNTHETIC + 1 + len(STAGES),
                       env={"SYNTH_AUDIT_CACHE": str(world["cache"])}, expect_codes=(0, 1))


@pytest.fixture(scope="module")
def reference(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    result = subprocess.run(cli_command(run_argv(world, out)), env=subprocess_env(run_target(world).env),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] in ("PASS", "WARN", "FAIL")  # every stage ran: an audit that can be compared
    assert all(report["stages"][s]["status"] == "ok" for s in STAGES), report["stages"]
    return out


def test_run_killed_then_rerun_equals_an_uninterrupted_run(world, reference, tmp_path):
    """The quick variant: one kill during generation, one during the analysis stages."""
    target = run_target(world)
    log = CrashLog()
    crash_and_resume(target, tmp_path / "out", [KillMoment(0.3, 0.0), KillMoment(0.9, 0.01)], log)
    check_resumed(target, reference, tmp_path / "out", log, temporary_files)
    assert log.kills >= 1


@pytest.mark.slow
def test_run_survives_ten_seeded_kills(world, reference, tmp_path):
    """2 folders × 5 kills each (moments from seeds 23 and 24), every folder then finished and compared."""
    target = run_target(world)
    log = survive_seeded_kills(target, reference, tmp_path, (23, 24), 5, temporary_files)
    print(f"\ncrash/resume (audit run): {log.kills} kills survived ({log.finished_first} runs ended before their "
          f"moment); progress at the kills (of {target.total} = {N_SYNTHETIC} images + {1 + len(STAGES)} stages): "
          f"{log.progress_at_kill}")
    assert log.kills >= 10


def test_a_second_run_on_an_out_in_use_exits_2(world, tmp_path):
    """Two real `audit run` on one OUT: while the first process holds it, the second says it is in use and
    exits 2 without touching OUT; killing the first (SIGKILL) frees the folder."""
    out = tmp_path / "out"
    # a first run with much to generate, so that it is still running when the second asks
    first = subprocess.Popen(cli_command(run_argv(world, out, "--n", "100000")), env=subprocess_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while first.poll() is None and time.monotonic() < deadline and \
                not ((out / LOCK).is_file() and (out / LOCK).read_text().strip() == str(first.pid)):
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()[-2000:]
        second = run_cli(run_argv(world, out))
        assert first.poll() is None  # the first still held OUT while the second asked
        assert second.code == 2, second.stderr
        line = second.stderr.strip().splitlines()[-1]
        assert line == f"error: {out}: in use by another audit run (pid {first.pid}); wait for it to finish or " \
                       "choose another --out", line
        assert not (out / "report.json").exists()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        first.stderr.close()
    from audit.pipeline import OutFolderLock

    with OutFolderLock(out):  # the OS dropped the killed process's lock
        pass
