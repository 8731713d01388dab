"""`audit run` end to end with a test-local stage registry (fake stages with planted figures, a copy detector
with planted copies) and a fake sampling generator: resume by stage keys (counted, not timed), exactly the
dependent stages re-run after a config change, fail-closed verdicts and exit codes, determinism, the OUT lock,
interrupted runs, members, the configuration file, `--release`."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import audit.pipeline
import audit.stages
from audit.cli import main
from audit.errors import AuditInputError
from audit.pipeline import LOCK_FILE, OutFolderLock, Pipeline
from audit.run_config import resolve_run_config
from reports.schema import strip_volatile, validation_errors
from tests import pipeline_factory as pf


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    preset, data = pf.make_dataset(root)
    model = pf.make_folder_model(root, data)
    ckpt = pf.make_fake_checkpoint(root)
    gates = pf.lenient_gates(root / "gates.yaml")
    return {"root": root, "preset": preset, "data": data, "model": model, "ckpt": ckpt, "gates": gates}


@pytest.fixture
def use_registry(monkeypatch):
    """Install a registry (and the fake generator loader) for CLI-level runs."""
    monkeypatch.setattr(audit.pipeline, "_load_generator", pf.load_fake)

    def install(registry):
        monkeypatch.setattr(audit.stages, "STAGES", registry)
        return registry

    install(pf.registry_with())
    return install


def cli(world, out, *extra, model=None):
    args = ["run", "--model", str(model or world["model"]), "--data", str(world["preset"]), "--data-root",
            str(world["data"]), "--out", str(out), "--gates", str(world["gates"]), "--quiet", *extra]
    return main(args)


def pipeline(world, out, registry, config_file=None, **flags):
    base = {"model": world["model"], "data": str(world["preset"]), "data_root": world["data"], "out": out,
            "gates": str(world["gates"])}
    config = resolve_run_config({**base, **flags}, config_file, registry)
    return Pipeline(config, registry=registry, load_model=pf.load_fake, command=["audit", "run"])


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_full_run_passes_writes_a_valid_report_and_flags_the_planted_copies(world, tmp_path, use_registry):
    out = tmp_path / "out"
    assert cli(world, out) == 0
    report = read_report(out)
    assert validation_errors(report) == []
    assert report["verdict"] == "PASS" and report["exit_code"] == 0
    # the folder model's first two images are exact copies of training records r000 and r003
    assert report["flagged_ids"] == ["s000", "s001"]
    assert report["figures"]["replicas/flagged_share"]["value"] == pytest.approx(2 / 10)
    assert set(report["stages"]) == {"generate", "fidelity", "utility", "reid", "membership", "replicas"}
    assert all(s["status"] == "ok" for s in report["stages"].values())
    assert report["data"]["n_members"] == 12  # a folder model's members default to the train split
    assert report["config"]["replicas"] == {"tolerance": 0.001, "knob": 0}
    assert report["config"]["data_config"]["preprocess"]["shape"] == [16, 16]
    assert report["provenance"]["data_manifest_sha256"] == {"manifest.csv": sha(world["data"] / "manifest.csv")}
    assert (out / "report.html").is_file() and (out / "report.md").is_file() and (out / "gates.png").is_file()
    assert (out / "replicas" / "flagged.csv").is_file()
    assert not list(out.rglob("*.tmp"))
    mask = os.umask(0)
    os.umask(mask)
    for name in ("report.json", "report.html", "report.md", "gates.png"):  # shareable, not 0600 temp files
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_rerun_recomputes_nothing_and_a_config_change_reruns_only_its_stage(world, tmp_path):
    registry = pf.registry_with()
    out = tmp_path / "out"
    first = pipeline(world, out, registry)
    first.run()
    assert sorted(first.computed) == sorted(["generate", "fidelity", "utility", "reid", "membership", "replicas"])
    before = dict(pf.RUNS)
    again = pipeline(world, out, registry)
    again.run()
    assert again.computed == [] and len(again.reused) == 6
    assert dict(pf.RUNS) == before

    config = tmp_path / "run.yaml"
    config.write_text("membership:\n  knob: 1\n")
    changed = pipeline(world, out, registry, config_file=config)
    result = changed.run()
    assert changed.computed == ["membership"]
    assert changed.notes["membership"] == "re-run: its parameters changed"  # said on the progress line
    assert pf.RUNS["membership"] == before["membership"] + 1
    assert result.report["config"]["membership"] == {"knob": 1}
    # the data changes: everything downstream of it re-runs, generation (the model's own images) does not
    shutil.copytree(world["data"], tmp_path / "data2")
    (tmp_path / "data2" / "r000.png").write_bytes((tmp_path / "data2" / "r001.png").read_bytes())
    moved = pipeline(world, out, registry, config_file=config, data_root=tmp_path / "data2")
    moved.run()
    assert sorted(moved.computed) == ["fidelity", "membership", "reid", "replicas", "utility"]
    assert moved.notes["reid"] == "re-run: the real data or the members changed"


def test_generation_is_keyed_by_model_seed_and_n(world, tmp_path):
    registry = pf.registry_with()
    out = tmp_path / "out"
    first = pipeline(world, out, registry, model=world["ckpt"], n=5, seed=1)
    first.run()
    sampled = pf.SAMPLES["images"]
    names = sorted(p.name for p in (out / "generate" / "images").glob("*.png"))
    assert names == [f"{i:06d}.png" for i in range(5)]
    second = pipeline(world, out, registry, model=world["ckpt"], n=5, seed=1)
    second.run()
    assert pf.SAMPLES["images"] == sampled and second.computed == []
    # more images: the images already there stay as they are, and every analysis stage re-runs
    kept = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "generate" / "images").glob("*.png")}
    third = pipeline(world, out, registry, model=world["ckpt"], n=7, seed=1)
    third.run()
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in (out / "generate" / "images").glob("*.png")
            if p.name in kept} == kept
    assert len(list((out / "generate" / "images").glob("*.png"))) == 7
    assert sorted(third.computed) == sorted(["generate", "fidelity", "utility", "reid", "membership", "replicas"])
    # another seed: the old images go, all 7 are sampled again
    before = pf.SAMPLES["images"]
    fourth = pipeline(world, out, registry, model=world["ckpt"], n=7, seed=2)
    fourth.run()
    assert pf.SAMPLES["images"] == before + 7
    assert all((out / "generate" / "images" / name).read_bytes() != data for name, (data, _) in kept.items())


def test_members_of_a_checkpoint_are_its_training_records(world, tmp_path):
    registry = pf.registry_with()
    result = pipeline(world, tmp_path / "out", registry, model=world["ckpt"], n=4).run()
    assert result.report["data"]["n_members"] == 6
    assert result.report["data"]["members_source"] == "the checkpoint's training conditions"
    ids = tmp_path / "members.csv"
    ids.write_text("id\nr001\nr002\n")
    result = pipeline(world, tmp_path / "out", registry, model=world["ckpt"], n=4, members=ids).run()
    assert result.report["data"]["n_members"] == 2
    ids.write_text("id\nr001\nnot-there\n")
    with pytest.raises(AuditInputError, match="1 id\\(s\\) are not records"):
        pipeline(world, tmp_path / "out", registry, model=world["ckpt"], n=4, members=ids).run()
    ids.write_text("id\nr015\n")  # a test-split record cannot be a member
    with pytest.raises(AuditInputError, match="held-out split"):
        pipeline(world, tmp_path / "out", registry, model=world["ckpt"], n=4, members=ids).run()


def test_two_runs_with_one_seed_give_the_same_report(world, tmp_path):
    registry = pf.registry_with()
    out = tmp_path / "out"
    pipeline(world, out, registry, model=world["ckpt"], n=6, seed=3).run()
    first = read_report(out)
    images = {p.name: p.read_bytes() for p in (out / "generate" / "images").iterdir()}
    shutil.rmtree(out)
    pipeline(world, out, registry, model=world["ckpt"], n=6, seed=3).run()
    assert strip_volatile(read_report(out)) == strip_volatile(first)
    assert {p.name: p.read_bytes() for p in (out / "generate" / "images").iterdir()} == images
    assert strip_volatile(first) != strip_volatile(pipeline(world, tmp_path / "o2", registry, model=world["ckpt"],
                                                            n=6, seed=4).run().report)


def test_a_stage_that_raises_makes_the_verdict_error_and_exit_2_and_the_rest_still_runs(world, tmp_path,
                                                                                      use_registry, capsys):
    broken = pf.planted_stage("utility", {}, error="the classifier diverged\nsecond line")
    use_registry(pf.registry_with(utility=broken))
    out = tmp_path / "out"
    assert cli(world, out) == 2
    report = read_report(out)
    assert report["verdict"] == "ERROR"
    assert report["stages"]["utility"]["status"] == "error"
    assert report["stages"]["utility"]["reason"] == "RuntimeError: the classifier diverged"
    assert "RuntimeError" in (out / "utility" / "traceback.txt").read_text()
    assert all(report["stages"][s]["status"] == "ok" for s in ("fidelity", "reid", "membership", "replicas"))
    assert "stage 'utility' failed: RuntimeError: the classifier diverged" in report["reasons"]
    assert "verdict: ERROR" in capsys.readouterr().out
    # a gate set that does not mention utility at all: still ERROR, never PASS
    gates = tmp_path / "g.yaml"
    gates.write_text("gates:\n  - {metric: replicas/flagged_share, op: '<=', threshold: 0.5}\n")
    assert main(["run", "--model", str(world["model"]), "--data", str(world["preset"]), "--data-root",
                 str(world["data"]), "--out", str(out), "--gates", str(gates), "--quiet"]) == 2
    # the stage is not cached as finished: fixing it re-runs only it
    use_registry(pf.registry_with())
    before = dict(pf.RUNS)
    assert cli(world, out) == 0
    assert {k: pf.RUNS[k] - before.get(k, 0) for k in pf.RUNS if pf.RUNS[k] != before.get(k, 0)} == {"utility": 1}


def test_skipped_stages_and_parts_are_shown_and_gates_on_them_are_errors(world, tmp_path, use_registry):
    skipping = pf.planted_stage("membership", {}, skip="the model is a folder of images: no white-box access")
    use_registry(pf.registry_with(membership=skipping))
    out = tmp_path / "out"
    assert cli(world, out) == 2
    report = read_report(out)
    assert report["stages"]["membership"]["status"] == "skipped"
    gate = next(g for g in report["gates"]["results"] if g["metric"] == "membership/best/auc")
    assert gate["status"] == "error"
    assert "skipped: the model is a folder of images: no white-box access" in gate["message"]
    assert "required stage 'membership' was skipped" in " ".join(report["reasons"])

    partial = pf.planted_stage("membership", {"dcr/share": pf.est(0.5, 0.4, 0.6)},
                               skipped_parts={"best": "no white-box access"})
    use_registry(pf.registry_with(membership=partial))
    assert cli(world, tmp_path / "out2") == 2
    gate = next(g for g in read_report(tmp_path / "out2")["gates"]["results"] if g["metric"] == "membership/best/auc")
    assert "part 'best' of stage 'membership' was skipped: no white-box access" in gate["message"]


def test_fail_and_warn_exit_codes(world, tmp_path, use_registry, capsys):
    leaky = pf.planted_stage("membership", {"best/auc": pf.est(0.8, 0.7, 0.9)})
    use_registry(pf.registry_with(membership=leaky))
    assert cli(world, tmp_path / "fail") == 1
    assert read_report(tmp_path / "fail")["verdict"] == "FAIL"
    wide = pf.planted_stage("membership", {"best/auc": pf.est(0.55, 0.4, 0.7, n=40)})
    use_registry(pf.registry_with(membership=wide))
    capsys.readouterr()
    assert main(["run", "--model", str(world["model"]), "--data", str(world["preset"]), "--data-root",
                 str(world["data"]), "--out", str(tmp_path / "warn"), "--gates", str(world["gates"]), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["verdict"] == "WARN" and summary["exit_code"] == 0
    gate = next(g for g in summary["gates"] if g["metric"] == "membership/best/auc")
    assert gate["status"] == "warn" and gate["n_needed"] == 360  # 40 × (0.15 / 0.05)²


def test_left_out_stages_make_the_default_gates_error(world, tmp_path, use_registry):
    assert cli(world, tmp_path / "out", "--stages", "replicas") == 2
    report = read_report(tmp_path / "out")
    assert report["stages"]["fidelity"]["status"] == "not_requested"
    assert report["config"]["stages"] == ["generate", "replicas"]
    assert any("required stage 'fidelity' was not run" in r for r in report["reasons"])


def test_release_holds_no_flagged_image_and_proves_what_was_signed(world, tmp_path, use_registry):
    out, release = tmp_path / "out", tmp_path / "release"
    before = {p.name: sha(p) for p in world["model"].iterdir()}
    assert cli(world, out, "--release", str(release)) == 0
    report = read_report(out)
    flagged = set(report["flagged_ids"])
    assert flagged == {"s000", "s001"}
    with open(release / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    released_ids = {r["id"] for r in rows}
    assert released_ids.isdisjoint(flagged)
    assert released_ids == {f"s{j:03d}" for j in range(2, 10)}
    assert not {"source_id", "patient_id"} & set(rows[0])
    manifest_text = (release / "manifest.csv").read_text()
    assert "r000" not in manifest_text and "r003" not in manifest_text  # the copies' training sources
    files = sorted(p.name for p in release.iterdir() if p.suffix == ".png")
    assert files == sorted(f"s{j:03d}.png" for j in range(2, 10))
    # nothing released equals a training image (the planted copies are gone)
    train = {sha(world["data"] / f"r{i:03d}.png") for i in range(12)}
    assert not train & {sha(release / f) for f in files}
    proof = json.loads((release / "release.json").read_text())
    assert proof["report_sha256"] == sha(out / "report.json")
    assert {i["file"]: i["sha256"] for i in proof["images"]} == {f: sha(release / f) for f in files}
    assert proof["removed_ids"] == ["s000", "s001"] and proof["verdict"] == "PASS"
    # copied, never moved: the user's folder is byte-identical
    assert {p.name: sha(p) for p in world["model"].iterdir()} == before


def test_release_is_refused_on_fail_and_error(world, tmp_path, use_registry, capsys):
    use_registry(pf.registry_with(membership=pf.planted_stage("membership", {"best/auc": pf.est(0.8, 0.7, 0.9)})))
    assert cli(world, tmp_path / "out", "--release", str(tmp_path / "rel")) == 1
    assert not (tmp_path / "rel").exists()
    assert "release refused" not in capsys.readouterr().err
    use_registry(pf.registry_with(reid=pf.planted_stage("reid", {}, error="boom")))
    assert main(["run", "--model", str(world["model"]), "--data", str(world["preset"]), "--data-root",
                 str(world["data"]), "--out", str(tmp_path / "out2"), "--gates", str(world["gates"]),
                 "--release", str(tmp_path / "rel")]) == 2
    assert not (tmp_path / "rel").exists()
    assert "release refused (the verdict is ERROR" in capsys.readouterr().out


def test_release_target_checks_come_before_any_work(world, tmp_path, use_registry, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("the user's file")
    assert cli(world, tmp_path / "out", "--release", str(busy)) == 2
    assert "not empty" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert cli(world, tmp_path / "out", "--release", str(world["model"] / "r")) == 2
    assert cli(world, world["model"] / "audit") == 2
    assert not (world["model"] / "audit").exists()


def test_the_out_folder_is_locked_while_a_run_holds_it(world, tmp_path, use_registry, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.seek(0); f.truncate();"
        "f.write(str(os.getpid())); f.flush(); print('locked', flush=True); time.sleep(120)"),
        str(out / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert cli(world, out) == 2
        assert f"in use by another audit run (pid {holder.pid})" in capsys.readouterr().err
        assert not (out / "report.json").exists()
    finally:
        holder.kill()  # SIGKILL: the OS releases the lock with the process
        holder.wait()
    assert cli(world, out) == 0


def test_a_running_audit_holds_the_lock(world, tmp_path):
    out = tmp_path / "out"
    seen = {}

    class Nested(pf.CopyStage):
        def run(self, inputs, context):
            try:
                pipeline(world, out, pf.registry_with()).run()
            except AuditInputError as err:
                seen["error"] = str(err)
            return super().run(inputs, context)

    pipeline(world, out, pf.registry_with(replicas=Nested)).run()
    assert "in use by another audit run" in seen["error"]
    with OutFolderLock(out):
        with pytest.raises(AuditInputError, match="in use"):
            pipeline(world, out, pf.registry_with()).run()


def test_an_interrupted_run_resumes_to_the_uninterrupted_outputs(world, tmp_path):
    class Interrupted(pf.CopyStage):
        def run(self, inputs, context):
            (context.out_dir / "half-written.csv").write_text("id\ns0")
            raise KeyboardInterrupt  # a kill half-way through the stage: not caught as a stage error

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        pipeline(world, out, pf.registry_with(replicas=Interrupted), model=world["ckpt"], n=5).run()
    assert not (out / "report.json").exists()
    resumed = pipeline(world, out, pf.registry_with(), model=world["ckpt"], n=5)
    resumed.run()
    assert resumed.computed == ["replicas"]  # the four stages before it had finished
    assert not (out / "replicas" / "half-written.csv").exists()
    shutil.rmtree(tmp_path / "clean", ignore_errors=True)
    pipeline(world, tmp_path / "clean", pf.registry_with(), model=world["ckpt"], n=5).run()
    resumed_report, clean_report = read_report(out), read_report(tmp_path / "clean")
    for report in (resumed_report, clean_report):
        report["config"].pop("out")
        report["synthetic"].pop("images")
        report["stages"]["generate"]["details"].pop("images")
    assert strip_volatile(resumed_report) == strip_volatile(clean_report)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        sorted(p.relative_to(tmp_path / "clean").as_posix() for p in (tmp_path / "clean").rglob("*") if p.is_file())


def test_the_configuration_file_uses_the_flags_keys_and_flags_win(world, tmp_path):
    registry = pf.registry_with()
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {world['ckpt']}\ndata: tiny\nn: 3\nseed: 5\nstages: generate,replicas\n"
                      "replicas: {tolerance: 0.01}\ngenerate: {batch_size: 2}\n")
    resolved = resolve_run_config({"n": 4, "model": None}, config, registry)
    assert resolved.options.n == 4 and resolved.options.seed == 5 and resolved.stages == ("replicas",)
    assert resolved.stage_params["replicas"].tolerance == 0.01 and resolved.generate.batch_size == 2
    assert resolved.to_json()["replicas"] == {"tolerance": 0.01, "knob": 0}
    for text, words in {"colour: red\n": "unknown key 'colour'",
                        "replicas: {tolerence: 1}\n": "stage 'replicas': unknown parameter 'tolerence'",
                        "n: -1\n": "bad value for 'n'",
                        "stages: generate,copies\n": "unknown stage 'copies'",
                        "generate: {steps: 0}\n": "generate: bad value for 'steps'",
                        "- a list\n": "expected a mapping"}.items():
        config.write_text(f"model: m\ndata: d\n{text}" if not text.startswith("-") else text)
        with pytest.raises(AuditInputError, match=words.replace("(", r"\(")):
            resolve_run_config({}, config, registry)
    with pytest.raises(AuditInputError, match="missing key 'model'"):
        resolve_run_config({"data": "d"}, None, registry)


def test_a_stage_module_that_is_not_there_is_that_stages_error(world, tmp_path, use_registry):
    registry = pf.registry_with()
    registry._entries.pop("reid")
    registry.register("reid", "attacks.no_such_module:Stage")
    use_registry(registry)
    assert cli(world, tmp_path / "out") == 2
    report = read_report(tmp_path / "out")
    assert report["stages"]["reid"]["status"] == "error"
    assert "not available in this version" in report["stages"]["reid"]["reason"]


def test_bad_input_is_one_line_and_exit_2_before_any_report(world, tmp_path, use_registry, capsys):
    volume = tmp_path / "volumes"
    volume.mkdir()
    import numpy as np

    np.save(volume / "v.npy", np.zeros((8, 8, 8), np.float32))
    assert cli(world, tmp_path / "out", model=volume) == 2
    assert "makes 3D images" in capsys.readouterr().err
    assert cli(world, tmp_path / "out", "--n", "50") == 2
    assert "holds 10 images; --n 50 were asked for" in capsys.readouterr().err
    assert not (tmp_path / "out" / "report.json").exists()


def test_every_stage_gets_the_runs_executor_and_it_changes_no_key(world, tmp_path):
    from audit.parallel import LocalExecutor

    seen: dict[str, object] = {}

    def recording(name):
        base = pf.planted_stage(name, pf.GOOD_FIGURES[name])

        class Recording(base):
            def __init__(self, params, runtime):
                super().__init__(params, runtime)
                seen[name] = runtime.executor

        return Recording

    registry = pf.registry_with(**{name: recording(name) for name in pf.GOOD_FIGURES})
    executor = LocalExecutor()  # not the module's LOCAL: the very object must reach the stages
    config = resolve_run_config({"model": world["model"], "data": str(world["preset"]), "data_root": world["data"],
                                 "out": tmp_path / "out", "gates": str(world["gates"])}, None, registry)
    Pipeline(config, registry=registry, load_model=pf.load_fake, executor=executor).run()
    assert set(seen) == set(pf.GOOD_FIGURES) and all(e is executor for e in seen.values())
    # the same run in process reuses every stage: where the passes ran is not part of what a stage depends on
    again = Pipeline(config, registry=registry, load_model=pf.load_fake)
    again.run()
    assert again.computed == [] and set(again.reused) >= set(pf.GOOD_FIGURES)


def test_run_with_a_ray_address_but_no_ray_is_one_line_before_any_work(world, tmp_path, use_registry, monkeypatch,
                                                                        capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    assert cli(world, tmp_path / "out", "--ray-address", "local") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == ["error: --ray-address: needs Ray, which is not installed: pip install 'synth-audit[distributed]'"]
    assert not (tmp_path / "out").exists()


def test_strip_volatile_drops_times_and_cache_hits_inside_details():
    report = {"created_at": "now", "stages": {"membership": {"seconds": 1.0, "status": "ok", "details": {
        "seconds_for_synthetic_images": 3.2, "train_seconds": 5.0, "auc": 0.5,
        "parts": [{"from_cache": True, "real_from_cache": False, "k": 1}]}}}}
    assert strip_volatile(report) == {"stages": {"membership": {"status": "ok", "details": {
        "auc": 0.5, "parts": [{"k": 1}]}}}}
