"""Replica detection time per synthetic image against 1k and 10k training images (2D 128², 3D 32³), for the
`default` and the `fast` preset, measured in one run on this machine.

    .venv/bin/python benchmarks/bench_replicas_time.py [--sizes 1000,10000] [--queries 20] [--domains 2D,3D]
        [--threads 1] [--out benchmarks/results/bench_replicas_time.json]

Images are procedural (smooth random anatomy with fine texture, as tests/image_factory.py draws them; the cost of
the search does not depend on what the images show), half of the queries are copies of training images (so that
every stage of every scorer runs) and half new. Per (domain, training-set size) the presets take turns on the
same data: fit (the scorers' training-set signatures / embeddings) is timed apart from scoring, because it is
paid once per training set (and cached by `audit run`), while scoring is paid per synthetic image — and per
holdout image, once per training set. Times are wall-clock seconds on a shared machine: the load average at the
start and end is recorded, and only ratios measured in this one run should be compared. Beside wall-clock time
each row gives the process's CPU time (one torch thread): what the same work takes when nothing else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_replicas import write_results  # noqa: E402

SHAPES = {"2D": (128, 128), "3D": (32, 32, 32)}


def procedural(n: int, shape: tuple[int, ...], seed: int, batch: int = 500) -> np.ndarray:
    """n images: an organ-like outline, coarse anatomy and fine texture (float32 [0, 1]), made in batches."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    out = np.empty((n, *shape), np.float32)
    for start in range(0, n, batch):
        m = min(batch, n - start)
        coarse = gaussian_filter(rng.standard_normal((m, *shape)), sigma=(0,) + (shape[0] / 8,) * len(shape))
        fine = gaussian_filter(rng.standard_normal((m, *shape)), sigma=(0,) + (1.0,) * len(shape))
        radii = rng.uniform(0.6, 0.95, (m, len(shape)))
        inside = sum((g[None] / radii[:, i].reshape(-1, *[1] * len(shape))) ** 2 for i, g in enumerate(grid)) < 1
        image = (0.5 + 0.15 * coarse / coarse.std() + 0.05 * fine / fine.std()) * inside
        out[start:start + m] = np.clip(image, 0, 1)
    return out


def time_preset(preset: str, train: np.ndarray, queries: np.ndarray) -> dict:
    from attacks.replicas.registry import build_scorers, make_scorer, preset_scorers
    from audit.registry import Runtime

    names = preset_scorers(preset)
    build_scorers(names, None)  # validated together, as the CLI does
    out = {"scorers": names, "fit_seconds": {}, "score_seconds": {}, "fit_cpu_seconds": {}, "score_cpu_seconds": {}}
    for name in names:  # one scorer in memory at a time: at 10k images their fitted states are GBs
        scorer = make_scorer(name, None, Runtime(batch_size=64))
        t0, c0 = time.perf_counter(), time.process_time()
        scorer.fit(train)
        out["fit_seconds"][name], out["fit_cpu_seconds"][name] = time.perf_counter() - t0, time.process_time() - c0
        t0, c0 = time.perf_counter(), time.process_time()
        scorer.score(queries)
        out["score_seconds"][name] = time.perf_counter() - t0
        out["score_cpu_seconds"][name] = time.process_time() - c0
        del scorer
    out["fit_total"] = sum(out["fit_seconds"].values())
    out["per_image_seconds"] = sum(out["score_seconds"].values()) / len(queries)
    # CPU time of this single-threaded process: close to what a quiet machine would take, whatever else runs
    out["fit_cpu_total"] = sum(out["fit_cpu_seconds"].values())
    out["per_image_cpu_seconds"] = sum(out["score_cpu_seconds"].values()) / len(queries)
    return out


def markdown(results: dict) -> str:
    lines = ["| domain | training images | preset | fit, wall / CPU s (once per training set) | per synthetic image, "
             "wall / CPU s | slowest scorer per image (CPU s) |", "|---|---:|---|---:|---:|---|"]
    for row in results["rows"]:
        slowest = max(row["score_cpu_seconds"], key=row["score_cpu_seconds"].get)
        lines.append(f"| {row['domain']} | {row['n_train']} | {row['preset']} ({','.join(row['scorers'])}) | "
                     f"{row['fit_total']:.1f} / {row['fit_cpu_total']:.1f} | {row['per_image_seconds']:.3f} / "
                     f"{row['per_image_cpu_seconds']:.3f} | {slowest} "
                     f"{row['score_cpu_seconds'][slowest] / row['n_queries']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--domains", default="2D,3D")
    parser.add_argument("--presets", default="fast,default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/bench_replicas_time.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    results = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
               "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
               "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "torch_threads": args.threads, "torch": torch.__version__,
                           "load_average_at_start": os.getloadavg()}, "rows": []}
    t_start = time.perf_counter()
    for domain in [d.strip() for d in args.domains.split(",") if d.strip()]:
        shape = SHAPES[domain]
        for n in [int(s) for s in args.sizes.split(",")]:
            train = procedural(n, shape, seed=n)
            half = args.queries // 2
            queries = np.concatenate([train[:half] ** 1.1, procedural(args.queries - half, shape, seed=n + 1)])
            for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
                row = {"domain": domain, "n_train": n, "n_queries": len(queries), "preset": preset,
                       "load_average": os.getloadavg()[0], **time_preset(preset, train, queries)}
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
            del train, queries
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["seconds_total"] = time.perf_counter() - t_start
    write_results(results, markdown(results), Path(args.out))


if __name__ == "__main__":
    main()
