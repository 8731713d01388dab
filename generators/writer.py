"""`audit generate`: write N synthetic images + manifest.csv into a folder, restartably.

Image i is a function of (model, seed, i, condition i) only, each file is written atomically (temp name, then
rename), and the manifest is a function of the same inputs — so a rerun after a crash skips the files that exist
and ends with exactly the folder an uninterrupted run would have written. 2D → 16-bit PNG, 3D → NIfTI (float32).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


from audit.data.imageio import image_file_name, write_image_file
from audit.errors import AuditInputError
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


def generate_to_folder(generator: Generator, out: str | Path, n: int, seed: int = 0, batch_size: int = 8,
                       conditions: Sequence[Condition] | None = None, progress: bool = True) -> GenerateResult:
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
    for batch in aligned_batches(todo, max(1, batch_size), n):
        images = generator.sample(conds[batch.start:batch.stop], seed, first_index=batch.start)
        for i, image in zip(batch, images):
            if i in missing:
                write_image_file(image, out / file_name(i, ndim))
        if bar is not None:
            bar.update(sum(1 for i in batch if i in missing))
    if bar is not None:
        bar.close()

    rows = []
    for i, c in enumerate(conds):
        name = file_name(i, ndim)
        rows.append({"file": name, "id": name.split(".")[0], "split": "synthetic", **condition_to_row(c),
                     "seed": str(seed), "index": str(i)})
    write_rows_csv(out / MANIFEST, rows, MANIFEST_COLUMNS)
    return GenerateResult(out, len(todo), n - len(todo))
