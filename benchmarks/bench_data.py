"""Data-layer benchmark: phantom build time, first-pass decode vs cached pass (one run, same machine).

    .venv/bin/python benchmarks/bench_data.py [--patients 200] [--out /tmp/bench-data]

Prints a markdown table; the ratio cached/uncached is what matters (these machines are noisy).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    work = Path(args.out or tempfile.mkdtemp(prefix="bench-data-"))
    shutil.rmtree(work, ignore_errors=True)
    os.environ["SYNTH_AUDIT_CACHE"] = str(work / "cache")

    from audit.config import load_data_config
    from audit.data.dataset import open_dataset
    from audit.data.phantoms import write_mammo_phantom

    t0 = time.perf_counter()
    summary = write_mammo_phantom(work / "mammo", patients=args.patients, seed=0)
    build = time.perf_counter() - t0

    cfg = load_data_config("phantom-mammo", root=work / "mammo")
    t0 = time.perf_counter()
    ds = open_dataset(cfg)
    scan_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    first = ds.stack()
    decode_first = time.perf_counter() - t0

    t0 = time.perf_counter()
    ds2 = open_dataset(cfg)
    scan_again = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = ds2.stack()
    decode_again = time.perf_counter() - t0
    assert (first == again).all() and ds2.cache.hits == len(ds2)

    n = summary.n_images
    print(f"| step | seconds | images/s |")
    print(f"| --- | ---: | ---: |")
    print(f"| build phantom ({args.patients} patients, {n} DICOMs) | {build:.1f} | {n / build:.0f} |")
    print(f"| scan, first (reads every header once) | {scan_first:.2f} | {n / scan_first:.0f} |")
    print(f"| decode + preprocess, first pass | {decode_first:.1f} | {n / decode_first:.0f} |")
    print(f"| scan, again (stat only) | {scan_again:.2f} | {n / scan_again:.0f} |")
    print(f"| load, cached pass | {decode_again:.2f} | {n / decode_again:.0f} |")
    print(f"\ncached pass is {decode_first / decode_again:.0f}x faster than decoding; "
          f"re-scan {scan_first / scan_again:.0f}x faster than the first scan")


if __name__ == "__main__":
    main()
