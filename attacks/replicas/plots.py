"""Figures of the replica audit (matplotlib, Agg backend: no display needed).

- top pairs: the synthetic images with the highest combined scores beside their nearest training images;
- histograms: per scorer and combined, synthetic→train against holdout→train scores, with the threshold.
Titles are plain text (`parse_math=False`): file names are the user's, and a '$' in one must not be read as
mathtext (it crashed the audit).
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


def middle_slice(image: np.ndarray, at: int | None = None) -> np.ndarray:
    """A 2D view: the image itself, or (3D) the slice `at` (default the middle one) along the first axis."""
    return image[image.shape[0] // 2 if at is None else at] if image.ndim == 3 else image


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def _draw_box(ax, box: np.ndarray, colour: str) -> None:
    """A (2, ndim) (start, stop) box as a rectangle on a 2D view (3D: its last two axes)."""
    from matplotlib.patches import Rectangle

    (r0, c0), (r1, c1) = box[0, -2:], box[1, -2:]
    ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, edgecolor=colour, linewidth=1.5))


def plot_top_pairs(path: Path, synthetic: np.ndarray, train: np.ndarray, audit, synthetic_names: list[str],
                   train_names: list[str], top: int = 8, pair_ssim: np.ndarray | None = None) -> None:
    """The top pairs side by side; where a local scorer matched a region of the pair, that region is outlined in
    both images (3D: the slices through the regions' centres)."""
    plt = _pyplot()
    order = np.argsort(-audit.combined_synthetic, kind="stable")[:top]
    fig, axes = plt.subplots(len(order), 2, figsize=(6, 3 * len(order)), squeeze=False)
    for row, q in enumerate(order):
        t = audit.nearest[q]
        per_scorer = ", ".join(f"{s} {audit.synthetic[s].scores[q]:.3f}" for s in audit.scorers)
        flag = "REPLICA" if audit.is_replica[q] else "not flagged"
        if pair_ssim is not None:
            flag += f", pair SSIM {pair_ssim[q]:.3f}"
        region = audit.region(q)
        image_q, image_t = synthetic[q], train[t]
        at_q = at_t = None
        if region is not None and image_q.ndim == 3:
            at_q, at_t = (int(box[:, 0].mean()) for box in region[1:])
        axes[row, 0].imshow(middle_slice(image_q, at_q), cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title(f"synthetic {_short(synthetic_names[q])}\ncombined {audit.combined_synthetic[q]:.2f} "
                               f"({flag})", fontsize=8, parse_math=False)
        axes[row, 1].imshow(middle_slice(image_t, at_t), cmap="gray", vmin=0, vmax=1)
        title = f"train {_short(train_names[t])}\n{per_scorer}"
        if region is not None:
            _draw_box(axes[row, 0], region[1], "red")
            _draw_box(axes[row, 1], region[2], "red")
            title += f"\nred: region matched by {region[0]}"
        axes[row, 1].set_title(title, fontsize=8, parse_math=False)
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
        ax.set_title(name, parse_math=False)
        ax.legend(fontsize=6, loc="upper left")  # an explicit place: "best" searched every bar (slow, warned)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
