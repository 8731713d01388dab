"""Cost of the white-box membership attacks: samples/s of each attack on CPU, and the ratio of its time to
(its ε_θ queries per sample × the bare UNet forward time) measured in the same run — how much the attack itself
adds on top of the network calls it cannot avoid (target ≤ 1.15).

The bare forward is the backend's UNet call (`predict_noise` of the LDM backend, conditions encoded once, or the
diffusers UNet) on the same batch at a mid timestep. Attack and bare forward are timed alternately, repeat by
repeat, so both see the same machine load; the ratio uses the medians. Encoding the images (the LDM's VAE
encoder, shared by all attacks of a run) is timed apart.

    python benchmarks/bench_attacks.py --model /work/models/ldm2d-tiny --data phantom-mammo \
        --data-root /work/data/mammo80 --batch-size 32 --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch


def bare_forward(generator, denoiser, x0: torch.Tensor, conditions, t: int):
    """A function running the network alone once on x0's batch (conditions encoded beforehand)."""
    t_batch = torch.full((len(x0),), t, dtype=torch.long)
    backend = getattr(generator, "backend", None)
    if backend is not None:  # our LDMs: the backend's predict_noise = label encoder + UNet (+ box mask channel)
        from generators.base import Condition

        cond = generator.encode_conditions(conditions) if conditions is not None else \
            generator.encode_conditions([Condition()] * len(x0)).null()

        def run():
            with torch.no_grad():
                return backend.predict_noise(x0, t_batch, cond)
    else:  # a diffusers pipeline: its UNet
        unet = generator.unet

        def run():
            with torch.no_grad():
                return unet(x0, t_batch).sample
    return run


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv=None) -> None:
    from attacks.membership.registry import ATTACKS
    from attacks.membership.whitebox import record_key, stack_batch
    from audit.config import load_data_config
    from audit.data.dataset import open_dataset
    from audit.registry import Runtime
    from generators.loading import load_generator

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--attacks", default="loss,pia,secmi,sima")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/bench_attacks.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    generator = load_generator(args.model)
    denoiser = generator.denoiser()
    cfg = load_data_config(args.data, args.data_root)
    cfg = cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update={"shape": tuple(generator.shape)})})
    dataset = open_dataset(cfg)
    records = dataset.subset(split="test").records[:args.batch_size]
    images, conditions = stack_batch(dataset, records)
    conditional = bool(getattr(getattr(generator, "vocabulary", None), "fields", ()))
    conditions = conditions if conditional else None
    keys = [record_key(r.id) for r in records]
    runtime = Runtime(batch_size=len(records))
    encode_times = [timed(lambda: denoiser.encode(images)) for _ in range(args.repeats)]
    x0 = denoiser.encode(images)
    forward = bare_forward(generator, denoiser, x0, conditions, 500)
    forward()  # warm-up
    rows = []
    for name in ATTACKS.parse_names(args.attacks, "--attacks"):
        attack = ATTACKS.create(name, {}, runtime)
        attack.score_batch(denoiser, x0, conditions, keys)  # warm-up
        attack_times, forward_times = [], []
        for _ in range(args.repeats):  # interleaved: both see the same load
            forward_times.append(timed(forward))
            attack_times.append(timed(lambda: attack.score_batch(denoiser, x0, conditions, keys)))
        a, f = statistics.median(attack_times), statistics.median(forward_times)
        rows.append({"attack": name, "queries_per_sample": attack.queries_per_sample,
                     "samples_per_s": round(len(x0) / a, 2), "attack_s": round(a, 4), "bare_forward_s": round(f, 4),
                     "ratio_to_queries_x_forward": round(a / (attack.queries_per_sample * f), 3)})
        print(json.dumps(rows[-1]), flush=True)
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "model": args.model,
              "kind": generator.kind, "space": denoiser.space, "batch_size": len(x0), "threads": args.threads,
              "repeats": args.repeats, "encode_s_median": round(statistics.median(encode_times), 4),
              "machine": f"{platform.machine()} {torch.get_num_threads()} torch thread(s)", "attacks": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    existing = json.loads(Path(args.out).read_text()) if Path(args.out).is_file() else {}
    existing[f"{Path(args.model).name}/batch{len(x0)}"] = result
    Path(args.out).write_text(json.dumps(existing, indent=2) + "\n")
    print(f"encode (shared by all attacks): {result['encode_s_median']:.4f} s per batch of {len(x0)}")


if __name__ == "__main__":
    main()
