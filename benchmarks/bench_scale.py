"""Scaling benchmark (issue #14, phase 1): time and peak memory against size for

- **search**: `audit.search.topk_similarity`, chunked torch vs faiss flat (exact), against N queries and M references;
  and the approximate methods (`audit.search.SEARCHES`: ivf, hnsw at their defaults) with the recall@k they
  measure themselves, on i.i.d. and on clustered rows;
- **generation**: `generate_to_folder` (the `audit generate` pass) against image count, in process vs Ray local;
- **features**: the `domain` encoder's embedding pass (`extract_feature_set`) against image count, in process vs
  Ray local;
- **replicas**: the replica scoring pass (default scorer set, fitted once) against synthetic image count, in process
  vs Ray local (fitted scorers shared through the object store, every scorer per batch on an actor);

plus the **per-item costs** the cluster estimate in docs/scale.md starts from: FLOPs of one generated image (the
whole DDIM sampling incl. guidance and decoding) and of one encoder forward, counted with
`torch.utils.flop_counter.FlopCounterMode`, and the measured exact-search pairs/s.

Every pair (ours vs the other) is measured back to back at each size, sizes in alternating order, so both see the
same load on a shared machine; figures are ratios and fitted log-log exponents, never absolute times presented as
the machine's. Peak memory: the largest resident set of the process tree (driver + Ray's processes and actors),
sampled every 20 ms, minus the tree's resident set just before the call.

    python benchmarks/bench_scale.py --out benchmarks/results/scale [--quick] [--sections search,generation,...]

Writes OUT/scale.json and OUT/search.png, OUT/passes.png (log-log, fitted exponents in the legends).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MODEL = Path("/work/models/ldm2d-tiny")


# --- measuring ----------------------------------------------------------------------------------------------

def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def tree_rss_bytes(root: int | None = None) -> int:
    """Resident set of a process and all its descendants (Ray's raylet, workers and actors are among them)."""
    root = root or os.getpid()
    tree, todo, total = _children(), [root], 0
    while todo:
        pid = todo.pop()
        todo += tree.get(pid, [])
        try:
            with open(f"/proc/{pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class PeakMemory:
    """Largest tree RSS above the level at entry, sampled in a thread."""

    def __init__(self, interval: float = 0.02):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self):
        self.base = tree_rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes() - self.base)
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_bytes() - self.base)


def measure(fn) -> dict:
    with PeakMemory() as memory:
        started = time.perf_counter()
        fn()
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_mb": memory.peak / 2 ** 20}


def loglog_exponent(sizes, seconds) -> float:
    """Slope of log(seconds) against log(size): 1 = linear growth."""
    return float(np.polyfit(np.log(np.asarray(sizes, float)), np.log(np.asarray(seconds, float)), 1)[0])


def linear_fit(sizes, seconds) -> dict:
    """seconds ≈ fixed + per_item·size (least squares): Ray's start-up is the fixed part."""
    per_item, fixed = np.polyfit(np.asarray(sizes, float), np.asarray(seconds, float), 1)
    return {"fixed_seconds": float(fixed), "seconds_per_item": float(per_item)}


# --- search ---------------------------------------------------------------------------------------------------

def bench_search(quick: bool, repeats: int) -> dict:
    import torch

    from audit.search import faiss_available, topk_similarity

    d, k = 128, 10
    rng = np.random.default_rng(0)
    n_fixed, m_fixed = (512, 4096) if quick else (1024, 16384)
    n_grid = [256, 512, 1024, 2048] if quick else [512, 1024, 2048, 4096]
    m_grid = [1024, 2048, 4096, 8192] if quick else [4096, 8192, 16384, 32768]
    references = rng.standard_normal((max(m_grid + [m_fixed]), d)).astype(np.float32)
    queries = rng.standard_normal((max(n_grid + [n_fixed]), d)).astype(np.float32)
    backends = ["torch"] + (["faiss"] if faiss_available() else [])
    rows = []
    cases = [("N", n, m_fixed) for n in n_grid] + [("M", n_fixed, m) for m in m_grid]
    for j, (axis, n, m) in enumerate(cases):
        order = backends if j % 2 == 0 else backends[::-1]
        best = {b: None for b in backends}
        for _ in range(repeats):
            for backend in order:
                got = measure(lambda: topk_similarity(queries[:n], references[:m], k, "cosine", backend=backend))
                if best[backend] is None or got["seconds"] < best[backend]["seconds"]:
                    best[backend] = got
        for backend in backends:
            rows.append({"axis": axis, "n": n, "m": m, "backend": backend, **best[backend],
                         "pairs_per_second": n * m / best[backend]["seconds"]})
        print(f"search {axis} n={n} m={m}: " + ", ".join(f"{b} {best[b]['seconds']:.3f}s" for b in backends),
              flush=True)
    fits = {}
    for backend in backends:
        mine = [r for r in rows if r["backend"] == backend]
        nm = [r["n"] * r["m"] for r in mine]
        fits[backend] = {"exponent_in_NM": loglog_exponent(nm, [r["seconds"] for r in mine]),
                         "exponent_in_N": loglog_exponent([r["n"] for r in mine if r["axis"] == "N"],
                                                          [r["seconds"] for r in mine if r["axis"] == "N"]),
                         "exponent_in_M": loglog_exponent([r["m"] for r in mine if r["axis"] == "M"],
                                                          [r["seconds"] for r in mine if r["axis"] == "M"]),
                         "median_pairs_per_second": float(np.median([r["pairs_per_second"] for r in mine]))}
    ratio = None
    if "faiss" in backends:
        ratio = float(np.median([t["seconds"] / f["seconds"] for t, f in
                                 zip([r for r in rows if r["backend"] == "torch"],
                                     [r for r in rows if r["backend"] == "faiss"])]))
    return {"d": d, "k": k, "metric": "cosine", "repeats_min_of": repeats, "torch_threads": torch.get_num_threads(),
            "rows": rows, "fits": fits, "median_time_ratio_torch_over_faiss": ratio,
            "approximate": bench_approximate(queries[:n_fixed], references, m_grid, k)}


def clustered_rows(rng, n: int, d: int, clusters: int = 256) -> np.ndarray:
    """Embedding-like rows: a mixture of Gaussians (real embeddings cluster; i.i.d. Gaussians are the worst case
    of every approximate index)."""
    centres = rng.standard_normal((clusters, d))
    return (centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, d))).astype(np.float32)


def bench_approximate(queries: np.ndarray, references: np.ndarray, m_grid: list[int], k: int) -> list[dict]:
    """Exact (auto kernel), IVF and HNSW at their defaults: build + search time, peak memory and the recall@k
    each method measures itself (on its 256-query seeded sample) — on i.i.d. rows at every M, and on clustered
    rows at the largest M."""
    from audit.search import search_topk

    rng = np.random.default_rng(2)
    cases = [("iid", queries, references[:m]) for m in m_grid]
    cases.append(("clustered", clustered_rows(rng, len(queries), queries.shape[1]),
                  clustered_rows(np.random.default_rng(2), max(m_grid), queries.shape[1])))
    for method in ("exact", "ivf", "hnsw"):  # warm-up: imports (faiss, scipy's bootstrap) outside the timings
        search_topk(queries[:64], references[:2048], k, "cosine", method)
    rows = []
    for data, q, r in cases:
        for method in ("exact", "ivf", "hnsw"):
            box = {}
            got = measure(lambda: box.update(result=search_topk(q, r, k, "cosine", method)))
            info = box["result"].info
            recall = info.get("recall_at_k", {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0})
            rows.append({"data": data, "n": len(q), "m": len(r), "method": method, **got,
                         "recall_at_k": recall["value"], "recall_ci": [recall["ci_low"], recall["ci_high"]],
                         **{key: info[key] for key in ("kernel", "nlist", "nprobe") if key in info}})
            print(f"approximate {data} n={len(q)} m={len(r)} {method}: {got['seconds']:.2f}s, "
                  f"recall@{k} {recall['value']:.3f}", flush=True)
    return rows


# --- per-image passes ------------------------------------------------------------------------------------------

def ray_executor():
    from audit.parallel import RayExecutor, Resources

    return RayExecutor(None, Resources(num_cpus=1, threads=1))


def bench_generation(quick: bool, work: Path, steps: int, sizes: list[int] | None = None) -> dict:
    from audit.parallel import LOCAL
    from generators.loading import load_generator
    from generators.writer import GeneratorSource, generate_to_folder

    sizes = sizes or ([8, 16, 32] if quick else [16, 32, 64, 128])
    generator = load_generator(MODEL).with_sampling(num_inference_steps=steps)
    source = GeneratorSource(str(MODEL), "cpu", (("num_inference_steps", steps),))
    executors = {"single": LOCAL, "ray_local": ray_executor()}
    rows = []
    for j, n in enumerate(sizes):
        for name in (list(executors) if j % 2 == 0 else list(executors)[::-1]):
            out = work / f"gen-{name}-{n}"
            shutil.rmtree(out, ignore_errors=True)
            got = measure(lambda: generate_to_folder(generator, out, n, seed=0, batch_size=4, progress=False,
                                                     executor=executors[name], source=source))
            rows.append({"executor": name, "n": n, **got})
            print(f"generation n={n} {name}: {got['seconds']:.1f}s, peak {got['peak_mb']:.0f} MB", flush=True)
        same = all((work / f"gen-single-{n}" / p.name).read_bytes() == p.read_bytes()
                   for p in (work / f"gen-ray_local-{n}").iterdir())
        rows[-1]["identical_to_single"] = rows[-2]["identical_to_single"] = same
    return {"model": str(MODEL), "steps": steps, "batch_size": 4, "rows": rows, **_fits(rows)}


def _fits(rows) -> dict:
    fits = {}
    for name in sorted({r["executor"] for r in rows}):
        mine = [r for r in rows if r["executor"] == name]
        sizes, seconds = [r["n"] for r in mine], [r["seconds"] for r in mine]
        fits[name] = {"exponent": loglog_exponent(sizes, seconds), **linear_fit(sizes, seconds),
                      "max_peak_mb": max(r["peak_mb"] for r in mine)}
    return {"fits": fits}


def write_images(folder: Path, n: int, side: int = 64, seed: int = 1) -> None:
    from scipy.ndimage import gaussian_filter

    from audit.data.imageio import write_image_file

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        image = gaussian_filter(rng.random((side, side)), 2.0)
        image = (image - image.min()) / (image.max() - image.min())
        write_image_file(image.astype(np.float32), folder / f"{i:05d}.png")


def bench_features(quick: bool, work: Path, sizes: list[int] | None = None) -> dict:
    from audit.artifacts import ArtifactCache
    from audit.data.readers.folder import open_folder
    from audit.extractors import build_extractor
    from audit.extractors.feature_sets import extract_feature_set
    from audit.parallel import LOCAL
    from audit.registry import Runtime

    sizes = sizes or ([256, 512, 1024] if quick else [512, 1024, 2048, 4096])
    folder = work / "images"
    write_images(folder, max(sizes))
    dataset = open_folder(folder, shape=(64, 64))
    extractor = build_extractor("domain", options={"epochs": 1}, runtime=Runtime(cache_dir=work / "cache"))
    extractor.prepare(dataset.subset(ids=[r.id for r in dataset.records[:32]]), ArtifactCache(work / "cache"))
    executors = {"single": LOCAL, "ray_local": ray_executor()}
    rows = []
    for j, n in enumerate(sizes):
        subset = dataset.subset(ids=[r.id for r in dataset.records[:n]])
        features = {}
        for name in (list(executors) if j % 2 == 0 else list(executors)[::-1]):
            def run():
                features[name] = extract_feature_set(extractor, subset, batch_size=32, executor=executors[name])
            got = measure(run)
            rows.append({"executor": name, "n": n, **got})
            print(f"features n={n} {name}: {got['seconds']:.1f}s, peak {got['peak_mb']:.0f} MB", flush=True)
        difference = float(np.abs(features["single"].features - features["ray_local"].features).max())
        rows[-1]["max_abs_difference"] = rows[-2]["max_abs_difference"] = difference
    return {"extractor": "domain (epochs 1)", "image_shape": [64, 64], "batch_size": 32, "rows": rows,
            **_fits(rows)}


def bench_replicas(quick: bool, work: Path, sizes: list[int] | None = None, n_train: int = 256) -> dict:
    """The replica scoring pass of `audit run` against the number of synthetic images: the default scorer set fitted
    once on `n_train` 64² training images (not timed), then in process (each scorer streams the batches, as the
    stage does) vs Ray local (the fitted scorers shared once through the object store — timed — and every scorer
    applied to each batch on an actor)."""
    from attacks.replicas.pipeline import score_in_batches, score_on_workers
    from attacks.replicas.registry import DEFAULT_SCORERS, build_scorers
    from audit.data.readers.folder import open_folder
    from audit.registry import Runtime

    sizes = sizes or ([32, 64, 128] if quick else [64, 128, 256, 512])
    batch_size = 64
    train_folder, query_folder = work / "replica-train", work / "replica-queries"
    write_images(train_folder, n_train)
    write_images(query_folder, max(sizes), seed=2)
    train = open_folder(train_folder, shape=(64, 64)).stack()
    queries = open_folder(query_folder, shape=(64, 64))
    names = list(DEFAULT_SCORERS)
    scorers = build_scorers(names, None, Runtime(batch_size=batch_size))
    for scorer in scorers.values():
        scorer.fit(train)
    ray = ray_executor()
    rows = []
    for j, n in enumerate(sizes):
        subset = queries.subset(ids=[r.id for r in queries.records[:n]])
        scores = {}
        for name in (["single", "ray_local"] if j % 2 == 0 else ["ray_local", "single"]):
            def run():
                if name == "single":
                    scores[name] = {s: score_in_batches(scorer, (b for b, _ in subset.iter_images(batch_size)))
                                    for s, scorer in scorers.items()}
                else:
                    scores[name] = score_on_workers(ray.share(scorers), names, subset, ray, batch_size)[0]
            got = measure(run)
            rows.append({"executor": name, "n": n, **got})
            print(f"replicas n={n} {name}: {got['seconds']:.1f}s, peak {got['peak_mb']:.0f} MB", flush=True)
        difference = max(float(np.abs(scores["single"][s].scores - scores["ray_local"][s].scores).max())
                         for s in names)
        same_nearest = all(np.array_equal(scores["single"][s].nearest, scores["ray_local"][s].nearest) for s in names)
        rows[-1]["max_abs_difference"] = rows[-2]["max_abs_difference"] = difference
        rows[-1]["same_nearest"] = rows[-2]["same_nearest"] = same_nearest
    return {"scorers": names, "n_train": n_train, "image_shape": [64, 64], "batch_size": batch_size, "rows": rows,
            **_fits(rows)}


# --- per-item costs for the cluster estimate ---------------------------------------------------------------------

def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def bench_flops(steps: int) -> dict:
    import torch

    from audit.extractors import build_extractor
    from audit.features import train_ssl_encoder, save_ssl_encoder
    from generators.loading import load_generator

    generator = load_generator(MODEL)
    conditions = generator.default_conditions(1, 0)
    per_image = {}
    for s in (steps, generator.describe().get("sampling", {}).get("num_inference_steps", 25)):
        g = generator.with_sampling(num_inference_steps=int(s))
        per_image[int(s)] = count_flops(lambda: g.sample(conditions, 0))
    started = time.perf_counter()
    generator.with_sampling(num_inference_steps=steps).sample(conditions * 4, 0)
    cpu_seconds_per_image = (time.perf_counter() - started) / 4

    images = np.random.default_rng(0).random((8, 64, 64)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        save_ssl_encoder(train_ssl_encoder(images, epochs=1), Path(tmp) / "enc")
        extractor = build_extractor("domain", weights=str(Path(tmp) / "enc"))
        encoder_flops = count_flops(lambda: extractor.extract(images[:1]))
        extractor.extract(images)
        started = time.perf_counter()
        for _ in range(4):
            extractor.extract(images)
        encoder_cpu_seconds = (time.perf_counter() - started) / 32
    return {"torch_threads": torch.get_num_threads(),
            "generation_flops_per_image": per_image,
            "generation_cpu_seconds_per_image_at_steps": {steps: cpu_seconds_per_image},
            "domain_encoder_flops_per_image_64px": encoder_flops,
            "domain_encoder_cpu_seconds_per_image_64px": encoder_cpu_seconds,
            "note": "FLOPs counted by torch.utils.flop_counter (matmul/conv; elementwise ops not counted)"}


# --- plots ---------------------------------------------------------------------------------------------------

def plot(result: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "search" in result:
        s = result["search"]
        approximate = s.get("approximate") or []
        fig, axes = plt.subplots(1, 3 if approximate else 2, figsize=(15 if approximate else 10, 4))
        for ax, axis in zip(axes, ("N", "M")):
            for backend, fit in s["fits"].items():
                mine = [r for r in s["rows"] if r["backend"] == backend and r["axis"] == axis]
                x = [r["n"] * r["m"] for r in mine]
                ax.loglog(x, [r["seconds"] for r in mine], "o-",
                          label=f"{backend}: slope {fit[f'exponent_in_{axis}']:.2f} (in N·M overall "
                                f"{fit['exponent_in_NM']:.2f})")
            fixed = s["rows"][0]["m"] if axis == "N" else s["rows"][-1]["n"]
            ax.set_title(f"exact top-{s['k']} search, vary {axis} ({'M' if axis == 'N' else 'N'} = {fixed}), "
                         f"d={s['d']}", fontsize=9)
            ax.set_xlabel("pairs N·M")
            ax.set_ylabel("seconds (min of repeats)")
            ax.legend(fontsize=7)
        if approximate:
            ax = axes[2]
            for method in ("exact", "ivf", "hnsw"):
                mine = [r for r in approximate if r["method"] == method and r["data"] == "iid"]
                clustered = [r for r in approximate if r["method"] == method and r["data"] == "clustered"]
                label = (f"{method}: recall@{s['k']} {min(r['recall_at_k'] for r in mine):.2f}–"
                         f"{max(r['recall_at_k'] for r in mine):.2f} i.i.d."
                         + (f", {clustered[0]['recall_at_k']:.2f} clustered" if clustered else ""))
                ax.loglog([r["m"] for r in mine], [r["seconds"] for r in mine], "o-", label=label)
            ax.set_title(f"build + search + recall check, N = {approximate[0]['n']} (one run each)", fontsize=9)
            ax.set_xlabel("references M")
            ax.set_ylabel("seconds")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "search.png", dpi=110)
        plt.close(fig)
    passes = [k for k in ("generation", "features", "replicas") if k in result]
    if passes:
        fig, axes = plt.subplots(1, len(passes), figsize=(5 * len(passes), 4), squeeze=False)
        for ax, key in zip(axes[0], passes):
            part = result[key]
            for name, fit in part["fits"].items():
                mine = [r for r in part["rows"] if r["executor"] == name]
                ax.loglog([r["n"] for r in mine], [r["seconds"] for r in mine], "o-",
                          label=f"{name}: slope {fit['exponent']:.2f}, {fit['seconds_per_item']:.3g} s/item + "
                                f"{fit['fixed_seconds']:.3g} s")
            title = {"generation": "generation (ldm2d-tiny)", "features": "domain embeddings",
                     "replicas": "replica scoring (default scorer set)"}.get(key, key)
            ax.set_title(f"{title}, 2 shared CPU cores", fontsize=9)
            ax.set_xlabel("images")
            ax.set_ylabel("seconds")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "passes.png", dpi=110)
        plt.close(fig)


def _sizes(text: str | None) -> list[int] | None:
    return [int(x) for x in text.split(",")] if text else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/scale")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a few minutes)")
    parser.add_argument("--sections", default="search,generation,features,replicas,flops")
    parser.add_argument("--steps", type=int, default=10, help="DDIM steps for the generation pass")
    parser.add_argument("--repeats", type=int, default=3, help="search timings: min of this many")
    parser.add_argument("--gen-sizes", help="image counts of the generation pass, e.g. 16,32,64,128")
    parser.add_argument("--feature-sizes", help="image counts of the feature pass, e.g. 512,1024,2048,4096")
    parser.add_argument("--replica-sizes", help="synthetic image counts of the replica scoring pass, e.g. 64,128,256")
    parser.add_argument("--merge", help="an earlier scale.json whose sections this run does not measure are kept "
                                        "(plots then show them too)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # the single process and each Ray actor run 1 thread: per-item costs compare
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    result: dict = {"date": time.strftime("%Y-%m-%d"), "quick": args.quick, "cpu_count": os.cpu_count(),
                    "load_average_at_start": os.getloadavg()}
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    os.environ.setdefault("SYNTH_AUDIT_CACHE", str(work / "cache"))
    try:
        if "search" in sections:
            result["search"] = bench_search(args.quick, args.repeats)
        if {"generation", "features", "replicas"} & set(sections):
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            if "generation" in sections:
                result["generation"] = bench_generation(args.quick, work, args.steps, _sizes(args.gen_sizes))
            if "features" in sections:
                result["features"] = bench_features(args.quick, work, _sizes(args.feature_sizes))
            if "replicas" in sections:
                result["replicas"] = bench_replicas(args.quick, work, _sizes(args.replica_sizes))
            ray.shutdown()
        if "flops" in sections:
            result["per_item"] = bench_flops(args.steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_average_at_end"] = os.getloadavg()
    if args.merge:
        earlier = json.loads(Path(args.merge).read_text())
        kept = {k: v for k, v in earlier.items() if k in ("search", "generation", "features", "replicas", "per_item")
                and k not in result}
        result.update(kept)
        result["merged_from"] = {"file": args.merge, "date": earlier.get("date"), "sections": sorted(kept)}
    (out / "scale.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    plot(result, out)
    print(json.dumps({k: v.get("fits", v) if isinstance(v, dict) else v for k, v in result.items()}, indent=1,
                     default=str))


if __name__ == "__main__":
    main()
