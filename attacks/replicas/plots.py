"""Figures of the replica audit (matplotlib, Agg backend: no display needed).

- top pairs: the synthetic images with the highest combined scores beside their nearest training images;
- histograms: per scorer and combined, synthetic→train against holdout→train scores, with the threshold.
3D volumes show their middle slice along the first axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def middle_slice(image: np.ndarray) -> np.ndarray:
    return image[image.shape[0] // 2] if image.ndim == 3 else image


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def plot_top_pairs(path: Path, synthetic: np.ndarray, train: np.ndarray, audit, synthetic_names: list[str],
                   train_names: list[str], top: int = 8, pair_ssim: np.ndarray | None = None) -> None:
    plt = _pyplot()
    order = np.argsort(-audit.combined_synthetic, kind="stable")[:top]
    fig, axes = plt.subplots(len(order), 2, figsize=(6, 3 * len(order)), squeeze=False)
    for row, q in enumerate(order):
        t = audit.nearest[q]
        per_scorer = ", ".join(f"{s} {audit.synthetic[s].scores[q]:.3f}" for s in audit.scorers)
        flag = "REPLICA" if audit.is_replica[q] else "not flagged"
        if pair_ssim is not None:
            flag += f", pair SSIM {pair_ssim[q]:.3f}"
        axes[row, 0].imshow(middle_slice(synthetic[q]), cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title(f"synthetic {_short(synthetic_names[q])}\ncombined {audit.combined_synthetic[q]:.2f} "
                               f"({flag})", fontsize=8)
        axes[row, 1].imshow(middle_slice(train[t]), cmap="gray", vmin=0, vmax=1)
        axes[row, 1].set_title(f"train {_short(train_names[t])}\n{per_scorer}", fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_histograms(path: Path, audit) -> None:
    plt = _pyplot()
    names = [*audit.scorers, "combined"]
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names):
        held, synth = audit.holdout_scores(name), audit.synthetic_scores(name)
        both = np.concatenate([held, synth])
        bins = np.linspace(both.min(), both.max() + 1e-9, 30)
        ax.hist(held, bins=bins, alpha=0.6, density=True, label=f"holdout→train (n={len(held)})")
        ax.hist(synth, bins=bins, alpha=0.6, density=True, label=f"synthetic→train (n={len(synth)})")
        ax.axvline(audit.calibrations[name].threshold, color="k", ls="--",
                   label=f"threshold q={audit.calibrations[name].quantile}")
        ax.set_title(name)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
