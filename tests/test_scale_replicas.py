"""The replica audit's scoring on an executor's workers, without Ray: an executor that runs the worker path in this
process but sends everything through pickle as Ray would (the fitted scorers shared once, records and results
travelling per batch) gives the in-process results — `audit replicas` (scores, CSV, JSON, figures) and the
`audit run` stage (figures, details, flagged ids, the data-only cache of nulls). The same on a real local Ray
instance is in test_scale_ray.py."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from audit.parallel import LocalExecutor
from audit.registry import Runtime
from tests.test_replicas import make_folders, smooth_images, write_png


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as a Ray actor runs with --threads 1 (and on 2 busy cores the FFTs of ncc_reg crawl with
    more)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class PicklingExecutor(LocalExecutor):
    """The worker path in process: not `in_process` (so callers ship recipes and shared objects), constructor
    kwargs, shared objects, groups and results each through a pickle round trip, as between Ray's processes."""

    in_process = False
    name = "pickling"

    def __init__(self):
        object.__setattr__(self, "calls", [])
        object.__setattr__(self, "shared", 0)

    def share(self, obj):
        object.__setattr__(self, "shared", self.shared + 1)
        return pickle.loads(pickle.dumps(obj))

    def map_groups(self, fn_class, groups, *, constructor_kwargs=None, resources=None, on_group=None):
        self.calls.append((fn_class.__name__, [len(g) for g in groups]))
        kwargs = pickle.loads(pickle.dumps(dict(constructor_kwargs or {})))
        groups = [pickle.loads(pickle.dumps(list(g))) for g in groups]
        out = super().map_groups(fn_class, groups, constructor_kwargs=kwargs, on_group=on_group)
        return pickle.loads(pickle.dumps(out))


def outputs(folder):
    """replicas.csv, replicas.json without times and the run's own folder, and the figures' bytes."""
    summary = json.loads((folder / "replicas.json").read_text())
    summary["parameters"].pop("synthetic")  # the same folder; dropped only to keep the comparison about results
    for scorer in summary["scorers"].values():
        scorer.pop("seconds")
    return ((folder / "replicas.csv").read_text(), summary, (folder / "pairs.png").read_bytes(),
            (folder / "histograms.png").read_bytes())


def test_audit_replicas_scored_on_workers_writes_the_in_process_outputs(tmp_path):
    """The default scorer set (ncc_local included: 32x32 images) in batches of 5: the holdout and the
    synthetic set scored on 'workers' in one pass each, every scorer — the same CSV, JSON and figures."""
    from attacks.replicas.pipeline import run_folder_audit
    from attacks.replicas.registry import DEFAULT_SCORERS

    root = make_folders(tmp_path, write_png, ".png", (32, 32), n_train=12, n_holdout=12, n_novel=6)
    folders = [root / "train", root / "holdout", root / "synthetic"]
    run_folder_audit(*folders, root / "local", list(DEFAULT_SCORERS), runtime=Runtime(batch_size=5))
    executor = PicklingExecutor()
    run_folder_audit(*folders, root / "workers", list(DEFAULT_SCORERS),
                     runtime=Runtime(batch_size=5, executor=executor))
    local, workers = outputs(root / "local"), outputs(root / "workers")
    assert local[1]["parameters"]["scorers"] == list(DEFAULT_SCORERS) and not local[1]["skipped_scorers"]
    assert local[0].splitlines()[0].startswith("synthetic,nearest_train,score,is_replica")
    assert workers == local
    # one share of the fitted scorers, one pass per set in batches of 5 (12 holdout, 7 synthetic images)
    assert executor.shared == 1
    assert executor.calls == [("ScoreReplicaQueries", [5, 5, 2]), ("ScoreReplicaQueries", [5, 2])]


def test_the_replica_stage_scored_on_workers_equals_in_process_and_reuses_cached_nulls(tmp_path):
    """The stage of `audit run`: the same figures, details and flagged ids; the holdout null is scored once and
    cached as in process (a second model on the same data scores only its synthetic images)."""
    from attacks.replicas.stage import ReplicaStage
    from audit.artifacts import ArtifactCache
    from audit.stages import StageContext, StageInputs
    from tests.test_replicas_stage import folder_dataset

    images = smooth_images(40, (32, 32), seed=8)
    train = folder_dataset(tmp_path, "train", images[:14])
    holdout = folder_dataset(tmp_path, "holdout", images[14:30])
    model_a = folder_dataset(tmp_path, "model_a", np.concatenate([images[[2, 5]], images[30:35]]))
    model_b = folder_dataset(tmp_path, "model_b", np.concatenate([images[[9]], images[35:40]]))
    params = ReplicaStage.Params(quantile=0.95)  # the default scorer set

    def run(synthetic, executor, cache, out):
        stage = ReplicaStage(params)
        result = stage.run(StageInputs(data_config=None, train=train, holdout=holdout, synthetic=synthetic),
                           StageContext(tmp_path / out, Runtime(batch_size=4, executor=executor), cache))
        return result.figures, result.details, result.flagged_ids

    local_cache, worker_cache, executor = ArtifactCache(tmp_path / "c1"), ArtifactCache(tmp_path / "c2"), \
        PicklingExecutor()
    local_a = run(model_a, None, local_cache, "la")
    workers_a = run(model_a, executor, worker_cache, "wa")
    assert {"model_a00.png", "model_a01.png"} <= set(local_a[2])  # the planted copies
    assert workers_a == local_a
    per_scorer = 2 * len(params.scorers)  # its fitted state and its holdout null
    assert (worker_cache.builds, worker_cache.hits) == (local_cache.builds, local_cache.hits) == (per_scorer, 0)
    assert executor.calls == [("ScoreReplicaQueries", [4, 4, 4, 4]), ("ScoreReplicaQueries", [4, 3])]
    local_b = run(model_b, None, local_cache, "lb")
    workers_b = run(model_b, executor, worker_cache, "wb")
    assert workers_b == local_b and workers_b[1]["threshold"] == workers_a[1]["threshold"]
    assert (worker_cache.builds, worker_cache.hits) == (local_cache.builds, local_cache.hits) == (per_scorer,
                                                                                                 per_scorer)
    assert executor.calls[2:] == [("ScoreReplicaQueries", [4, 2])]  # nulls cached: only the synthetic pass


def test_worker_scores_equal_the_whole_array_scores_up_to_float32_rounding(tmp_path):
    """What `audit replicas` compares: in process each scorer scores the whole query array at once; on workers it
    scores batches of records read there (here batches of 1, the farthest from one whole array). The nearest
    training images, shortlists and boxes are equal; the similarities equal up to float32 rounding (a matrix
    product's sums depend on the shape of the batch: measured differences <= 8.4e-7 on ncc, none on the others)."""
    from attacks.replicas.pipeline import score_sets, score_sets_on_workers
    from attacks.replicas.registry import DEFAULT_SCORERS, build_scorers
    from tests.test_replicas_stage import folder_dataset

    images = smooth_images(20, (32, 32), seed=3)
    train = images[:10]
    queries = folder_dataset(tmp_path, "queries", np.concatenate([images[[4]], images[10:]]))
    arrays = queries.stack()
    local, _, local_described = score_sets(build_scorers(list(DEFAULT_SCORERS)), train, {"q": arrays})
    workers, seconds, described = score_sets_on_workers(build_scorers(list(DEFAULT_SCORERS)), train, {"q": queries},
                                                        PicklingExecutor(), 1)
    assert described == local_described and set(seconds) == set(DEFAULT_SCORERS)
    for name in DEFAULT_SCORERS:
        for field in ("scores", "nearest", "topk_scores", "topk_index", "query_box", "train_box"):
            want, got = getattr(local["q"][name], field), getattr(workers["q"][name], field)
            assert (want is None) == (got is None), (name, field)
            if want is not None and field in ("scores", "topk_scores"):
                np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=f"{name}.{field}")
            elif want is not None:
                np.testing.assert_array_equal(got, want, err_msg=f"{name}.{field}")
        assert local["q"][name].nearest[0] == 4  # the copy of training image 4 finds it
