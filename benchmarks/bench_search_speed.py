"""Speed of the replica search: shortlist throughput vs the matmul peak, SSIM top-1 search vs brute force, memory.

    .venv/bin/python benchmarks/bench_search_speed.py [--threads 1] [--quick] [--brute-queries 500]
        [--out benchmarks/results/bench_search_speed.json]

All in one run, with one torch thread count, so the ratios are comparable on a noisy shared machine:
- the machine's matmul peak (best of five 4096 × d × 4096 float32 products, GFLOP/s → pairs/s for the
  shortlist's d) beside the shortlist search's throughput (`audit.search.topk_similarity`, NCC, top-10);
- SSIM nearest neighbour: `audit.ssim_search.SSIMSearch` (embedding → sampled SSIM → exact SSIM) and the
  NCC-shortlist re-rank of the `ssim` scorer, against brute-force SSIM top-1 (exact SSIM of every query with every
  reference, the same exact kernel `ssim_against` that the last stage uses), 500 queries × 2000 references of
  128² phantom mammograms: half the queries are copies of references under the benchmark's transformations, half
  are new phantom patients. Brute force runs on `--brute-queries` of them (all 500 by default; fewer are
  extrapolated linearly and printed as such);
- peak memory (VmHWM of a fresh process, reset just before the search) of a 20k × 100k, d = 256 search.

Nothing is downloaded: the phantom writer is local.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench_replicas import SIZE_2D, TRANSFORMS, mammo_phantom_views, transforms_2d, write_results


def matmul_peak(d: int, n: int = 4096, repeats: int = 5) -> float:
    """Best GFLOP/s of a float32 (n × d) @ (d × n) product — the ceiling of any dot-product search."""
    import torch

    a, b = torch.randn(n, d), torch.randn(d, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n * n * d / best / 1e9


def shortlist_throughput(d: int, n_queries: int, n_refs: int, repeats: int = 3) -> dict:
    from audit.search import topk_similarity

    rng = np.random.default_rng(0)
    q = rng.random((n_queries, d), dtype=np.float32)
    r = rng.random((n_refs, d), dtype=np.float32)
    topk_similarity(q[:64], r[:4096], k=10, metric="ncc")  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        topk_similarity(q, r, k=10, metric="ncc")
        best = min(best, time.perf_counter() - t0)
    peak = matmul_peak(d)
    pairs = n_queries * n_refs / best
    peak_pairs = peak * 1e9 / (2 * d)
    return {"d": d, "queries": n_queries, "references": n_refs, "seconds": best, "pairs_per_s": pairs,
            "matmul_peak_gflops": peak, "peak_pairs_per_s": peak_pairs, "fraction_of_peak": pairs / peak_pairs}


def ssim_queries(work: Path, n_refs: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(references, queries, source of each copy): copies first (one transformation each, cycling), then new
    phantom patients."""
    patients = (n_refs + n_queries) // 4 + 2
    images = np.stack([p[0] for p in mammo_phantom_views(patients, work / "speed", seed=seed)])
    refs = images[:n_refs]
    rng = np.random.default_rng(seed)
    n_copies = n_queries // 2
    tf = transforms_2d(seed)
    kinds = [t for t in TRANSFORMS if t != "flip"]  # brute force compares orientations as they are
    src = rng.choice(n_refs, n_copies, replace=False)
    copies = np.stack([tf[kinds[i % len(kinds)]](refs[s]) for i, s in enumerate(src)])
    novel = images[len(images) - (n_queries - n_copies):]
    return refs, np.concatenate([copies, novel]), src


def ssim_search_vs_brute_force(work: Path, n_refs: int, n_queries: int, brute_queries: int, seed: int = 3,
                               chunk: int = 50) -> dict:
    """Top-1 by SSIM: the cascade and the NCC-shortlist re-rank against exhaustive exact SSIM.

    The methods and the brute force take turns on chunks of `chunk` queries, so that all of them run under the
    same load of this shared machine (timed one after the other, a 20-minute brute force and a 10-second search
    would see different neighbours); each method's fit (its reference-side work) is timed once and counted."""
    from attacks.replicas.registry import make_scorer
    from attacks.replicas.voxel import Cascade, DownsampledShortlist
    from audit.metrics.similarity import ssim_against
    from audit.ssim_search import SSIMSearch

    class SSIMMeasure:  # the re-ranking of the `ssim` scorer before 2026-11-30 (NCC shortlist, exact SSIM)
        def __call__(self, q, c):
            return ssim_against(q, c)

        def describe(self):
            return {"measure": "SSIM"}

    refs, queries, src = ssim_queries(work, n_refs, n_queries, seed)
    n_copies = len(src)
    half = brute_queries // 2
    subset = np.r_[np.arange(half), n_copies + np.arange(brute_queries - half)]  # half copies, half new images
    in_subset = np.zeros(len(queries), bool)
    in_subset[subset] = True

    search = SSIMSearch()
    rerank = Cascade(DownsampledShortlist(), SSIMMeasure())
    scorer = make_scorer("ssim", {"flips": False})  # what `--scorers ssim` runs (the same search, as a scorer)
    seconds = {}
    t0 = time.perf_counter()
    search.fit(refs)  # SSIM embeddings and sampled moments of the references
    seconds["ssim_search"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scorer.fit(refs)
    seconds["ssim_scorer"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rerank.fit(refs)
    seconds["ncc_shortlist_k10"] = time.perf_counter() - t0
    nearest = {name: np.empty(len(queries), np.int64) for name in seconds}
    brute_values = np.empty((len(queries), n_refs))
    t_brute = 0.0
    for start in range(0, len(queries), chunk):
        rows = np.arange(start, min(start + chunk, len(queries)))
        t0 = time.perf_counter()
        nearest["ssim_search"][rows] = search.topk(queries[rows], k=1)[1][:, 0]
        seconds["ssim_search"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        nearest["ssim_scorer"][rows] = scorer.score(queries[rows]).nearest
        seconds["ssim_scorer"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        scores, index = rerank.topk(queries[rows], 10)
        nearest["ncc_shortlist_k10"][rows] = index[np.arange(len(rows)), np.argmax(scores, axis=1)]
        seconds["ncc_shortlist_k10"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        for q in rows[in_subset[rows]]:  # one query against all references at a time
            brute_values[q] = ssim_against(queries[q][None], refs[None], batch_size=256)[0]
        t_brute += time.perf_counter() - t0
    brute_values = brute_values[subset]
    t_brute_all = t_brute * len(queries) / len(subset)
    brute_best = brute_values.argmax(1)
    ranked = np.sort(brute_values, axis=1)
    gap = ranked[:, -1] - ranked[:, -2]  # how close the runner-up is: near-ties make top-1 agreement hard
    out = {"references": n_refs, "queries": len(queries), "image_shape": list(SIZE_2D), "chunk": chunk,
           "brute_force_queries": len(subset), "brute_force_seconds_measured": t_brute,
           "brute_force_seconds": t_brute_all, "brute_force_extrapolated": len(subset) < len(queries),
           "best_vs_runner_up_gap_median": {"copies": float(np.median(gap[:half])),
                                            "novel": float(np.median(gap[half:]))},
           "methods": {}}
    params = {"ssim_search": {"candidates": search.candidates, "verify": search.verify, "stride": search.stride,
                              "pool": search.pool},
              "ssim_scorer": scorer.params.model_dump(), "ncc_shortlist_k10": {"k": 10}}
    for name, found in nearest.items():
        agree = found[subset] == brute_best
        shortfall = brute_values.max(1) - brute_values[np.arange(len(subset)), found[subset]]
        out["methods"][name] = {
            "params": params[name], "seconds": seconds[name], "time_ratio": t_brute_all / seconds[name],
            "agreement": float(agree.mean()), "agreement_copies": float(agree[:half].mean()),
            "agreement_novel": float(agree[half:].mean()), "disagreements": int((~agree).sum()),
            "ssim_shortfall_max": float(shortfall.max()),
            "copies_nearest_is_source": float(np.mean(found[:n_copies] == src))}
    return out


MEMORY_CHILD = r"""
import sys, time, numpy as np, torch
torch.set_num_threads(int(sys.argv[4]))
from audit.search import topk_similarity

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024  # kB → bytes
    return -1

nq, nr, d = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
q = rng.standard_normal((nq, d), dtype=np.float32)
r = rng.standard_normal((nr, d), dtype=np.float32)
before = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark (VmHWM) to the current RSS
t0 = time.perf_counter()
s, i = topk_similarity(q, r, k=10, metric="cosine")
dt = time.perf_counter() - t0
print(before, status("VmHWM:"), dt, s.shape[0], s.shape[1])
"""


def search_memory(n_queries: int, n_refs: int, d: int, threads: int) -> dict:
    """Peak resident memory of the search in a fresh process: VmHWM after resetting it just before the search
    (ru_maxrss would carry the parent's peak over fork/exec)."""
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(n_queries), str(n_refs), str(d), str(threads)],
                         capture_output=True, text=True, check=True)
    before, peak, seconds, *_ = out.stdout.split()
    return {"queries": n_queries, "references": n_refs, "d": d, "k": 10,
            "peak_rss_gb": int(peak) / 2**30, "rss_before_search_gb": int(before) / 2**30,
            "search_increment_gb": (int(peak) - int(before)) / 2**30,
            "dense_matrix_would_be_gb": n_queries * n_refs * 4 / 2**30, "seconds": float(seconds)}


def markdown(results: dict) -> str:
    lines = ["| measurement | value |", "|---|---|"]
    for t in results.get("shortlist", []):
        lines.append(f"| shortlist search d={t['d']}, {t['queries']}×{t['references']}, top-10 | "
                     f"{t['pairs_per_s'] / 1e6:.1f} M pairs/s = {t['fraction_of_peak'] * 100:.0f}% of the matmul "
                     f"peak ({t['matmul_peak_gflops']:.1f} GFLOP/s → {t['peak_pairs_per_s'] / 1e6:.1f} M pairs/s) |")
    ts = results.get("ssim_top1")
    if ts:
        brute = (f"{ts['brute_force_seconds']:.0f} s" + (f" (extrapolated from {ts['brute_force_queries']} queries)"
                                                         if ts["brute_force_extrapolated"] else ""))
        for name, r in ts["methods"].items():
            lines.append(f"| SSIM top-1, {name} {r['params']}, {ts['queries']}×{ts['references']} "
                         f"({ts['image_shape'][0]}²) vs brute force | agreement {r['agreement'] * 100:.1f}% of "
                         f"{ts['brute_force_queries']} queries (copies {r['agreement_copies'] * 100:.1f}%, new "
                         f"{r['agreement_novel'] * 100:.1f}%; {r['disagreements']} differ, SSIM given away at most "
                         f"{r['ssim_shortfall_max']:.4f}); {r['seconds']:.1f} s vs {brute} = "
                         f"{r['time_ratio']:.0f}× less time |")
    mem = results.get("memory")
    if mem:
        lines.append(f"| peak memory, {mem['queries'] // 1000}k × {mem['references'] // 1000}k search, d={mem['d']}, "
                     f"top-10 | {mem['peak_rss_gb']:.2f} GB peak RSS of the process (torch and the inputs "
                     f"included; the search added {mem['search_increment_gb']:.2f} GB to the "
                     f"{mem['rss_before_search_gb']:.2f} GB before it; the dense matrix alone would be "
                     f"{mem['dense_matrix_would_be_gb']:.1f} GB); {mem['seconds']:.0f} s |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: the 2 cores are shared; the peak is measured alike)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--brute-queries", type=int, default=None,
                        help="queries given the brute-force SSIM scan (default: all 500; --quick 20)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: shortlist, ssim, memory")
    parser.add_argument("--out", default="benchmarks/results/bench_search_speed.json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    q = args.quick
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    results: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                     "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
                     "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                                 "torch_threads": args.threads, "torch": torch.__version__,
                                 "load_average_at_start": os.getloadavg()}}
    t_start = time.perf_counter()
    if "shortlist" not in skip:
        results["shortlist"] = [shortlist_throughput(d, 1000 if q else 2000, 5000 if q else 20000)
                                for d in (256, 1024)]
    if "ssim" not in skip:
        n_queries = 100 if q else 500
        brute = args.brute_queries or (20 if q else n_queries)
        results["ssim_top1"] = ssim_search_vs_brute_force(Path(tempfile.mkdtemp(prefix="bench-speed-")),
                                                          400 if q else 2000, n_queries, min(brute, n_queries))
    if "memory" not in skip:
        results["memory"] = search_memory(2000 if q else 20000, 10000 if q else 100000, 256, args.threads)
    results["seconds_total"] = time.perf_counter() - t_start
    write_results(results, markdown(results), Path(args.out))

if __name__ == "__main__":
    main()
