"""What is and is not bit-identical across thread counts and batch sizes (the figures in docs/reliability.md).

    .venv/bin/python -m tests.determinism_probe [WORKDIR] [run]

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


def run(argv: list, threads: int, ok: tuple[int, ...] = (0, 1)) -> None:
    env = subprocess_env({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    result = subprocess.run(cli_command(argv), env=env, capture_output=True, text=True)
    if result.returncode not in ok:
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


def compare_reports(reference: Path, other: Path) -> str:
    """Figures of two report.json: how many are equal in every field, the largest difference of a value or bound."""
    import json

    a, b = (json.loads((p / "report.json").read_text())["figures"] for p in (reference, other))
    fields = ("value", "ci_low", "ci_high")
    same = sum(a[k] == b.get(k) for k in a)
    worst = max((abs(a[k][f] - b[k][f]) for k in a for f in fields
                 if isinstance(a[k].get(f), float) and isinstance(b[k].get(f), float)), default=0.0)
    verdicts = "same verdict" if json.loads((reference / "report.json").read_text())["verdict"] == \
        json.loads((other / "report.json").read_text())["verdict"] else "DIFFERENT verdicts"
    return f"{same}/{len(a)} figures identical, largest difference {worst:.2e}; {verdicts}"


def probe_run(work: Path) -> None:
    """`audit run` with every stage on a tiny LDM (16 training / 8 held-out images), 1 thread vs 2."""
    import yaml

    root = work / "run"
    root.mkdir(parents=True, exist_ok=True)
    run(tiny_training_setup(root, n_images=16, side=16, steps=1, n_test=8), 1)
    config = {"n": 16, "seed": 0, "generate": {"batch_size": 4, "steps": 2},
              "fidelity": {"n_boot": 50}, "membership": {"attacks": ["loss", "pia", "dcr"], "n_boot": 50,
                                                         "min_pairs": 4},
              "replicas": {"scorers": ["ncc", "ssim"]},
              "reid": {"attacker": {"epochs": 2, "max_steps": 8, "patients_per_batch": 4, "m_per_class": 2},
                       "evaluation": {"n_boot": 50, "n_permutations": 50}},
              "utility": {"n_boot": 50, "recipe": {"steps": 4}}}
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    print("audit run (every stage, tiny LDM 16x16, 16 synthetic images, seed 0); reference: 1 thread")
    for name, threads in (("t1", 1), ("t1-again", 1), ("t2", 2)):
        run(["run", "--model", root / "ldm", "--data", root / "data.yaml", "--data-root", root / "data",
             "--config", root / "run.yaml", "--threads", threads, "--cache-dir", root / f"cache-{name}",
             "--out", root / f"out-{name}", "--quiet"], threads, ok=(0, 1, 2))  # 2: ERROR (utility: one class)
    for name in ("t1-again", "t2"):
        print(f"  {name}: {compare_reports(root / 'out-t1', root / f'out-{name}')}; generated images: "
              f"{compare_images(root / 'out-t1' / 'generate' / 'images', root / f'out-{name}' / 'generate' / 'images')}")


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
    # python -m tests.determinism_probe [WORKDIR] [run]: `run` probes `audit run` only
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="determinism-"))
    if sys.argv[2:] == ["run"]:
        probe_run(folder)
    else:
        main(folder)
        probe_run(folder)
