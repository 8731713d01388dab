"""`audit run`: generation → fidelity → utility → re-identification → membership → replicas → gates → report.

Each stage is a unit with declared inputs (`audit.stages.StageInputs`) and a typed output (`StageOutput`). Its
files live in OUT/<stage>/, and it is finished when OUT/<stage>/stage.json — written atomically, last — holds its
output and the *key* of what it depended on: the synthetic set (model hash, seed, n, sampling settings), the
real data's fingerprint, the members, the stage's own parameters and the seed. A rerun reuses every stage whose
key matches and recomputes exactly the others; a stage interrupted half-way (no stage.json) is redone from an
empty folder. What depends only on the data is cached by the stages themselves in `context.cache`, shared by
every model audited on that data.

Fail closed: a stage that raises is recorded as failed with its one-line error (the traceback goes to
OUT/<stage>/traceback.txt), the other stages still run, the report is still written, and the verdict is ERROR.
Two runs on one OUT never overlap: the first holds an exclusive lock on OUT/.audit-run.lock (released by the OS
when the process dies, so a killed run never blocks its rerun).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from audit.artifacts import ArtifactCache, dataset_fingerprint, stable_hash
from audit.checkpoints import file_sha256
from audit.data.cache import default_cache_dir
from audit.errors import AuditInputError
from audit.gates import LoadedGates, StageState, Verdict, check_stage_names, decide, load_gates
from audit.jsonio import json_safe, write_json_atomic
from audit.metrics.statistics import Estimate
from audit.registry import Registry, Runtime
from audit.run_config import DEFAULT_N_FROM_MODEL, GENERATE, RunConfig, stage_order
from audit.stages import Artefact, StageContext, StageInputs, StageOutput

STAGE_FILE = "stage.json"
LOCK_FILE = ".audit-run.lock"
STAGE_STATUSES = ("ok", "skipped", "error", "not_requested")


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def one_line(err: BaseException) -> str:
    """An exception as the one line the report shows (the suite's own errors already are one line)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if isinstance(err, AuditInputError):
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# --------------------------------------------------------------------------------------------- the OUT lock


class OutFolderLock:
    """An exclusive, non-blocking lock on OUT. The second `audit run` on the same OUT is told the folder is in
    use and exits 2; the OS drops the lock with the process, so SIGKILL never leaves OUT locked."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_FILE
        self._fh = None

    def __enter__(self) -> "OutFolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise AuditInputError(self.path.parent, f"in use by another audit run{who}; wait for it to finish "
                                                    "or choose another --out") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def remove_stale_temp_files(folder: Path) -> None:
    """Leftovers of a write killed half-way (`.<name>.<random>.tmp`, `.<name>.tmp`): never part of a result."""
    if folder.is_dir():
        for stale in folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- stage records


@dataclass
class StageRecord:
    """One stage of this run: what happened, how long it took, what it was given and what it found."""

    name: str
    status: str  # ok | skipped | error | not_requested
    reason: str | None = None  # why skipped / the one-line error
    seconds: float | None = None
    started_at: str | None = None
    key: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    output: StageOutput = field(default_factory=StageOutput)

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "seconds": self.seconds,
                "started_at": self.started_at, "key": self.key, "parameters": self.parameters,
                **self.output.to_json()}

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> "StageRecord":
        def estimate(d: Mapping[str, Any]) -> Estimate:
            return Estimate(*(float("nan") if d[k] is None else float(d[k])
                              for k in ("value", "ci_low", "ci_high")),
                            int(d["n"]), bool(d["higher_is_better"]), str(d["method"]))

        output = StageOutput(figures={k: estimate(v) for k, v in data.get("figures", {}).items()},
                             details=dict(data.get("details", {})),
                             artefacts={k: Artefact(**v) for k, v in data.get("artefacts", {}).items()},
                             skipped=dict(data.get("skipped", {})),
                             flagged_ids=list(data.get("flagged_ids", [])))
        return cls(name, data["status"], data.get("reason"), data.get("seconds"), data.get("started_at"),
                   data.get("key"), dict(data.get("parameters", {})), output)

    def state(self) -> StageState:
        return StageState(self.status, self.reason, dict(self.output.skipped), tuple(self.output.figures))


KEY_PART_WORDS = {"params": "its parameters", "synthetic": "the synthetic images", "data": "the real data or the "
                  "members", "seed": "the seed", "model_hash": "the model", "kind": "the model's kind",
                  "sampling": "the sampling settings", "n": "n", "stage": "the stage"}


def _read_stage_file(folder: Path) -> dict[str, Any] | None:
    import json

    try:
        data = json.loads((folder / STAGE_FILE).read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None  # missing or torn: the stage runs again


def read_finished(folder: Path, key: str) -> StageRecord | None:
    """The stage's record if OUT/<stage>/stage.json says it finished with this key."""
    data = _read_stage_file(folder)
    if data is None or data.get("key") != key or data.get("status") != "ok":
        return None
    try:
        return StageRecord.from_json(folder.name, data)
    except (KeyError, TypeError, ValueError):
        return None  # foreign: the stage runs again


def rerun_reason(folder: Path, key_parts: Mapping[str, Any]) -> str | None:
    """Why a stage that finished before runs again: which of the things it depends on changed."""
    data = _read_stage_file(folder)
    if data is None or not isinstance(data.get("key_parts"), dict):
        return None
    old = data["key_parts"]
    changed = [KEY_PART_WORDS.get(k, k) for k in key_parts
               if stable_hash(old.get(k), 32) != stable_hash(json_safe(key_parts[k]), 32)]
    return f"re-run: {', '.join(changed)} changed" if changed else None


def check_output(name: str, output: Any, out_dir: Path) -> StageOutput:
    """A stage's output must keep the contract: typed figures, artefacts that exist inside its folder."""
    if not isinstance(output, StageOutput):
        raise TypeError(f"stage '{name}' returned {type(output).__name__}, not a StageOutput")
    for fig_name, value in output.figures.items():
        if not isinstance(value, Estimate):
            raise TypeError(f"figure '{fig_name}' is a {type(value).__name__}, not an Estimate")
        if not fig_name or fig_name.startswith("/") or fig_name.endswith("/"):
            raise ValueError(f"bad figure name '{fig_name}'")
    root = out_dir.resolve()
    for art_name, artefact in output.artefacts.items():
        path = (out_dir / artefact.path).resolve()
        if root not in path.parents or not path.is_file():
            raise ValueError(f"artefact '{art_name}' ({artefact.path}) is not a file inside the stage's folder")
    output.flagged_ids = [str(i) for i in output.flagged_ids]
    return output


# --------------------------------------------------------------------------------------------- preparation


@dataclass
class Prepared:
    """What every stage is given, resolved once before any stage runs."""

    data_config: Any
    train: Any
    holdout: Any
    members: Any
    generator: Any
    model_path: Path
    model_kind: str
    model_hash: str
    model_description: dict[str, Any]
    is_folder_model: bool
    n: int
    data_key: dict[str, Any]
    data_provenance: dict[str, Any]


def records_hash(records) -> str:
    """Content identity of a record list that does not depend on where the files sit or when they were copied."""
    return stable_hash([[r.id, r.patient_id, r.split, r.labels.as_dict(), r.view, r.laterality] for r in records],
                       length=32)



def manifest_hashes(root: Path | None) -> dict[str, str]:
    """sha256 of the dataset's CSV files at its root (VinDr annotations, a NIfTI/folder manifest)."""
    if root is None or not Path(root).is_dir():
        return {}
    return {p.name: file_sha256(p) for p in sorted(Path(root).glob("*.csv")) if p.is_file()}


def _members_from(option: Path, dataset, train, holdout, shape) -> Any:
    from audit.data.csvio import read_csv_rows
    from audit.data.readers.folder import open_folder

    if option.is_dir():
        return open_folder(option, shape=shape, use_cache=True, name="members")
    rows = read_csv_rows(option, "members CSV", required=("id",))
    ids = [row["id"].strip() for row in rows if row["id"].strip()]
    members = dataset.subset(ids=ids)
    missing = sorted(set(ids) - {r.id for r in members.records})
    if missing:
        raise AuditInputError(option, f"{len(missing)} id(s) are not records of the dataset (first: {missing[0]})")
    overlap = {r.id for r in holdout.records} & set(ids)
    if overlap:
        raise AuditInputError(option, f"{len(overlap)} member(s) are in the held-out split, which must hold "
                                      "non-members only")
    return members


def _members_of_checkpoint(generator, train) -> Any | None:
    """For our LDMs: the training records whose id a training condition names."""
    conditions = getattr(generator, "training_conditions", None) or []
    ids = {c.source_id for c in conditions if getattr(c, "source_id", None)}
    if not ids:
        return None
    members = train.subset(ids=ids)
    missing = ids - {r.id for r in members.records}
    if missing:
        raise AuditInputError(None, f"the model was trained on {len(missing)} record(s) that are not in this "
                                    f"dataset's train split (first: {sorted(missing)[0]}); audit it on the data it "
                                    "was trained on, or give --members")
    return members


def prepare(config: RunConfig, load_model: Callable[[Path, str], Any]) -> Prepared:
    """Load the model and the data; every problem here is bad input (exit 2, no report)."""
    from audit.config import load_data_config
    from audit.data.dataset import open_dataset

    opts = config.options
    generator = load_model(opts.model, opts.device)
    overrides = {k: v for k, v in (("num_inference_steps", config.generate.steps),
                                   ("guidance_scale", config.generate.guidance)) if v is not None}
    if overrides:
        from generators.cli import _with_sampling

        generator = _with_sampling(generator, overrides)
    description = generator.describe()
    is_folder = getattr(generator, "kind", "") == "folder"
    shape = tuple(int(s) for s in generator.shape)

    cfg = load_data_config(opts.data, root=opts.data_root,
                           overrides={"cache_dir": str(opts.cache_dir)} if opts.cache_dir else None)
    if len(shape) != len(cfg.preprocess.shape):
        raise AuditInputError(opts.model, f"the model makes {len(shape)}D images (shape {shape}) but dataset "
                                          f"'{cfg.name}' is {len(cfg.preprocess.shape)}D")
    # the run's image shape is the model's: the real data is preprocessed to it (as `audit generator train` does)
    cfg = cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update={"shape": shape})})
    dataset = open_dataset(cfg)
    train, holdout = dataset.subset(split="train"), dataset.subset(split="test")
    for split, part in (("train", train), ("test", holdout)):
        if len(part) == 0:
            raise AuditInputError(cfg.root, f"dataset '{cfg.name}' has no images in its {split} split")

    if opts.members is not None:
        members = _members_from(opts.members, dataset, train, holdout, shape)
    else:
        members = None if is_folder else _members_of_checkpoint(generator, train)
        members = train if members is None else members

    available = len(generator) if is_folder else None
    if is_folder:
        n = available if opts.n is None else opts.n
        if n > available:
            raise AuditInputError(opts.model, f"holds {available} images; --n {n} were asked for")
    else:
        n = opts.n or DEFAULT_N_FROM_MODEL

    model_hash = description.get("checkpoint_hash") or stable_hash(str(opts.model))
    data_key = {"train": dataset_fingerprint(train), "holdout": dataset_fingerprint(holdout),
                "members": stable_hash(sorted(r.id for r in members.records)) if opts.members is None
                else dataset_fingerprint(members)}
    provenance = {"name": cfg.name, "root": str(cfg.root), "reader": cfg.reader,
                  "shape": list(shape), "records_hash": records_hash(dataset.records),
                  "manifest_sha256": manifest_hashes(cfg.root), "n_train": len(train),
                  "n_holdout": len(holdout), "n_members": len(members), "n_skipped_files": len(dataset.skipped),
                  "members_source": str(opts.members) if opts.members else
                  ("train split" if members is train else "the checkpoint's training conditions")}
    return Prepared(cfg, train, holdout, members, generator, Path(opts.model), str(getattr(generator, "kind", "?")),
                    model_hash, description, is_folder, n, data_key, provenance)


# --------------------------------------------------------------------------------------------- the run


@dataclass
class RunResult:
    verdict: Verdict
    report: dict[str, Any]
    records: dict[str, StageRecord]
    out: Path
    paths: dict[str, Path]
    release: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        return self.verdict.exit_code


class Progress:
    """One display over the run's steps (tqdm, with ETA) and the lines that say what each step did."""

    def __init__(self, steps: list[str], show: bool, say: Callable[[str], None] | None):
        from tqdm.auto import tqdm

        self.say = say
        self.bar = tqdm(total=len(steps), desc="audit", unit="step", disable=not show, dynamic_ncols=True,
                        file=sys.stderr, bar_format="{desc}: {n_fmt}/{total_fmt} steps |{bar}| "
                                                    "{elapsed} elapsed, {remaining} left")

    @property
    def enabled(self) -> bool:
        return not self.bar.disable

    def start(self, name: str) -> None:
        self.bar.set_description(f"audit: {name}")

    def done(self, record: StageRecord, reused: bool, note: str | None = None) -> None:
        self.bar.update(1)
        if self.say is not None:
            labels = {"ok": "done", "skipped": "skipped", "error": "FAILED", "not_requested": "not requested"}
            time_text = f"{record.seconds:.1f} s" if record.seconds is not None else ""
            extra = " (reused from a previous run)" if reused else (f" ({note})" if note else "")
            why = f": {record.reason}" if record.reason else ""
            line = f"  {record.name:<11} {labels[record.status]:<13} {time_text:>9}{extra}{why}"
            if self.enabled:
                self.bar.write(line, file=sys.stderr)
            else:
                self.say(line)

    def close(self) -> None:
        self.bar.close()


class Pipeline:
    """`audit run` as an object: the stage registry and the model loader are injected (tests use fakes)."""

    def __init__(self, config: RunConfig, registry: Registry | None = None,
                 load_model: Callable[[Path, str], Any] | None = None, command: list[str] | None = None,
                 show_progress: bool = False, say: Callable[[str], None] | None = None, executor: Any = None):
        from audit.stages import STAGES

        self.config = config
        self.registry = registry if registry is not None else STAGES
        self.load_model = load_model or _load_generator
        self.command = list(command or [])
        self.show_progress = show_progress
        self.say = say
        self.executor = executor  # audit.parallel executor of the per-image passes (None: in process)
        self.out = Path(config.options.out)
        # what this process computed vs took from a previous run (tests count these, not the clock)
        self.computed: list[str] = []
        self.reused: list[str] = []
        self.notes: dict[str, str | None] = {}  # stage → why it re-ran (what it depends on changed)

    # --- checks before any work -------------------------------------------------------------------------------
    def load_gates(self) -> LoadedGates:
        loaded = load_gates(self.config.options.gates)
        check_stage_names(loaded.gates, set(stage_order(self.registry)), loaded.source)
        return loaded

    def check_paths(self) -> None:
        opts = self.config.options
        out = self.out.resolve()
        model = Path(opts.model).resolve()
        if out == model or model in out.parents:
            raise AuditInputError(opts.out, "--out must not be inside the model folder (nothing the user gave is "
                                            "modified)")
        if opts.release is not None:
            from audit.release import check_release_target

            check_release_target(Path(opts.release), out, model)

    # --- the run ----------------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        gates = self.load_gates()
        self.check_paths()
        with OutFolderLock(self.out):
            remove_stale_temp_files(self.out)
            return self._run_locked(gates)

    def _run_locked(self, gates: LoadedGates) -> RunResult:
        import torch

        opts = self.config.options
        if opts.threads:
            torch.set_num_threads(opts.threads)
        started = now_utc()
        prepared = prepare(self.config, self.load_model)
        order = stage_order(self.registry)
        wanted = [n for n in gates.gates.required() if n in order and n not in self.config.stages]
        if wanted and self.say:
            self.say(f"note: the gates need stage(s) {', '.join(wanted)}, left out by --stages: the verdict will "
                     "be ERROR")
        progress = Progress([GENERATE, *self.config.stages, "report"], self.show_progress, self.say)
        runtime = Runtime(device=opts.device, batch_size=opts.batch_size, seed=opts.seed,
                          progress=self.show_progress, cache_dir=opts.cache_dir or default_cache_dir(),
                          executor=self.executor)
        cache = ArtifactCache(runtime.cache_dir)
        records: dict[str, StageRecord] = {}
        try:
            progress.start(GENERATE)
            generation, synthetic = self._generate(prepared)
            records[GENERATE] = generation
            progress.done(generation, GENERATE in self.reused, self.notes.get(GENERATE))
            inputs = StageInputs(data_config=prepared.data_config, train=prepared.train, holdout=prepared.holdout,
                                 synthetic=synthetic, generator=prepared.generator, members=prepared.members)
            for name in order:
                if name not in self.config.stages:
                    records[name] = StageRecord(name, "not_requested", "left out by --stages")
                    continue
                progress.start(name)
                records[name] = self._stage(name, inputs, generation, prepared, runtime, cache)
                progress.done(records[name], name in self.reused, self.notes.get(name))
            progress.start("report")
            figures = {f"{name}/{fig}": est for name, rec in records.items() for fig, est in rec.output.figures.items()}
            verdict = decide(gates.gates, figures, {name: rec.state() for name, rec in records.items()})
            from reports.report import build_report, write_report

            report = build_report(self.config, prepared, records, gates, verdict, self.command, started,
                                  synthetic_n=len(synthetic) if synthetic is not None else 0)
            paths = write_report(report, self.out)
            progress.bar.update(1)
        finally:
            progress.close()
        release = None
        if opts.release is not None:
            from audit.release import release_synthetic_set

            release = release_synthetic_set(Path(opts.release), report, paths["json"], records, synthetic,
                                            self.out)
        return RunResult(verdict, report, records, self.out, paths, release)

    # --- generation -------------------------------------------------------------------------------------------
    def _generate(self, prepared: Prepared) -> tuple[StageRecord, Any]:
        from audit.data.readers.folder import open_folder

        opts = self.config.options
        folder = self.out / GENERATE
        run_part = {"model_hash": prepared.model_hash, "kind": prepared.model_kind, "seed": opts.seed,
                    "sampling": self.config.generate.model_dump(mode="json", exclude={"batch_size"})}
        key_parts = {**run_part, "n": prepared.n}
        key = stable_hash(key_parts, length=32)
        self.notes[GENERATE] = rerun_reason(folder, key_parts)
        parameters = {"n": prepared.n, "seed": opts.seed, **self.config.generate.model_dump(mode="json"),
                      "model_kind": prepared.model_kind}
        started, t0 = now_utc(), time.perf_counter()
        finished = read_finished(folder, key)
        try:
            if prepared.is_folder_model:
                synthetic = open_folder(prepared.model_path, shape=prepared.generator.shape, use_cache=True,
                                        name="synthetic")
                synthetic = synthetic.subset(ids=[r.id for r in synthetic.records[:prepared.n]])
                images = prepared.model_path
            else:
                images = folder / "images"
                if finished is None:
                    self._sample_into(prepared, images, stable_hash(run_part, length=32))
                synthetic = open_folder(images, shape=prepared.generator.shape, use_cache=True, name="synthetic")
        except Exception as err:  # fail closed: the run goes on to write a report with verdict ERROR
            return self._failed(GENERATE, folder, err, key, parameters, started, t0), None
        if finished is not None:
            self.reused.append(GENERATE)
            return finished, synthetic
        self.computed.append(GENERATE)
        details = {"n": len(synthetic), "source": "the model's folder of images" if prepared.is_folder_model
                   else "sampled by the model", "images": str(images)}
        record = StageRecord(GENERATE, "ok", None, time.perf_counter() - t0, started, key, parameters,
                             StageOutput(details=details))
        write_json_atomic(folder / STAGE_FILE, {**record.to_json(), "key_parts": key_parts})
        return record, synthetic

    def _sample_into(self, prepared: Prepared, images: Path, run_key: str) -> None:
        """Sample n images into `images`, resuming an interrupted sampling of the same run; images of another
        run (other model, seed or sampling settings) are removed first."""
        from generators.writer import MANIFEST, generate_to_folder

        opts = self.config.options
        marker = images.parent / "run_key.txt"
        previous = marker.read_text().strip() if marker.is_file() else None
        if previous != run_key:
            shutil.rmtree(images, ignore_errors=True)
            (images.parent / STAGE_FILE).unlink(missing_ok=True)
            images.parent.mkdir(parents=True, exist_ok=True)
            tmp = marker.with_name(".run_key.txt.tmp")
            tmp.write_text(run_key + "\n")
            os.replace(tmp, marker)
        else:
            (images.parent / STAGE_FILE).unlink(missing_ok=True)
        generate_to_folder(prepared.generator, images, prepared.n, seed=opts.seed,
                           batch_size=self.config.generate.batch_size, progress=self.show_progress,
                           executor=self.executor, source=self._generator_source())
        # a smaller --n than last time: the images beyond it are not part of this run
        import csv

        with open(images / MANIFEST, newline="") as fh:
            listed = {row["file"] for row in csv.DictReader(fh)}
        for path in images.iterdir():
            if path.is_file() and path.name not in listed and path.name not in (MANIFEST, "generation.json"):
                path.unlink()

    def _generator_source(self):
        """How a remote worker loads the model itself (None in process: the loaded generator is used)."""
        from audit.parallel import LocalExecutor
        from generators.writer import GeneratorSource

        if self.executor is None or isinstance(self.executor, LocalExecutor):
            return None
        opts, gen = self.config.options, self.config.generate
        sampling = tuple(sorted((k, v) for k, v in (("num_inference_steps", gen.steps),
                                                    ("guidance_scale", gen.guidance)) if v is not None))
        return GeneratorSource(str(Path(opts.model).resolve()), opts.device, sampling)

    # --- analysis stages --------------------------------------------------------------------------------------
    def _stage(self, name: str, inputs: StageInputs, generation: StageRecord, prepared: Prepared,
               runtime: Runtime, cache: ArtifactCache) -> StageRecord:
        folder = self.out / name
        started, t0 = now_utc(), time.perf_counter()
        if name in self.config.unavailable:
            return self._failed(name, folder, AuditInputError(None, self.config.unavailable[name]), None, {},
                                started, t0)
        if generation.status != "ok":
            return StageRecord(name, "error", f"not run: generation failed ({generation.reason})",
                               0.0, started)
        params = self.config.stage_params[name]
        key_parts = {"stage": name, "params": params.model_dump(mode="json"), "synthetic": generation.key,
                     "data": prepared.data_key, "seed": runtime.seed}
        key = stable_hash(key_parts, length=32)
        finished = read_finished(folder, key)
        self.notes[name] = None if finished is not None else rerun_reason(folder, key_parts)
        if finished is not None:
            self.reused.append(name)
            return finished
        parameters: dict[str, Any] = params.model_dump(mode="json")
        try:
            stage = self.registry.create(name, params, runtime)
            parameters = _json_dict(stage.describe()) or parameters
            reason = stage.requirements(inputs)
            if reason:
                shutil.rmtree(folder, ignore_errors=True)
                return StageRecord(name, "skipped", str(reason), time.perf_counter() - t0, started, key, parameters)
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            self.computed.append(name)
            output = stage.run(inputs, StageContext(out_dir=folder, runtime=runtime, cache=cache))
            output = check_output(name, output, folder)
        except Exception as err:  # fail closed: recorded as this stage's error, the run goes on
            return self._failed(name, folder, err, key, parameters, started, t0)
        record = StageRecord(name, "ok", None, time.perf_counter() - t0, started, key, parameters, output)
        # last: the stage is finished when this exists; key_parts say later why a rerun must redo it
        write_json_atomic(folder / STAGE_FILE, {**record.to_json(), "key_parts": key_parts})
        return record

    def _failed(self, name: str, folder: Path, err: Exception, key: str | None, parameters: dict[str, Any],
                started: str, t0: float) -> StageRecord:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / STAGE_FILE).unlink(missing_ok=True)
        trace = folder / "traceback.txt"
        tmp = trace.with_name(".traceback.txt.tmp")
        tmp.write_text("".join(traceback.format_exception(err)))
        os.replace(tmp, trace)
        return StageRecord(name, "error", one_line(err), time.perf_counter() - t0, started, key, parameters)


def _json_dict(value: Any) -> dict[str, Any]:
    from audit.jsonio import json_safe

    out = json_safe(value)
    return out if isinstance(out, dict) else {}


def _load_generator(path: Path, device: str):
    from generators.loading import load_generator

    return load_generator(path, device)
