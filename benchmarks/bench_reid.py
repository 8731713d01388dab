"""Re-identification acceptance run (not run by CI): the attacker's sanity on held-out patients, and the re-id
figures of each model's samples against its training set.

For one dataset: train (or take from the cache) the attacker on the train split with the default parameters
(or `--option attacker.KEY=VALUE`), report its sanity figures beside the untrained network's, then for every
`--model NAME=CKPT` generate `--n` images (resumable, into OUT/NAME/synthetic) and run the stage on them exactly
as `audit attack reid --data ... --model ...` does. Prints a Markdown table and writes OUT/bench_reid.json.

    .venv/bin/python benchmarks/bench_reid.py --data phantom-mammo --data-root /work/data/mammo80 \
        --model memorize-quick=/work/models/memorize-quick --model ldm2d-tiny=/work/models/ldm2d-tiny \
        --n 64 --out /work/scratch/reid/bench --threads 1
    .venv/bin/python benchmarks/bench_reid.py --data phantom-brain3d --data-root /work/data/brain40 --out OUT
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from attacks.reid.attacker import cached_attacker, untrained_attacker
from attacks.reid.evaluate import sanity_figures
from attacks.reid.stage import ReidStageParams, display_names, run_reid
from audit.artifacts import ArtifactCache
from audit.config import load_data_config
from audit.data.dataset import open_dataset
from audit.data.readers.folder import open_folder
from audit.registry import Runtime, parse_option_assignments

ROWS = ("sanity/map_at_r", "sanity/precision_at_1", "sanity/verification_auc", "map_at_r", "map_at_r_chance",
        "rate_at_fpr_1pct", "control/rate_at_fpr_1pct", "risk_at_fpr_1pct", "rate_at_fpr_0.1pct",
        "control/rate_at_fpr_0.1pct", "risk_at_fpr_0.1pct")


def fmt(figure: dict) -> str:
    if figure.get("value") is None:
        return "n/a"
    return f"{figure['value']:.3f} [{figure['ci_low']:.3f}, {figure['ci_high']:.3f}] (n={figure['n']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--model", action="append", default=[], metavar="NAME=CKPT")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--out", required=True)
    parser.add_argument("--option", action="append", default=[], metavar="PART.KEY=VALUE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    params = ReidStageParams.model_validate(parse_option_assignments(args.option))
    runtime = Runtime(seed=args.seed, progress=True, cache_dir=Path(args.cache_dir) if args.cache_dir else None)
    cache = ArtifactCache(runtime.cache_dir)
    dataset = open_dataset(load_data_config(args.data, root=args.data_root))
    train, holdout = dataset.subset("train"), dataset.subset("test")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.machine(),
                    "threads": args.threads, "data": args.data, "data_root": args.data_root,
                    "params": params.model_dump(mode="json"), "n_train": len(train), "n_holdout": len(holdout)}

    started = time.perf_counter()
    builds_before = cache.builds
    attacker = cached_attacker(train, params.attacker, runtime, cache)
    result["attacker"] = {"seconds_this_run": round(time.perf_counter() - started, 1),
                          "trained_this_run": cache.builds > builds_before, "describe": attacker.describe()}
    holdout_images = holdout.stack()
    codes = [r.patient_id for r in holdout.records]
    from attacks.reid.evaluate import label_codes

    (holdout_codes,) = label_codes(codes)
    for name, model in (("trained", attacker),
                        ("untrained", untrained_attacker(train.ndim, train.shape, params.attacker, runtime))):
        figures, details, _, _ = sanity_figures(model.embed(holdout_images), holdout_codes, params.evaluation,
                                                args.seed)
        result[f"sanity_{name}"] = {k: v.to_dict() for k, v in figures.items()}

    result["models"] = {}
    for item in args.model:
        name, _, path = item.partition("=")
        synthetic_dir = out / name / "synthetic"
        from generators.loading import load_generator
        from generators.writer import generate_to_folder

        generate_to_folder(load_generator(path), synthetic_dir, args.n, seed=args.seed, progress=True)
        synthetic = open_folder(synthetic_dir, shape=train.shape, name="synthetic")
        names = {"train": display_names(train, args.data_root), "synthetic": display_names(synthetic, synthetic_dir)}
        output = run_reid(train, holdout, synthetic, params, runtime, cache, out / name, names=names,
                          attacker=attacker)
        result["models"][name] = {"path": path, "n": len(synthetic),
                                  "figures": {k: v.to_dict() for k, v in output.figures.items()},
                                  "linkage": output.details["linkage"],
                                  "synthetic_map": output.details["synthetic_map"]}
    (out / "bench_reid.json").write_text(json.dumps(result, indent=2, default=str))

    print(f"\n{args.data} ({args.data_root}): {len(train)} train / {len(holdout)} held-out images, "
          f"{result['date']}\n")
    print("| figure | untrained network | trained attacker |")
    print("| --- | --- | --- |")
    for key in ("sanity/map_at_r", "sanity/precision_at_1", "sanity/verification_auc"):
        print(f"| {key} | {fmt(result['sanity_untrained'][key])} | {fmt(result['sanity_trained'][key])} |")
    if result["models"]:
        names = list(result["models"])
        print("\n| figure | " + " | ".join(names) + " |")
        print("| --- |" + " --- |" * len(names))
        for key in ROWS[3:]:
            print(f"| {key} | " + " | ".join(fmt(result["models"][n]["figures"][key]) for n in names) + " |")
    print(f"\nwrote {out / 'bench_reid.json'}")


if __name__ == "__main__":
    main()
