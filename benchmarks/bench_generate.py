"""Sampling speed of the latent diffusion generators (not run by CI).

For each batch size: images/s of `generator.sample` (DDIM + classifier-free guidance + decoding), and the ratio of
that time to the raw UNet forward passes alone for the same number of steps and the same batch (2·B with guidance),
measured interleaved in one run (best of repeats: on a shared machine the minimum is the least disturbed run). The
sampling loop's overhead = ratio − 1 (target ≤ 10%); decoding the latents is reported separately. A second, load-
independent figure times the UNet calls *inside* the sampling run itself: in-run ratio = sampling time / time spent
in those UNet calls.

    .venv/bin/python benchmarks/bench_generate.py                      # ldm2d-tiny architecture, untrained weights
    .venv/bin/python benchmarks/bench_generate.py --model CKPT --batch-sizes 1 8 32 --steps 25 --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone

import torch

from generators.base import Condition
from generators.conditions import LabelVocabulary
from generators.config import load_generator_config
from generators.ldm import LatentDiffusionGenerator


def untrained(preset: str) -> LatentDiffusionGenerator:
    """The preset's architecture with random weights: speed does not depend on what the weights are."""
    config = load_generator_config(preset)
    conditions = demo_conditions(4)
    torch.manual_seed(0)
    fields = config.conditioning.fields or ()
    return LatentDiffusionGenerator.create(config, config.shape, LabelVocabulary.build(conditions, fields), conditions)


def demo_conditions(n: int) -> list[Condition]:
    from audit.data.records import Box

    return [Condition(birads=1 + i % 5, density="ABCD"[i % 4], view=("CC", "MLO")[i % 2], laterality="L",
                      findings=("Mass",) if i % 2 else (), boxes=(Box(20, 20, 30, 34, "Mass"),) if i % 2 else (),
                      extra=(("lesion", str(i % 2)), ("age_group", "old")), source_id=f"demo{i}") for i in range(n)]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()
def measure(gen: LatentDiffusionGenerator, batch: int, steps: int, repeats: int) -> dict:
    conds = demo_conditions(batch)
    scale = gen.config.sampling.guidance_scale
    gen = gen.with_sampling(num_inference_steps=steps)
    per_pass = 2 * batch if scale != 1.0 else batch
    latents = torch.randn(per_pass, *gen.backend.latent_shape())
    cond = gen.encode_conditions(conds)
    cond = cond.cat(cond.null()) if scale != 1.0 else cond
    timesteps, _ = gen.backend.ddim(steps)

    def raw_unet():
        for t in timesteps:
            gen.backend.predict_noise(latents, torch.full((per_pass,), t, dtype=torch.long), cond)

    def decode():
        gen.backend.decode(latents[:batch] / gen.latent_scale)

    inside = []  # seconds spent in UNet calls during one sampling run
    predict = gen.backend.predict_noise

    def timed_predict(*a, **k):
        start = time.perf_counter()
        out = predict(*a, **k)
        inside[-1] += time.perf_counter() - start
        return out

    def sample():
        inside.append(0.0)
        gen.backend.predict_noise = timed_predict
        try:
            gen.sample(conds, seed=0)
        finally:
            del gen.backend.predict_noise  # back to the class method

    sample(), raw_unet()  # warm-up (allocator, oneDNN kernels)
    inside.clear()
    s_times, u_times, d_times = [], [], []
    for _ in range(repeats):  # interleaved, so load changes hit both sides
        s_times.append(timed(sample))
        u_times.append(timed(raw_unet))
        d_times.append(timed(decode))
    best = min(range(repeats), key=lambda i: s_times[i])
    s, u, d = min(s_times), min(u_times), min(d_times)
    in_run = statistics.median(st / ins for st, ins in zip(s_times, inside))
    return {"batch": batch, "steps": steps, "unet_batch": per_pass, "sample_s": round(s, 4),
            "images_per_s": round(batch / s, 3), "raw_unet_s": round(u, 4), "decode_s": round(d, 4),
            "ratio_sample_to_unet": round(s / u, 4), "ratio_loop_to_unet": round((s - d) / u, 4),
            "in_run_ratio": round(in_run, 4), "unet_inside_best_run_s": round(inside[best], 4)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint folder (default: the --preset architecture, untrained)")
    parser.add_argument("--preset", default="ldm2d-tiny")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = LatentDiffusionGenerator.load(args.model) if args.model else untrained(args.preset)
    rows = [measure(gen, b, args.steps, args.repeats) for b in args.batch_sizes]
    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": platform.processor() or
            platform.machine(), "threads": args.threads, "torch": torch.__version__,
            "model": args.model or f"{args.preset} (untrained)", "guidance_scale": gen.config.sampling.guidance_scale}
    print(json.dumps(meta))
    print("| batch | images/s | sample s | raw UNet s (same steps) | decode s | sample / raw UNet "
          "| (sample − decode) / raw UNet | in-run: sample / its UNet calls |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['images_per_s']:.2f} | {r['sample_s']:.3f} | {r['raw_unet_s']:.3f} | "
              f"{r['decode_s']:.3f} | {r['ratio_sample_to_unet']:.3f} | {r['ratio_loop_to_unet']:.3f} | "
              f"{r['in_run_ratio']:.3f} |")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
