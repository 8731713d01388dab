"""The per-image passes on a local Ray instance (2 CPUs) give exactly what the single-process run gives:
generation (image for image, byte for byte, completing a half-written folder), the `domain` encoder's embedding
pass of the fidelity features, and white-box membership attacks' scores. (A worker's input error coming back as
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
