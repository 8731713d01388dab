"""The executor layer: every per-image pass (generation, feature and embedding passes, white-box model queries)
hands its work to one small interface, and the executor decides where it runs.

    results = executor.map_batches(FnClass, items, batch_size=32, constructor_kwargs={...})

`FnClass(**constructor_kwargs)` is built once per worker (so a model loads once per actor) and called with one
batch — a list of consecutive items — returning one result per item. Results come back **in input order**, and a
batch is always the same consecutive run of items whatever the executor, so a network sees exactly the batches a
single-process run gives it (its float results can depend on the batch composition: the last bit of a pixel did
between batch sizes). `map_groups` is the same with the caller's own grouping (generation's aligned batches).

Two executors:
- `LocalExecutor` (the default, `Runtime.executor is None`): in process, the function built once, batches called
  in order — exactly the loop the passes had before this layer, with no copy and no serialisation.
- `RayExecutor` (`--ray-address ADDR|auto|local`): Ray Data `from_items(groups).map_batches(Adapter,
  fn_constructor_kwargs=..., batch_size=1, num_cpus=/num_gpus=..., compute=ActorPoolStrategy(size=N))`. One actor
  per GPU where the cluster has GPUs and `--ray-gpus-per-actor` asks for them, CPU actors otherwise.

**Paths travel, not arrays.** Items are record descriptions (a `Record`: path, id, labels) or generation indices
and conditions; the actor reads or makes the image itself. Models travel as `Source`s — a small picklable recipe
(a checkpoint folder, an extractor's name + parameters + weights path) that the actor `load()`s once. In process
the caller passes the object it already holds instead (`shipped(executor, obj, source)`), so the local path never
loads anything twice. A large object the driver built and that no recipe rebuilds more cheaply (the replica
scorers' fitted search indexes) is shared with `executor.share(obj)`: the object itself in process, on Ray one put
into the object store that every actor reads (one copy per node, arrays not copied).

An `AuditInputError` raised on a worker comes back to the driver as the same one-line error (the first one in
input order, so the message does not depend on scheduling); any other exception is re-raised as it is.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from audit.errors import AuditInputError

EXTRA = "synth-audit[distributed]"
INSTALL_HINT = f"pip install '{EXTRA}'"


class Source:
    """A recipe a worker turns into the heavy object it needs (a generator, an extractor): small, picklable,
    `load()`ed once per worker. Subclasses are frozen dataclasses."""

    def load(self) -> Any:
        raise NotImplementedError


def resolve(value: Any) -> Any:
    """The object itself, or what a `Source` loads."""
    return value.load() if isinstance(value, Source) else value


@dataclass(frozen=True)
class StoredObject(Source):
    """An object the driver put once into Ray's object store (`RayExecutor.share`): one copy per node, which
    every actor on it reads without copying its arrays (they arrive read-only)."""

    ref: Any  # a ray.ObjectRef, kept alive by the driver while the pass runs

    def load(self) -> Any:
        import ray

        return ray.get(self.ref)


def shipped(executor: "Executor", obj: Any, source: Source | None) -> Any:
    """What to put in constructor_kwargs: the object already held when the work stays in process, the recipe
    when it goes to workers (the object itself, serialised, when there is no recipe)."""
    if executor.in_process or source is None:
        return obj
    return source


@dataclass(frozen=True)
class Resources:
    """What one worker takes. `actors` None: as many as the cluster holds (GPUs / num_gpus when num_gpus > 0,
    else CPUs / num_cpus). `threads`: torch threads per worker (None: num_cpus rounded down, at least 1)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    actors: int | None = None
    threads: int | None = None

    def torch_threads(self) -> int:
        return self.threads or max(1, int(self.num_cpus))


def chunk(items: Sequence[Any], batch_size: int) -> list[list[Any]]:
    """Consecutive batches of `batch_size` items (the last one shorter)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    return [list(items[start:start + batch_size]) for start in range(0, len(items), batch_size)]


class Executor:
    """The interface. `in_process` tells callers whether objects can be handed over as they are."""

    in_process: bool = True
    name: str = "executor"

    def map_groups(self, fn_class: type, groups: Sequence[Sequence[Any]], *,
                   constructor_kwargs: Mapping[str, Any] | None = None, resources: Resources | None = None,
                   on_group: Callable[[int, list], None] | None = None) -> list[list[Any]]:
        """[fn(group) for group in groups], fn = fn_class(**constructor_kwargs) built once per worker; each call
        returns one result per item of its group. `on_group(i, results)` runs on the driver as groups finish
        (in order locally, in completion order on Ray): progress bars."""
        raise NotImplementedError

    def map_batches(self, fn_class: type, items: Sequence[Any], *, batch_size: int,
                    constructor_kwargs: Mapping[str, Any] | None = None, resources: Resources | None = None,
                    on_group: Callable[[int, list], None] | None = None) -> list[Any]:
        """One result per item, in input order; fn is called on consecutive batches of `batch_size` items."""
        groups = self.map_groups(fn_class, chunk(items, batch_size), constructor_kwargs=constructor_kwargs,
                                 resources=resources, on_group=on_group)
        return [result for group in groups for result in group]

    def share(self, obj: Any) -> Any:
        """What to put in constructor_kwargs for a large object the driver already built and that has no recipe
        cheaper than itself (a fitted search index): in process the object itself; on Ray a `StoredObject`, put
        into the object store once however many actors and passes read it."""
        return obj

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def _checked(results: Any, group: Sequence[Any], fn_class: type) -> list:
    results = list(results)
    if len(results) != len(group):
        raise RuntimeError(f"{fn_class.__name__} returned {len(results)} results for a batch of {len(group)}")
    return results


@dataclass(frozen=True)
class LocalExecutor(Executor):
    """In process, in order: the function built once, called on each group in turn."""

    in_process = True
    name = "local"

    def map_groups(self, fn_class, groups, *, constructor_kwargs=None, resources=None, on_group=None):
        groups = [list(g) for g in groups]
        if not groups:
            return []
        fn = fn_class(**dict(constructor_kwargs or {}))
        out = []
        for i, group in enumerate(groups):
            out.append(_checked(fn(group), group, fn_class))
            if on_group is not None:
                on_group(i, out[-1])
        return out


LOCAL = LocalExecutor()


# --- Ray ------------------------------------------------------------------------------------------------------

def ray_available() -> bool:
    try:
        import ray  # noqa: F401
        import ray.data  # noqa: F401
    except ImportError:
        return False
    return True


def require_ray(flag: str = "--ray-address") -> None:
    if not ray_available():
        raise AuditInputError(flag, f"needs Ray, which is not installed: {INSTALL_HINT}")


class _WorkerError:
    """An AuditInputError raised on a worker, carried back as data (re-raised on the driver as itself)."""

    def __init__(self, where, problem):
        self.where, self.problem = where, problem


class RayAdapter:
    """The callable class Ray Data builds once per actor: it builds the caller's function (loading its model once)
    and applies it to each group. Groups travel pickled (by Ray's own cloudpickle transport between the suite's
    own processes), so any item type works without an Arrow schema."""

    def __init__(self, fn_class: type, constructor_kwargs: Mapping[str, Any], threads: int):
        import torch

        torch.set_num_threads(threads)  # results equal a single-process run with the same --threads
        self.fn_class = fn_class
        self.constructor_kwargs = dict(constructor_kwargs)
        self.fn = None

    def __call__(self, batch: dict) -> dict:
        import cloudpickle
        import numpy as np

        results = []
        for payload in batch["payload"]:
            # bytes this run's own driver serialised a moment ago and Ray carried in memory (never a user's file):
            # the trust boundary of an untrusted checkpoint lies in the Source's loader, which reads safetensors
            group = cloudpickle.loads(payload)
            try:
                if self.fn is None:
                    self.fn = self.fn_class(**self.constructor_kwargs)
                value = _checked(self.fn(group), group, self.fn_class)
            except AuditInputError as err:
                value = _WorkerError(err.where, err.problem)
            results.append(cloudpickle.dumps(value))
        return {"group": np.asarray(batch["group"]), "result": np.array(results, dtype=object)}


def raise_first_worker_error(results: list) -> list:
    """The results, or the first worker's input error in input order (whatever order the workers finished in)."""
    for value in results:
        if isinstance(value, _WorkerError):
            raise AuditInputError(value.where, value.problem)
    return results


def _quiet_ray_logs() -> None:
    import logging

    for name in ("ray", "ray.data", "ray._private", "ray.data._internal"):
        logging.getLogger(name).setLevel(logging.ERROR)


@dataclass(frozen=True)
class RayExecutor(Executor):
    """Ray Data actors. `address`: None starts (or reuses) a local Ray instance; 'auto' joins the running cluster;
    anything else is a cluster address (ray://host:10001 or host:6379). A Ray already initialised in this process
    (e.g. a test's `ray.init(num_cpus=2)`) is used as it is. Every node must have synth-audit installed and see
    the same paths (models, data, output folder): items are paths."""

    address: str | None = None
    resources: Resources = Resources()
    in_process = False
    name = "ray"

    def _connect(self) -> None:
        require_ray()
        import ray

        _quiet_ray_logs()
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                     configure_logging=True)
        import ray.data

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False

    def actor_count(self, resources: Resources, n_groups: int) -> int:
        import ray

        if resources.actors:
            wanted = resources.actors
        else:
            cluster = ray.cluster_resources()
            if resources.num_gpus > 0:
                wanted = int(cluster.get("GPU", 0) // resources.num_gpus)
                if wanted < 1:
                    raise AuditInputError("--ray-gpus-per-actor", f"the Ray cluster has {cluster.get('GPU', 0):g} "
                                                                  f"GPUs; actors asking for {resources.num_gpus:g} "
                                                                  "cannot start")
            else:
                wanted = int(cluster.get("CPU", 1) // max(resources.num_cpus, 1e-9))
        return max(1, min(wanted, n_groups))

    def map_groups(self, fn_class, groups, *, constructor_kwargs=None, resources=None, on_group=None):
        import cloudpickle

        groups = [list(g) for g in groups]
        if not groups:
            return []
        self._connect()
        import ray.data

        res = resources or self.resources
        rows = [{"group": i, "payload": cloudpickle.dumps(g)} for i, g in enumerate(groups)]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        mapped = dataset.map_batches(
            RayAdapter, batch_size=1, batch_format="numpy",
            fn_constructor_kwargs={"fn_class": fn_class, "constructor_kwargs": dict(constructor_kwargs or {}),
                                   "threads": res.torch_threads()},
            compute=ray.data.ActorPoolStrategy(size=self.actor_count(res, len(groups))),
            num_cpus=res.num_cpus, num_gpus=res.num_gpus or None)
        out: list[Any] = [None] * len(groups)
        for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
            for i, payload in zip(batch["group"], batch["result"]):
                out[int(i)] = cloudpickle.loads(payload)  # results our own actors serialised (see RayAdapter)
                if on_group is not None and not isinstance(out[int(i)], _WorkerError):
                    on_group(int(i), out[int(i)])
        return raise_first_worker_error(out)

    def share(self, obj: Any) -> StoredObject:
        import ray

        self._connect()
        # Ray's own in-memory serialisation of an object this run built (never a user's file), as for groups
        return StoredObject(ray.put(obj))

    def describe(self) -> dict[str, Any]:
        r = self.resources
        return {"name": self.name, "address": self.address or "local", "num_cpus_per_actor": r.num_cpus,
                "num_gpus_per_actor": r.num_gpus, "actors": r.actors, "threads_per_actor": r.torch_threads()}


def image_loader(dataset) -> Any:
    """What a worker needs to read a dataset's images — its decoder, preprocessing and cache — without the record
    list (records travel as items). A dataset that is not an `ImageDataset` dataclass travels whole."""
    import dataclasses

    if dataclasses.is_dataclass(dataset) and hasattr(dataset, "records"):
        return dataclasses.replace(dataset, records=[])
    return dataset


# --- choosing one ---------------------------------------------------------------------------------------------

def executor_of(runtime) -> Executor:
    """The runtime's executor (`Runtime.executor`), the in-process one when none is set."""
    return getattr(runtime, "executor", None) or LOCAL


def make_executor(address: str | None, resources: Resources | None = None) -> Executor:
    """None/'' → in process; 'local' → a local Ray instance; 'auto' → the running cluster; else its address.
    Without Ray installed, any Ray address is a one-line input error naming the extra."""
    if not address:
        return LOCAL
    require_ray()
    return RayExecutor(None if address == "local" else address, resources or Resources())


def add_executor_options(parser: argparse.ArgumentParser) -> None:
    """--ray-address and the per-actor resources, on every command that runs a per-image pass."""
    group = parser.add_argument_group("distributed (Ray)")
    group.add_argument("--ray-address", metavar="ADDR|auto|local",
                       help="run the per-image passes on Ray Data: 'local' starts Ray on this machine, 'auto' joins "
                            f"the running cluster, else its address (needs {EXTRA}); default: in process")
    group.add_argument("--ray-cpus-per-actor", type=float, default=1.0, metavar="N",
                       help="CPUs per Ray actor (default %(default)s)")
    group.add_argument("--ray-gpus-per-actor", type=float, default=0.0, metavar="N",
                       help="GPUs per Ray actor (default 0: CPU actors; 1: one actor per GPU, with --device cuda)")
    group.add_argument("--ray-actors", type=int, metavar="N",
                       help="number of actors (default: as many as the cluster's CPUs/GPUs hold)")


def executor_from_args(args: argparse.Namespace) -> Executor:
    address = getattr(args, "ray_address", None)
    if not address:
        return LOCAL
    cpus, gpus = args.ray_cpus_per_actor, args.ray_gpus_per_actor
    if cpus <= 0 or gpus < 0 or (args.ray_actors is not None and args.ray_actors < 1):
        raise AuditInputError("--ray-*", "CPUs per actor must be > 0, GPUs per actor >= 0, actors >= 1")
    if gpus > 0 and not str(getattr(args, "device", "cpu")).startswith("cuda"):
        raise AuditInputError("--ray-gpus-per-actor", "GPU actors need --device cuda")
    threads = getattr(args, "threads", None)
    return make_executor(address, Resources(num_cpus=cpus, num_gpus=gpus, actors=args.ray_actors, threads=threads))

