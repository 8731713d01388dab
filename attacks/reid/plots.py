"""Figures of the re-identification stage (matplotlib, Agg): the gallery of linked pairs and the score histogram.
3D volumes show their middle slice along the first axis."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from attacks.replicas.plots import _pyplot, _short, middle_slice


def plot_gallery(path: Path, synthetic_images: Sequence[np.ndarray], train_images: Sequence[np.ndarray],
                 captions: Sequence[tuple[str, str]]) -> None:
    """One row per pair: the synthetic image beside its best-matching training image; `captions[i]` =
    (synthetic caption, training caption)."""
    plt = _pyplot()
    rows = max(1, len(synthetic_images))
    fig, axes = plt.subplots(rows, 2, figsize=(5, 2.6 * rows), squeeze=False)
    for row, (synthetic, train, (left, right)) in enumerate(zip(synthetic_images, train_images, captions)):
        axes[row, 0].imshow(middle_slice(synthetic), cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_title(left, fontsize=7)
        axes[row, 1].imshow(middle_slice(train), cmap="gray", vmin=0, vmax=1)
        axes[row, 1].set_title(right, fontsize=7)
    if not len(synthetic_images):
        axes[0, 0].text(0.5, 0.5, "no synthetic image", ha="center", va="center")
    for ax in axes.ravel():
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_score_histogram(path: Path, synthetic_scores: np.ndarray, holdout_scores: np.ndarray,
                         thresholds: dict[str, float]) -> None:
    """Best-match cosine to the training set: synthetic vs held-out real images, with the thresholds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    values = np.concatenate([np.asarray(synthetic_scores, float), np.asarray(holdout_scores, float)])
    bins = np.linspace(values.min() - 1e-6, values.max() + 1e-6, 40) if len(values) else 10
    ax.hist(holdout_scores, bins=bins, alpha=0.6, density=True, label=f"held-out real (n={len(holdout_scores)})")
    ax.hist(synthetic_scores, bins=bins, alpha=0.6, density=True, label=f"synthetic (n={len(synthetic_scores)})")
    for (name, value), style in zip(thresholds.items(), ("--", ":", "-.")):
        ax.axvline(value, color="k", linestyle=style, linewidth=1, label=f"threshold {name} ({value:.3f})")
    ax.set_xlabel("best-match cosine to a training image (re-id embedding)")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def pair_captions(synthetic_name: str, train_name: str, score: float, linked: bool) -> tuple[str, str]:
    state = "LINKED" if linked else "not linked"
    return (f"synthetic {_short(synthetic_name)}\ncosine {score:.3f} ({state})", f"train {_short(train_name)}")
