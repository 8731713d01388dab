"""`audit generate`: write N synthetic images + manifest.csv into a folder, restartably.

Image i is a function of (model, seed, i, condition i) only, each file is written atomically (temp name, then
rename), and the manifest is a function of the same inputs — so a rerun after a crash skips the files that exist
and ends with exactly the folder an uninterrupted run would have written. 2D → 16-bit PNG, 3D → NIfTI (float32).

The batches go through the executor layer (`audit.parallel`): in process by default, or sharded over Ray actors
(`--ray-address`), each actor loading the model once from its folder (`GeneratorSource`) and writing the files of
the aligned batches it is given. The batches are the same aligned ones either way, so a distributed run writes
the same bytes as a single-process run with the same --threads.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from audit.data.imageio import image_file_name, write_image_file
from audit.errors import AuditInputError
from audit.parallel import LOCAL, Executor, Source, resolve, shipped
from generators.base import Condition, Generator
from generators.checkpoint import read_json
from generators.conditions import condition_to_row, write_rows_csv

MANIFEST = "manifest.csv"
RUN_FILE = "generation.json"
MANIFEST_COLUMNS = ("file", "id", "split", "source_id", "view", "laterality", "birads", "density", "findings",
                    "boxes", "seed", "index")


def file_name(index: int, ndim: int) -> str:
    return image_file_name(f"{index:06d}", ndim)


def conditions_for(generator: Generator, n: int, seed: int, given: Sequence[Condition] | None) -> list[Condition]:
    """Given conditions are used in order (cycled when n exceeds them); otherwise the generator's defaults."""
    if given:
        return [given[i % len(given)] for i in range(n)]
    return generator.default_conditions(n, seed)


def aligned_batches(indices: Sequence[int], batch_size: int, n: int) -> list[range]:
    """The batches [k·B, (k+1)·B) ∩ [0, n) holding at least one of `indices` (one sample() call each).

    A resumed run regenerates whole batches, exactly as the uninterrupted run composed them, and writes only the
    missing images: a network's float results can depend on the batch it runs in (other kernels for other sizes),
    so generating the missing images in new groupings would change their last bits — and the PNG bytes."""
    starts = sorted({i - i % batch_size for i in indices})
    return [range(start, min(start + batch_size, n)) for start in starts]


def write_json_atomic_sorted(path: Path, data: dict) -> None:
    """generation.json as write_json formats it, written to a temp name and renamed (a kill mid-write must not
    leave a torn file that every rerun would then refuse)."""
    import os

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@dataclass
class GenerateResult:
    out: Path
    written: int
    skipped: int


@dataclass(frozen=True)
class GeneratorSource(Source):
    """How a worker loads the generator itself: the model folder, the device and the sampling overrides."""

    model: str
    device: str = "cpu"
    sampling: tuple[tuple[str, Any], ...] = ()  # e.g. (("num_inference_steps", 20),)

    def load(self) -> Generator:
        from generators.loading import load_generator

        generator = load_generator(self.model, device=self.device)
        return generator.with_sampling(**dict(self.sampling)) if self.sampling else generator


class WriteBatch:
    """One aligned batch on a worker: sample it whole (as the uninterrupted run did), write the missing images."""

    def __init__(self, generator: Generator | GeneratorSource, out: str, seed: int, ndim: int):
        self.generator = resolve(generator)
        self.out, self.seed, self.ndim = Path(out), seed, ndim

    def __call__(self, group: list[tuple[int, Condition, bool]]) -> list[bool]:
        first = group[0][0]
        images = self.generator.sample([condition for _, condition, _ in group], self.seed, first_index=first)
        for (i, _, missing), image in zip(group, images):
            if missing:
                write_image_file(image, self.out / file_name(i, self.ndim))
        return [missing for _, _, missing in group]


def generate_to_folder(generator: Generator, out: str | Path, n: int, seed: int = 0, batch_size: int = 8,
                       conditions: Sequence[Condition] | None = None, progress: bool = True,
                       executor: Executor | None = None, source: GeneratorSource | None = None) -> GenerateResult:
    """Write images [0, n) not yet in `out`. `executor` (default: in process) runs the batches; on workers the
    generator is loaded from `source` (without one, the `generator` object itself is shipped)."""
    from audit.progress import progress_bar

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # what the images depend on (model incl. sampling settings, seed, given conditions) — n is not part of it
    description = json.loads(json.dumps(generator.describe(), default=str))
    given = None
    if conditions:
        given = hashlib.sha256(json.dumps([condition_to_row(c) for c in conditions], sort_keys=True).encode())
    run = {"generator": description, "seed": int(seed), "conditions": given.hexdigest() if given else "default"}
    if (out / RUN_FILE).is_file():
        previous = read_json(out / RUN_FILE)
        if {k: previous.get(k) for k in run} != run:
            raise AuditInputError(out, "already holds images from another model, sampling setting, seed or "
                                       "conditions; choose another --out")
    for stale in out.glob(".*.tmp*"):
        stale.unlink()  # leftovers of a crash mid-write
    write_json_atomic_sorted(out / RUN_FILE, {**run, "n": n})

    ndim = len(generator.shape)
    conds = conditions_for(generator, n, seed, conditions)
    todo = [i for i in range(n) if not (out / file_name(i, ndim)).is_file()]
    bar = progress_bar(total=n, desc="generate", initial=n - len(todo)) if progress else None
    missing = set(todo)
    # one group per aligned batch; items are (index, condition, missing) — the worker makes and writes the images
    groups = [[(i, conds[i], i in missing) for i in batch] for batch in aligned_batches(todo, max(1, batch_size), n)]
    executor = executor or LOCAL
    executor.map_groups(WriteBatch, groups,
                        constructor_kwargs={"generator": shipped(executor, generator, source), "out": str(out),
                                            "seed": int(seed), "ndim": ndim},
                        on_group=(lambda _, written: bar.update(sum(written))) if bar is not None else None)
    if bar is not None:
        bar.close()

    rows = []
    for i, c in enumerate(conds):
        name = file_name(i, ndim)
        rows.append({"file": name, "id": name.split(".")[0], "split": "synthetic", **condition_to_row(c),
                     "seed": str(seed), "index": str(i)})
    write_rows_csv(out / MANIFEST, rows, MANIFEST_COLUMNS)
    return GenerateResult(out, len(todo), n - len(todo))
