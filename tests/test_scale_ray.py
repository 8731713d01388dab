"""The per-image passes on a local Ray instance (2 CPUs) give exactly what the single-process run gives:
generation (image for image, byte for byte, completing a half-written folder), the `domain` encoder's embedding
pass of the fidelity features, the re-id attacker's embedding pass, white-box membership attacks' scores, the replica
scores of `audit replicas` (CSV, JSON, figures), and one full small `audit run` (every stage, every figure). (A worker's input error coming back as
the same error is tested without Ray in test_parallel.py.) One Ray instance for the module (start-up is slow);
skipped, with the reason, only when Ray cannot be imported."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'synth-audit[distributed]')")

from audit.parallel import LOCAL, RayExecutor, Resources  # noqa: E402
from audit.registry import Runtime  # noqa: E402
from tests.cli_harness import run_cli, tiny_training_setup  # noqa: E402

pytestmark = pytest.mark.slow  # Ray start-up and actor start-up: ~1 min on 2 loaded cores

RAY = RayExecutor(None, Resources(num_cpus=1, threads=1))


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the actors run 1 thread each: the single-process reference does too
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny 2D LDM (one training step) and its 16×16 training folder."""
    root = tmp_path_factory.mktemp("scale")
    result = run_cli(tiny_training_setup(root, n_images=8, side=16, steps=1))
    assert result.code == 0, result.stderr
    return root


def folder_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_generation_on_ray_writes_the_single_process_files_byte_for_byte(tiny, tmp_path):
    """A folder with two images already there (as after a crash) completed on Ray: every aligned batch made whole
    on an actor, only the missing files written — and the folder equals the single-process run, byte for byte."""
    common = ["generate", "--model", str(tiny / "ldm"), "--n", "10", "--batch-size", "4", "--steps", "3",
              "--seed", "5", "--threads", "1"]
    assert run_cli([*common, "--out", str(tmp_path / "local")]).code == 0
    reference = folder_bytes(tmp_path / "local")
    assert len([n for n in reference if n.endswith(".png")]) == 10
    partial = tmp_path / "ray"
    partial.mkdir()
    for name in ("000000.png", "000005.png", "generation.json"):
        shutil.copy2(tmp_path / "local" / name, partial / name)
    kept = {name: (partial / name).stat().st_mtime_ns for name in ("000000.png", "000005.png")}
    ray_run = run_cli([*common, "--out", str(partial), "--ray-address", "local"])
    assert ray_run.code == 0, ray_run.stderr
    assert "generated 8 images (2 already there)" in ray_run.stdout
    assert folder_bytes(partial) == reference
    assert {name: (partial / name).stat().st_mtime_ns for name in kept} == kept  # existing images untouched


def test_domain_embedding_pass_on_ray_equals_the_single_process_one(tiny, tmp_path):
    from audit.artifacts import ArtifactCache
    from audit.data.readers.folder import open_folder
    from audit.extractors import build_extractor
    from audit.extractors.feature_sets import extract_feature_set

    dataset = open_folder(tiny / "data", shape=(16, 16))
    extractor = build_extractor("domain", options={"epochs": 1}, runtime=Runtime(cache_dir=tmp_path))
    extractor.prepare(dataset, ArtifactCache(tmp_path))
    local = extract_feature_set(extractor, dataset, batch_size=3, executor=LOCAL)
    distributed = extract_feature_set(extractor, dataset, batch_size=3, executor=RAY)
    assert local.features.shape == (8, local.features.shape[1]) and local.ids == distributed.ids
    np.testing.assert_array_equal(distributed.features, local.features)
    np.testing.assert_array_equal(distributed.mean, local.mean)
    np.testing.assert_array_equal(distributed.cov, local.cov)


def test_white_box_membership_scores_on_ray_equal_the_single_process_ones(tiny):
    from attacks.membership.inputs import denoiser_source
    from attacks.membership.registry import ATTACKS
    from attacks.membership.whitebox import score_whitebox
    from audit.data.readers.folder import open_folder
    from generators.loading import load_generator

    generator = load_generator(tiny / "ldm")
    dataset = open_folder(tiny / "data", shape=(16, 16))
    attacks = [ATTACKS.create(name, None, Runtime(seed=3)) for name in ("loss", "pia")]
    local, _ = score_whitebox(attacks, generator.denoiser(), dataset, Runtime(batch_size=3, seed=3))
    distributed, seconds = score_whitebox(attacks, generator.denoiser(), dataset,
                                          Runtime(batch_size=3, seed=3, executor=RAY),
                                          denoiser_source=denoiser_source(tiny / "ldm", "cpu"))
    for name in ("loss", "pia"):
        assert np.isfinite(local[name]).all() and len(local[name]) == 8
        np.testing.assert_array_equal(distributed[name], local[name])
    assert all(s > 0 for s in seconds.values())


def test_reid_embedding_pass_on_ray_equals_the_single_process_one(tiny, tmp_path):
    """The re-id attacker's embedding pass: workers load the attacker from its checkpoint folder and embed the
    same batches of records — the same rows, bit for bit (an untrained network: equality, not quality)."""
    from attacks.reid.attacker import AttackerParams, load_attacker, save_attacker, untrained_attacker
    from audit.data.readers.folder import open_folder

    dataset = open_folder(tiny / "data", shape=(16, 16))
    runtime = Runtime(batch_size=3)
    save_attacker(untrained_attacker(2, (16, 16), AttackerParams(embedding_dim=8), runtime), tmp_path / "attacker")
    attacker = load_attacker(tmp_path / "attacker", runtime)
    local = attacker.embed_dataset(dataset)
    distributed = attacker.embed_dataset(dataset, executor=RAY)
    assert local.shape == (8, 8) and np.isfinite(local).all()
    np.testing.assert_array_equal(distributed, local)


def test_audit_replicas_on_ray_writes_the_single_process_outputs(tmp_path, monkeypatch):
    """`audit replicas` with the default scorer set (32x32, so that ncc_local runs too),
    in process and with --ray-address local: the same replicas.csv, replicas.json (but for times) and figures,
    byte for byte — the fitted scorers shared once, the holdout and synthetic images scored by the actors."""
    from attacks.replicas.registry import DEFAULT_SCORERS
    from tests.test_replicas import make_folders, write_png
    from tests.test_scale_replicas import outputs

    root = make_folders(tmp_path, write_png, ".png", (32, 32), n_train=12, n_holdout=12, n_novel=6)
    common = ["replicas", "--train", root / "train", "--holdout", root / "holdout", "--synthetic",
              root / "synthetic", "--batch-size", "5"]
    local = run_cli([*common, "--out", root / "local"])
    calls = []
    original = RayExecutor.map_groups
    monkeypatch.setattr(RayExecutor, "map_groups", lambda self, fn, groups, **k: calls.append(
        (fn.__name__, len(groups))) or original(self, fn, groups, **k))
    distributed = run_cli([*common, "--out", root / "ray", "--ray-address", "local"])
    assert local.code in (0, 1) and distributed.code == local.code, distributed.stderr
    want, got = outputs(root / "local"), outputs(root / "ray")
    assert want[1]["parameters"]["scorers"] == list(DEFAULT_SCORERS) and not want[1]["skipped_scorers"]
    assert got == want
    assert calls == [("ScoreReplicaQueries", 3), ("ScoreReplicaQueries", 2)]  # holdout 12, synthetic 7 images


RUN_CONFIG = """\
# every stage of `audit run`, each at its smallest: the point is equality, not a good audit
utility: {target: density, recipe: {steps: 2, batch_size: 8}, n_boot: 50}
reid:
  attacker: {epochs: 1, max_steps: 2, patients_per_batch: 4}
  evaluation: {n_permutations: 20, n_boot: 20}
membership: {n_boot: 50, reid: {epochs: 1, max_steps: 2, patients_per_batch: 4}}
"""


@pytest.fixture(scope="module")
def run_world(tmp_path_factory):
    """A folder dataset of 16 train + 8 held-out patients (2 images each) and a tiny LDM trained on it."""
    import yaml

    from tests import pipeline_factory as pf
    from tests.cli_harness import tiny_ldm2d_preset

    root = tmp_path_factory.mktemp("scale-run")
    preset, data = pf.make_dataset(root, n_train=32, n_test=16)
    (root / "gen.yaml").write_text(yaml.safe_dump(tiny_ldm2d_preset(steps=1, side=16)))
    (root / "run.yaml").write_text(RUN_CONFIG)
    trained = run_cli(["generator", "train", "--data", preset, "--data-root", data, "--config", root / "gen.yaml",
                       "--out", root / "ldm", "--threads", "1"])
    assert trained.code == 0, trained.stderr
    return {"root": root, "preset": preset, "data": data}


def stage_results(out, cache):
    """Per stage: status, figures (Estimates), details, flagged ids and skip reasons, from report.json without what
    differs between any two runs: times (every key naming seconds) and the run's own OUT and cache folders."""
    import json

    from reports.schema import strip_volatile

    text = (out / "report.json").read_text().replace(str(out), "<out>").replace(str(cache), "<cache>")
    report = strip_volatile(json.loads(text))

    def timeless(value):
        if isinstance(value, dict):
            return {k: timeless(v) for k, v in value.items() if "seconds" not in k}
        return [timeless(v) for v in value] if isinstance(value, list) else value

    stages = {name: {key: timeless(stage.get(key)) for key in ("status", "reason", "figures", "details",
                                                               "flagged_ids", "skipped")}
              for name, stage in report["stages"].items()}
    return stages, report


def test_a_full_audit_run_on_ray_reports_what_the_single_process_run_reports(run_world, tmp_path, monkeypatch):
    """Every stage of one small `audit run`, once in process and once with --ray-address local (separate data
    caches, so nothing the first run built is reused): the same generated files byte for byte and the same
    figures, details, flagged ids, gates and verdict — with the per-image passes (generation, fidelity features,
    white-box membership queries, re-id embeddings) really handed to Ray."""
    w = run_world
    common = ["run", "--model", w["root"] / "ldm", "--data", w["preset"], "--data-root", w["data"], "--n", "16",
              "--seed", "1", "--threads", "1", "--batch-size", "8", "--config", w["root"] / "run.yaml", "--quiet"]
    local = run_cli([*common, "--out", tmp_path / "local", "--cache-dir", tmp_path / "cache-local"])
    assert local.code in (0, 1), local.stderr  # PASS/WARN or FAIL: every stage ran

    calls = []
    for method in ("map_batches", "map_groups"):
        original = getattr(RayExecutor, method)
        monkeypatch.setattr(RayExecutor, method,
                            lambda self, fn, *a, _o=original, _m=method, **k: calls.append((_m, fn.__name__))
                            or _o(self, fn, *a, **k))
    distributed = run_cli([*common, "--out", tmp_path / "ray", "--cache-dir", tmp_path / "cache-ray",
                           "--ray-address", "local"])
    assert distributed.code == local.code, distributed.stderr

    want, want_report = stage_results(tmp_path / "local", tmp_path / "cache-local")
    got, got_report = stage_results(tmp_path / "ray", tmp_path / "cache-ray")
    assert {s["status"] for s in want.values()} == {"ok"}, want  # all six stages ran and finished
    assert set(want) == {"generate", "fidelity", "utility", "reid", "membership", "replicas"}
    assert got == want
    assert got_report["verdict"] == want_report["verdict"] and got_report["gates"] == want_report["gates"]
    images = "generate/images"
    assert folder_bytes(tmp_path / "ray" / images) == folder_bytes(tmp_path / "local" / images)
    # generation, fidelity features, white-box queries, re-id embeddings and replica scores went to the actors
    assert {"WriteBatch", "ExtractFeatures", "ScoreWhiteBox", "EmbedRecords", "ScoreReplicaQueries"} <= \
        {name for _, name in calls}, calls
