"""A tiny diffusers `UNet2DModel` pipeline that memorises its training images: the pixel-space positive control of
the membership attacks, made the way a diffusers user makes one.

Training follows diffusers' `train_unconditional.py` example: images scaled to [-1, 1], `DDPMScheduler.add_noise`
at uniform random timesteps, MSE between the UNet's output and the noise, AdamW (β = 0.95, 0.999, weight decay
1e-6) with diffusers' cosine learning-rate schedule and warm-up. Only the budget differs: a few images, many
passes, no augmentation — so that it memorises. Saved with `DDPMPipeline.save_pretrained` (safetensors).

It also exports the members (the training images) and the non-members (the test split) as 16-bit PNG folders
with a manifest (labels for the matching), ready for the folder contract:

    python benchmarks/make_diffusers_control.py --data-root /work/data/mammo80 --out OUT
    audit attack mia --model OUT/pipeline --members OUT/members --nonmembers OUT/nonmembers --out OUT/mia
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch


def export_folder(dataset, records, folder: Path) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, record in enumerate(records):
        image, _ = dataset.load(record)
        name = f"{i:04d}.png"
        Image.fromarray(np.round(image * 65535).astype(np.uint16)).save(folder / name)
        labels = record.labels
        rows.append({"file": name, "id": record.id, "patient_id": record.patient_id, "view": record.view or "",
                     "laterality": record.laterality or "", "birads": labels.birads or "",
                     "density": labels.density or ""})
    with open(folder / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def build_unet(size: int, channels: tuple[int, ...]):
    from diffusers import UNet2DModel

    levels = len(channels)
    return UNet2DModel(sample_size=size, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=channels, norm_num_groups=8,
                       down_block_types=("DownBlock2D",) * (levels - 1) + ("AttnDownBlock2D",),
                       up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (levels - 1))


def train(images: torch.Tensor, steps: int, batch_size: int, lr: float, warmup: int, seed: int,
          channels: tuple[int, ...], log_every: int = 100):
    """diffusers' unconditional recipe on `images` (N, 1, S, S) in [-1, 1]; returns (pipeline, loss log)."""
    from diffusers import DDPMPipeline, DDPMScheduler
    from diffusers.optimization import get_scheduler

    torch.manual_seed(seed)
    unet = build_unet(images.shape[-1], channels)
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr_scheduler = get_scheduler("cosine", optimizer=optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    rng = torch.Generator().manual_seed(seed)
    log, running = [], []
    unet.train()
    for step in range(1, steps + 1):
        clean = images[torch.randint(0, len(images), (batch_size,), generator=rng)]
        noise = torch.randn(clean.shape, generator=rng)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch_size,), generator=rng).long()
        noisy = noise_scheduler.add_noise(clean, noise, t)
        loss = torch.nn.functional.mse_loss(unet(noisy, t, return_dict=False)[0], noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad()
        running.append(loss.item())
        if step % log_every == 0:
            log.append({"step": step, "loss": float(np.mean(running))})
            print(f"step {step}: loss {log[-1]['loss']:.4f}", flush=True)
            running = []
    unet.eval()
    return DDPMPipeline(unet=unet, scheduler=noise_scheduler), log


def main(argv=None) -> None:
    from audit.config import load_data_config
    from audit.data.dataset import open_dataset

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="phantom-mammo")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (default 32)")
    parser.add_argument("--members", type=int, default=32, help="training images (default 32)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--channels", default="16,32,32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    cfg = load_data_config(args.data, args.data_root)
    cfg = cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update={"shape": (args.size, args.size)})})
    dataset = open_dataset(cfg)
    train_records = dataset.subset(split="train").records
    pick = np.sort(np.random.default_rng(args.seed).permutation(len(train_records))[:args.members])
    members = [train_records[i] for i in pick]
    export_folder(dataset, members, out / "members")
    export_folder(dataset, dataset.subset(split="test").records, out / "nonmembers")
    images = torch.from_numpy(np.stack([dataset.load(r)[0] for r in members]))[:, None] * 2 - 1
    started, cpu_started = time.perf_counter(), time.process_time()
    pipeline, log = train(images, args.steps, args.batch_size, args.lr, args.warmup, args.seed,
                          tuple(int(c) for c in args.channels.split(",")))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    pipeline.save_pretrained(out / "pipeline", safe_serialization=True)
    info = {"members": len(members), "size": args.size, "steps": args.steps, "batch_size": args.batch_size,
            "lr": args.lr, "channels": args.channels, "seed": args.seed, "seconds": round(seconds, 1),
            "cpu_seconds": round(cpu_seconds, 1), "parameters": sum(p.numel() for p in pipeline.unet.parameters()),
            "loss_first": log[0]["loss"] if log else None, "loss_last": log[-1]["loss"] if log else None}
    (out / "training.json").write_text(json.dumps({**info, "log": log}, indent=2))
    print(json.dumps(info))


if __name__ == "__main__":
    main()
