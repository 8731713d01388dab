"""How close a generator's samples come to its training images: the nearest-training-image NCC.

The positive-control check of the `memorize` preset: its samples should be near-copies (NCC close to 1), a
normal model's should sit near what held-out real images reach by chance. Chunked: never the dense N×M matrix.

    python -m generators.memorization --model CKPT --data phantom-mammo --data-root DIR --n 32 [--sheet out.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch



def nearest_ncc(queries: np.ndarray, references: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """For each query image, the best NCC over the reference images and that reference's index (the suite's
    chunked exact search, `audit.search.topk_similarity`)."""
    from audit.search import topk_similarity

    scores, index = topk_similarity(queries, references, k=1, metric="ncc", chunk_queries=chunk)
    return scores[:, 0].astype(np.float64), index[:, 0]


def summary(values: np.ndarray) -> dict:
    return {"n": int(len(values)), "median": round(float(np.median(values)), 4), "mean": round(float(values.mean()), 4),
            "min": round(float(values.min()), 4), "max": round(float(values.max()), 4),
            "share_above_0.95": round(float((values > 0.95).mean()), 4)}


def side_by_side(samples: np.ndarray, nearest: np.ndarray, scores: np.ndarray, out: Path, title: str) -> Path:
    """Top row: samples; bottom row: their nearest training image (middle slice for volumes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def show(img):
        return img[img.shape[0] // 2] if img.ndim == 3 else img

    n = len(samples)
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 3.0), squeeze=False)
    for j in range(n):
        axes[0, j].imshow(show(samples[j]), cmap="gray", vmin=0, vmax=1)
        axes[0, j].set_title(f"NCC {scores[j]:.2f}", fontsize=7)
        axes[1, j].imshow(show(nearest[j]), cmap="gray", vmin=0, vmax=1)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv=None) -> None:
    from audit.config import load_data_config
    from audit.data.dataset import open_dataset
    from generators.loading import load_generator

    parser = argparse.ArgumentParser(description="nearest-training-image NCC of a generator's samples")
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--data-root")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--sheet", help="PNG: samples over their nearest training images")
    parser.add_argument("--out", help="JSON results")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = load_generator(args.model)
    data_cfg = load_data_config(args.data, args.data_root)
    data_cfg = data_cfg.model_copy(update={"preprocess": data_cfg.preprocess.model_copy(update={"shape": gen.shape})})
    dataset = open_dataset(data_cfg)
    member_ids = {c.source_id for c in getattr(gen, "training_conditions", [])}
    members = [r for r in dataset.records if r.id in member_ids] or dataset.subset(split="train").records
    train_images = np.stack([dataset.load(r)[0] for r in members])
    holdout = dataset.subset(split="test").records
    holdout_images = np.stack([dataset.load(r)[0] for r in holdout])

    conds = gen.default_conditions(args.n, args.seed)
    samples = np.concatenate([gen.sample(conds[i:i + args.batch_size], args.seed, first_index=i)
                              for i in range(0, args.n, args.batch_size)])
    synth_best, synth_idx = nearest_ncc(samples, train_images)
    hold_best, _ = nearest_ncc(holdout_images, train_images)
    # the training image each sample's condition came from: is the copy of *that* patient?
    source_hit = float(np.mean([members[i].id == c.source_id for i, c in zip(synth_idx, conds)]))
    result = {"model": args.model, "kind": gen.kind, "n_train_images": len(members),
              "synthetic_to_train": summary(synth_best), "holdout_to_train": summary(hold_best),
              "nearest_is_source_record": round(source_hit, 4)}
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    if args.sheet:
        k = min(12, len(samples))
        side_by_side(samples[:k], train_images[synth_idx[:k]], synth_best[:k], Path(args.sheet),
                     f"{Path(args.model).name}: samples (top) and nearest training image (bottom)")


if __name__ == "__main__":
    main()
