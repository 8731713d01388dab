"""`audit demo`: the suite's whole job on phantoms, end to end, in minutes on 2 CPU cores.

    audit demo [--out DIR] [--jobs 2] [--patients 320] [--no-3d] [--threads 1]

1. builds the phantom mammography set (and a small 3D brain set),
2. trains — or takes from the cache — two tiny 2D generators: a *normal* one (configs/generators/demo-normal.yaml:
   a short budget over many images) and the memorising positive control (memorize-quick: 8 images, hundreds of
   passes), and a tiny 3D one (demo-3d),
3. audits each with `audit run` (demo-sized stage parameters: configs/runs/demo.yaml, demo-3d.yaml),
4. sets the two 2D reports side by side with `audit compare`,
5. checks what the demo must show: the control FAILs the replica and membership gates, the normal model PASSes
   them. Exit 0 when it does, 1 when an expectation is not met, 2 when a step could not run.

Every step is the `audit` command a user would type, run as a subprocess with its output in OUT/logs/; steps
that do not depend on each other run side by side (`--jobs`). Data and trained models are cached under
$SYNTH_AUDIT_CACHE/demo/, keyed by everything they depend on (preset file, patients, seed), so a second demo
only re-audits. OUT/demo.json records each step's command, exit code and time, and the expectations.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from audit.errors import EXIT_ERROR, EXIT_FAIL, EXIT_OK

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
DONE_STAMP = ".demo-complete"


# ------------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class Step:
    """One `audit` command of the demo. `product` is the folder it makes: when it holds DONE_STAMP the step was
    finished by an earlier demo and is reused; `staging` (if set) is where the command writes before the folder
    is moved into place (commands that refuse an existing folder)."""

    name: str
    argv: tuple[str, ...]
    product: Path | None = None
    staging: Path | None = None
    ok_codes: tuple[int, ...] = (EXIT_OK,)
    needs: tuple[str, ...] = ()  # steps that must be done (or reused) first


@dataclass
class StepResult:
    name: str
    command: str
    status: str  # done | reused | failed | not run
    exit_code: int | None
    seconds: float  # wall time
    log: str
    cpu_seconds: float = 0.0  # user + system time of the step's process (and what it waited for)


@dataclass(frozen=True)
class DemoLayout:
    out: Path
    cache: Path
    patients: int
    seed: int
    threads: int
    include_3d: bool
    brain_patients: int = 40

    def run_dir(self, name: str) -> Path:
        return self.out / name


def file_key(*parts: object) -> str:
    """A short hash of what a cached product depends on (file contents for paths)."""
    from audit.artifacts import stable_hash

    def resolve(part):
        if isinstance(part, Path):
            return {"file": part.name, "text": part.read_text()}
        return part

    return stable_hash([resolve(p) for p in parts], length=12)


def generator_preset(name: str) -> Path:
    return CONFIGS / "generators" / f"{name}.yaml"


def run_preset(name: str) -> Path:
    return CONFIGS / "runs" / f"{name}.yaml"


def plan(layout: DemoLayout) -> list[Step]:
    """The demo's steps in the order they are preferred when several are ready. The control is audited before
    the normal model on purpose: the second audit reuses what depends only on the data (re-id attacker,
    utility's real arm, real feature statistics, nulls), which the first cached."""
    cache, seed = layout.cache, layout.seed
    threads = ("--threads", str(layout.threads))
    mammo = cache / f"data-mammo-{file_key('mammo', layout.patients, seed, 0.25)}"
    brain = cache / f"data-brain-{file_key('brain3d', layout.brain_patients, seed, 0.25)}"

    def data_step(name, kind, folder, patients):
        staging = folder.with_name(folder.name + ".partial")  # `data phantom` refuses an existing folder
        return Step(name, ("data", "phantom", "--kind", kind, "--patients", str(patients), "--test-fraction",
                           "0.25", "--seed", str(seed), "--out", str(staging)), product=folder, staging=staging)

    def model_folder(preset, data_root):
        return cache / f"model-{preset}-{file_key(generator_preset(preset), data_root.name, seed)}"

    def train_step(name, preset, data_name, data_root, needs):
        return Step(name, ("generator", "train", "--data", data_name, "--data-root", str(data_root), "--config",
                           str(generator_preset(preset)), "--seed", str(seed), "--out",
                           str(model_folder(preset, data_root)), *threads),
                    product=model_folder(preset, data_root), needs=needs)

    def audit_step(name, preset, data_name, data_root, config, needs):
        # `audit run` exits 1 on FAIL: for the demo a FAIL is a result, not a failed step
        return Step(name, ("run", "--model", str(model_folder(preset, data_root)), "--data", data_name,
                           "--data-root", str(data_root), "--config", str(run_preset(config)), "--out",
                           str(layout.run_dir(name)), "--seed", str(seed), *threads, "--quiet"),
                    ok_codes=(EXIT_OK, EXIT_FAIL), needs=needs)

    steps = [data_step("data-mammo", "mammo", mammo, layout.patients)]
    if layout.include_3d:
        steps.append(data_step("data-brain", "brain3d", brain, layout.brain_patients))
    # the control trains quickest and its audit is on the 2D path's critical path: it goes first
    steps += [train_step("train-control", "memorize-quick", "phantom-mammo", mammo, ("data-mammo",)),
              train_step("train-normal", "demo-normal", "phantom-mammo", mammo, ("data-mammo",)),
              audit_step("audit-control", "memorize-quick", "phantom-mammo", mammo, "demo", ("train-control",))]
    if layout.include_3d:
        steps.append(train_step("train-3d", "demo-3d", "phantom-brain3d", brain, ("data-brain",)))
    steps.append(audit_step("audit-normal", "demo-normal", "phantom-mammo", mammo, "demo",
                            ("train-normal", "audit-control")))
    if layout.include_3d:
        steps.append(audit_step("audit-3d", "demo-3d", "phantom-brain3d", brain, "demo-3d", ("train-3d",)))
    steps.append(Step("compare", ("compare", str(layout.run_dir("audit-normal") / "report.json"),
                                  str(layout.run_dir("audit-control") / "report.json"), "--out",
                                  str(layout.out / "compare")), needs=("audit-normal", "audit-control")))
    return steps


# ------------------------------------------------------------------------------------------------ running


def audit_command() -> list[str]:
    """The `audit` entry point of this interpreter (works from a venv without activating it)."""
    return [sys.executable, "-m", "audit.cli"]


def reuse(step: Step) -> bool:
    return step.product is not None and (step.product / DONE_STAMP).is_file()


def finish(step: Step) -> None:
    """Move a staged product into place and stamp it complete (the stamp is written last)."""
    if step.product is None:
        return
    if step.staging is not None:
        shutil.rmtree(step.product, ignore_errors=True)
        os.replace(step.staging, step.product)
    (step.product / DONE_STAMP).write_text("complete\n")


def ready(step: Step, results: dict[str, StepResult]) -> bool | None:
    """True when every step it needs finished well, None when one of them failed or was not run."""
    states = [results[n].status if n in results else None for n in step.needs]
    if any(s in ("failed", "not run") for s in states):
        return None
    return all(s in ("done", "reused") for s in states)


def run_steps(steps: Sequence[Step], logs: Path, jobs: int, say: Callable[[str], None],
              launch: Callable[[Step, Path], subprocess.Popen] | None = None) -> list[StepResult]:
    """Run every step once the steps it needs are done, at most `jobs` at a time, preferring the earlier in
    `steps`; each step's output goes to logs/<name>.log. A failed step stops only the steps that need it."""
    launch = launch or _launch
    results: dict[str, StepResult] = {}
    pending = list(steps)
    running: list[tuple[Step, subprocess.Popen, float]] = []
    try:
        _schedule(pending, running, results, logs, jobs, say, launch)
    except BaseException:  # interrupted: stop the steps this demo started (they resume on the next demo)
        for _, proc, _ in running:
            proc.terminate()
        for _, proc, _ in running:
            proc.wait()
        raise
    return [results[s.name] for s in steps]


def _schedule(pending: list[Step], running: list, results: dict[str, StepResult], logs: Path, jobs: int,
              say: Callable[[str], None], launch: Callable[[Step, Path], subprocess.Popen]) -> None:
    while pending or running:
        for step in list(pending):
            state = ready(step, results)
            if state is None:
                pending.remove(step)
                results[step.name] = StepResult(step.name, _text(step), "not run", None, 0.0, "")
                say(f"  {step.name:<14} not run (a step it needs failed)")
            elif state and reuse(step):
                pending.remove(step)
                results[step.name] = StepResult(step.name, _text(step), "reused", None, 0.0, "")
                say(f"  {step.name:<14} reused from the cache ({step.product})")
            elif state and len(running) < max(1, jobs):
                pending.remove(step)
                if step.staging is not None:
                    shutil.rmtree(step.staging, ignore_errors=True)  # half-written by a killed demo
                running.append((step, launch(step, logs / f"{step.name}.log"), time.perf_counter()))
        for item in list(running):
            step, proc, started = item
            ended = reap(proc)
            if ended is None:
                continue
            code, cpu = ended
            running.remove(item)
            seconds = time.perf_counter() - started
            ok = code in step.ok_codes
            if ok:
                finish(step)
            results[step.name] = StepResult(step.name, _text(step), "done" if ok else "failed", code, seconds,
                                            str(logs / f"{step.name}.log"), cpu)
            say(f"  {step.name:<14} {'done' if ok else 'FAILED'} in {seconds:6.0f} s (CPU {cpu:6.0f} s)"
                + ("" if ok else f" (exit {code}; see {logs / f'{step.name}.log'})"))
        if running:
            time.sleep(0.2)


def reap(proc: subprocess.Popen) -> tuple[int, float] | None:
    """(exit code, CPU seconds) of a finished step, None while it runs. wait4 gives this child's own resource
    use, which steps running side by side would mix in the process-wide children totals."""
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid == 0:
        return None
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


def _text(step: Step) -> str:
    return " ".join(["audit", *step.argv])


def _launch(step: Step, log: Path) -> subprocess.Popen:
    with open(log, "w") as handle:  # the child keeps its own descriptor
        handle.write(f"$ {_text(step)}\n")
        handle.flush()
        return subprocess.Popen([*audit_command(), *step.argv], stdout=handle, stderr=subprocess.STDOUT,
                                env={**os.environ, "TQDM_DISABLE": "1"})


# ------------------------------------------------------------------------------------------------ judging


@dataclass(frozen=True)
class Expectation:
    model: str
    metric: str
    expected: str  # the gate status the demo must show
    observed: str | None
    estimate: dict | None = field(default=None)

    @property
    def met(self) -> bool:
        return self.observed == self.expected


# the gates the demo is about: copies and membership
DEMO_GATES = ("replicas/flagged_share", "membership/best/auc")
EXPECTED = {"audit-control": "fail", "audit-normal": "pass"}


def expectations(reports: dict[str, dict | None]) -> list[Expectation]:
    """What each 2D report's replica and membership gates must say (a missing report or gate is not met)."""
    out = []
    for model, expected in EXPECTED.items():
        gates = {g["metric"]: g for g in ((reports.get(model) or {}).get("gates") or {}).get("results", [])}
        for metric in DEMO_GATES:
            gate = gates.get(metric)
            out.append(Expectation(model, metric, expected, gate["status"] if gate else None,
                                   gate.get("estimate") if gate else None))
    return out


def read_report(folder: Path) -> dict | None:
    path = folder / "report.json"
    return json.loads(path.read_text()) if path.is_file() else None


def summary_lines(reports: dict[str, dict | None], checks: list[Expectation]) -> list[str]:
    from reports.render import estimate_text

    lines = ["verdicts:"]
    for name, report in reports.items():
        if report is None:
            lines.append(f"  {name:<14} no report")
            continue
        not_passed = [f"{g['metric']} {g['status'].upper()}" for g in report["gates"]["results"]
                      if g["status"] != "pass"]
        lines.append(f"  {name:<14} {report['verdict']:<5}" + (f" ({'; '.join(not_passed)})" if not_passed else ""))
    lines.append("what the demo must show:")
    for check in checks:
        shown = estimate_text(check.estimate) if check.estimate else "—"
        lines.append(f"  {'ok  ' if check.met else 'NOT '} {check.model:<14} {check.metric:<24} "
                     f"{(check.observed or 'missing').upper():<7} (expected {check.expected.upper()}) {shown}")
    return lines


# ------------------------------------------------------------------------------------------------ command


def register(subparsers) -> None:
    demo = subparsers.add_parser(
        "demo", help="the whole audit on phantoms: two 2D generators (normal and memorising) and a 3D one, "
                     "audited and compared",
        description="Build phantom data, train (or reuse from the cache) a normal and a memorising 2D generator "
                    "and a tiny 3D one, audit each with `audit run`, compare the 2D reports, and check that the "
                    "memorising control fails the replica and membership gates while the normal model passes "
                    "them. Exit 0 when it does, 1 when not, 2 when a step could not run.")
    demo.add_argument("--out", default="demo-out", metavar="DIR", help="output folder (default: demo-out)")
    demo.add_argument("--jobs", type=int, default=2, help="steps run side by side (default: 2)")
    demo.add_argument("--patients", type=int, default=320,
                      help="phantom mammography patients, 3/4 for training (default: 320)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--threads", type=int, default=1, help="torch threads per step (default: 1)")
    demo.add_argument("--no-3d", dest="include_3d", action="store_false", help="skip the 3D audit")
    demo.add_argument("--cache-dir", metavar="DIR",
                      help="where data and trained models are kept between demos (default: $SYNTH_AUDIT_CACHE/demo)")
    demo.set_defaults(func=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from audit.data.cache import default_cache_dir
    from audit.errors import AuditInputError

    if args.jobs < 1 or args.threads < 1 or args.patients < 8:
        raise AuditInputError(None, "--jobs and --threads must be at least 1, --patients at least 8")
    out = Path(args.out)
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir() / "demo"
    layout = DemoLayout(out.resolve(), cache.resolve(), args.patients, args.seed, args.threads, args.include_3d)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    say(f"audit demo → {out} (data and models cached in {cache}; logs in {out / 'logs'})")
    started = time.perf_counter()
    results = run_steps(plan(layout), out / "logs", args.jobs, say)
    wall = time.perf_counter() - started
    reports = {name: read_report(layout.run_dir(name))
               for name in ("audit-control", "audit-normal", *(("audit-3d",) if args.include_3d else ()))}
    checks = expectations(reports)
    failed = [r for r in results if r.status in ("failed", "not run")]
    code = EXIT_ERROR if failed else (EXIT_OK if all(c.met for c in checks) else EXIT_FAIL)
    record = {"exit_code": code, "wall_seconds": wall,
              "cpu_seconds_of_steps": sum(r.cpu_seconds for r in results),
              "load_average_at_end": list(os.getloadavg()), "cpu_count": os.cpu_count(),
              "layout": {k: str(v) for k, v in asdict(layout).items()},
              "steps": [asdict(r) for r in results],
              "verdicts": {k: (v or {}).get("verdict") for k, v in reports.items()},
              "expectations": [{**asdict(c), "met": c.met} for c in checks]}
    from audit.jsonio import write_json_atomic

    write_json_atomic(out / "demo.json", record)
    for line in summary_lines(reports, checks):
        print(line)
    print(f"demo {'done' if code == EXIT_OK else 'INCOMPLETE' if failed else 'did not show what it should'} in "
          f"{wall / 60:.1f} min (CPU {record['cpu_seconds_of_steps'] / 60:.1f} min over {args.jobs} job(s); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"compare: {out / 'compare' / 'compare.html'}; reports: "
          + ", ".join(str(layout.run_dir(n) / 'report.html') for n in reports))
    return code
