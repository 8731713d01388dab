"""The executor layer without Ray: the in-process executor's order and batch independence, the recipes workers
load models from, and the one-line error when --ray-address is given without Ray installed."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

from audit.errors import AuditInputError
from audit.parallel import LOCAL, LocalExecutor, Resources, chunk, executor_of, make_executor, resolve, shipped
from audit.registry import Runtime


def pickle_roundtrip(value):
    """What a Ray worker receives (cloudpickle there, plain pickle back here)."""
    import cloudpickle

    return pickle.loads(cloudpickle.dumps(value))


class Doubler:
    """A worker function that records how it was built and the batches it saw."""

    built = 0

    def __init__(self, factor: int = 2):
        type(self).built += 1
        self.factor = factor
        self.batches: list[list[int]] = []
        Doubler.last = self

    def __call__(self, batch):
        self.batches.append(list(batch))
        return [self.factor * x for x in batch]


@pytest.mark.parametrize("batch_size", [1, 3, 7, 100])
def test_local_map_batches_keeps_input_order_and_cuts_consecutive_batches(batch_size):
    items = list(range(23))
    Doubler.built = 0
    out = LOCAL.map_batches(Doubler, items, batch_size=batch_size, constructor_kwargs={"factor": 3})
    assert out == [3 * x for x in items]
    assert Doubler.built == 1  # built once, like one actor loading its model once
    assert Doubler.last.batches == chunk(items, batch_size)
    assert all(len(b) == batch_size for b in Doubler.last.batches[:-1])


def test_local_map_groups_calls_each_group_whole_and_reports_in_order():
    seen = []
    groups = [[0, 1, 2, 3], [8, 9], [12]]
    out = LOCAL.map_groups(Doubler, groups, on_group=lambda i, r: seen.append((i, r)))
    assert out == [[0, 2, 4, 6], [16, 18], [24]]
    assert seen == [(0, [0, 2, 4, 6]), (1, [16, 18]), (2, [24])]
    assert Doubler.last.batches == groups
    assert LOCAL.map_groups(Doubler, []) == []


class Short:
    def __call__(self, batch):
        return batch[:-1]


def test_a_function_returning_too_few_results_is_an_error():
    with pytest.raises(RuntimeError, match="returned 2 results for a batch of 3"):
        LOCAL.map_batches(Short, [1, 2, 3], batch_size=3)


def test_runtime_without_an_executor_runs_in_process():
    assert executor_of(Runtime()) is LOCAL
    assert isinstance(executor_of(Runtime(executor=LocalExecutor())), LocalExecutor)
    assert make_executor(None) is LOCAL and make_executor("") is LOCAL
    assert hash(Runtime(executor=LOCAL)) == hash(Runtime(executor=LocalExecutor()))  # still a frozen value


def test_in_process_work_gets_the_object_itself_workers_get_the_recipe():
    from audit.parallel import Source

    class Loads(Source):
        def load(self):
            return "loaded"

    held = object()
    assert shipped(LOCAL, held, Loads()) is held

    class Remote(LocalExecutor):
        in_process = False

    assert isinstance(shipped(Remote(), held, Loads()), Loads)
    assert shipped(Remote(), held, None) is held  # no recipe: the object travels
    assert resolve(Loads()) == "loaded" and resolve(held) is held
    assert Resources(num_cpus=2.5).torch_threads() == 2 and Resources(num_cpus=0.5).torch_threads() == 1
    assert Resources(num_cpus=1, threads=3).torch_threads() == 3


def test_a_rebuilt_extractor_gives_the_same_features(tmp_path):
    """What a worker rebuilds from ExtractorSource (after pickling) extracts exactly what the driver's does."""
    from audit.extractors import build_extractor

    extractor = build_extractor("radiomics", options={"levels": 16})
    rebuilt = pickle_roundtrip(extractor.source()).load()
    images = np.random.default_rng(0).random((3, 24, 24)).astype(np.float32)
    assert rebuilt.identity() == extractor.identity()
    np.testing.assert_array_equal(rebuilt.extract(images), extractor.extract(images))


def test_generator_source_travels_as_a_small_recipe(tmp_path):
    from attacks.membership.whitebox import DenoiserSource
    from generators.writer import GeneratorSource

    source = DenoiserSource(GeneratorSource("/models/m", "cpu", (("num_inference_steps", 5),)))
    again = pickle_roundtrip(source)
    assert again == source and len(pickle.dumps(again)) < 400


def test_ray_address_without_ray_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    from audit.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(AuditInputError, match=r"synth-audit\[distributed\]"):
        make_executor("auto")
    for argv in (["generate", "--model", str(tmp_path / "none"), "--n", "2", "--out", str(tmp_path / "o")],
                 ["score", "fidelity", "--real", str(tmp_path), "--synthetic", str(tmp_path), "--out",
                  str(tmp_path / "f")],
                 ["attack", "mia", "--model", str(tmp_path / "none"), "--members", str(tmp_path), "--nonmembers",
                  str(tmp_path), "--out", str(tmp_path / "m")],
                 ["attack", "reid", "--train", str(tmp_path), "--holdout", str(tmp_path), "--synthetic",
                  str(tmp_path), "--out", str(tmp_path / "r")],
                 ["replicas", "--train", str(tmp_path), "--holdout", str(tmp_path), "--synthetic", str(tmp_path),
                  "--out", str(tmp_path / "c")]):
        code = main([*argv, "--ray-address", "local"])
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert code == 2, argv
        assert err == ["error: --ray-address: needs Ray, which is not installed: "
                       "pip install 'synth-audit[distributed]'"], argv
    assert not (tmp_path / "o").exists()  # nothing was started


def test_gpu_actors_need_a_cuda_device():
    import argparse

    from audit.parallel import add_executor_options, executor_from_args

    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    add_executor_options(parser)
    with pytest.raises(AuditInputError, match="GPU actors need --device cuda"):
        executor_from_args(parser.parse_args(["--ray-address", "auto", "--ray-gpus-per-actor", "1"]))
    with pytest.raises(AuditInputError, match="CPUs per actor must be > 0"):
        executor_from_args(parser.parse_args(["--ray-address", "auto", "--ray-cpus-per-actor", "0"]))
    assert executor_from_args(parser.parse_args([])) is LOCAL


class Picky:
    """Refuses odd items the way a reader refuses a broken file."""

    def __call__(self, batch):
        bad = [x for x in batch if x % 2]
        if bad:
            raise AuditInputError(f"image{bad[0]}.png", "cannot be read")
        return batch


def test_a_worker_input_error_comes_back_as_the_first_one_in_input_order():
    """What a Ray actor does with an AuditInputError (RayAdapter, no Ray needed): it returns it as data, and the
    driver raises the first one in input order, as the in-process run would."""
    cloudpickle = pytest.importorskip("cloudpickle", reason="cloudpickle (installed with Ray) is missing")
    from audit.parallel import RayAdapter, raise_first_worker_error

    adapter = RayAdapter(Picky, {}, threads=1)
    groups = [[0, 2], [4, 5], [7, 8]]
    batch = {"group": np.arange(3), "payload": [cloudpickle.dumps(g) for g in groups]}
    results = [cloudpickle.loads(p) for p in adapter(batch)["result"]]
    assert results[0] == [0, 2]
    with pytest.raises(AuditInputError) as distributed:
        raise_first_worker_error(results)
    with pytest.raises(AuditInputError) as local:
        LOCAL.map_groups(Picky, groups)
    assert str(distributed.value) == str(local.value) == "image5.png: cannot be read"
