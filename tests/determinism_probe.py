"""What is and is not bit-identical across thread counts and batch sizes (the figures in docs/reliability.md).

    .venv/bin/python -m tests.determinism_probe [WORKDIR]

Each setting runs in its own process (thread pools are per process). Prints, per command and setting, how many
output files are byte-identical to the reference setting and the largest difference where they are not (16-bit
PNG units for images, absolute score for replicas.csv). A probe, not a test: the numbers depend on the CPU's
kernels, so they are measured and written down rather than asserted.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from tests.cli_harness import cli_command, subprocess_env, tiny_training_setup


def run(argv: list, threads: int) -> None:
    env = subprocess_env({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    result = subprocess.run(cli_command(argv), env=env, capture_output=True, text=True)
    if result.returncode not in (0, 1):
        raise SystemExit(f"{argv}: {result.stderr[-2000:]}")


def compare_images(reference: Path, other: Path) -> str:
    names = sorted(p.name for p in reference.glob("*.png") if p.name[0] != ".")
    same = sum((reference / n).read_bytes() == (other / n).read_bytes() for n in names)
    worst = max(int(np.abs(np.asarray(Image.open(reference / n), np.int64) -
                           np.asarray(Image.open(other / n), np.int64)).max()) for n in names)
    return f"{same}/{len(names)} images byte-identical, largest pixel difference {worst}/65535"


def compare_csv(reference: Path, other: Path) -> str:
    a = list(csv.DictReader(open(reference)))
    b = list(csv.DictReader(open(other)))
    numeric = [k for k in a[0] if k not in ("synthetic", "nearest_train", "is_replica")]
    worst = max(abs(float(x[k]) - float(y[k])) for x, y in zip(a, b) for k in numeric)
    same_rows = sum(x == y for x, y in zip(a, b))
    decisions = sum(x["is_replica"] == y["is_replica"] and x["nearest_train"] == y["nearest_train"]
                    for x, y in zip(a, b))
    return (f"{same_rows}/{len(a)} rows identical, same nearest image and decision in {decisions}/{len(a)}, "
            f"largest score difference {worst:.2e}")


def main(work: Path) -> None:
    from tests.dicom_factory import write_vindr_tree

    work.mkdir(parents=True, exist_ok=True)
    run(tiny_training_setup(work, n_images=12, side=32, steps=20), 1)
    data = work / "data"
    rng = np.random.default_rng(1)

    print("audit generate (tiny LDM 32x32, 32 images, 20 DDIM steps, seed 0); reference: 1 thread, batch 8")
    settings = {"t1-b8": (1, 8), "t1-b8-again": (1, 8), "t2-b8": (2, 8), "t1-b1": (1, 1), "t1-b32": (1, 32)}
    for name, (threads, batch) in settings.items():
        run(["generate", "--model", work / "ldm", "--n", 32, "--batch-size", batch, "--threads", threads,
             "--steps", 20, "--out", work / f"gen-{name}"], threads)
    for name in settings:
        if name != "t1-b8":
            print(f"  {name}: {compare_images(work / 'gen-t1-b8', work / f'gen-{name}')}")

    print("audit data export (VinDr-layout tree, 24 DICOMs, preset vindr); reference: OMP 1 thread")
    vindr = work / "vindr"
    write_vindr_tree(vindr, n_studies=6)
    for threads in (1, 2):
        run(["data", "export", "--data", "vindr", "--data-root", vindr, "--split", "train,test", "--out",
             work / f"export-t{threads}", "--cache-dir", work / f"cache-t{threads}"], threads)
    print(f"  2 threads: {compare_images(work / 'export-t1', work / 'export-t2')}")

    print("audit replicas (default scorers; 12 train / 30 holdout / 32 synthetic, 32x32); reference: 1 thread")
    holdout = work / "holdout"
    holdout.mkdir()
    for i in range(30):
        Image.fromarray((rng.random((32, 32)) * 65535).astype(np.uint16)).save(holdout / f"h{i}.png")
    for threads in (1, 2):
        run(["replicas", "--train", data, "--holdout", holdout, "--synthetic", work / "gen-t1-b8",
             "--out", work / f"replicas-t{threads}"], threads)
    print(f"  2 threads: {compare_csv(work / 'replicas-t1' / 'replicas.csv', work / 'replicas-t2' / 'replicas.csv')}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="determinism-")))
