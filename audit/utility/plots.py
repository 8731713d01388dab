"""The utility ROC figure: one curve per arm (TRTR, TSTR, mixed) on the real test images, AUCs with their
intervals in the legend. Multi-class targets get one panel per class (one-vs-rest), the curves whose mean AUC is
reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

ARM_STYLE = {"trtr": ("TRTR (train real)", "tab:blue"), "tstr": ("TSTR (train synthetic)", "tab:red"),
             "mixed": ("mixed (real + synthetic)", "tab:green")}


def plot_roc(path: str | Path, labels: np.ndarray, probabilities: dict[str, np.ndarray], class_names, figures,
             title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels)
    binary = len(class_names) == 2
    panels = [1] if binary else [c for c in range(len(class_names)) if 0 < (labels == c).sum() < len(labels)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, c in zip(axes[0], panels):
        for arm, probs in probabilities.items():
            name, colour = ARM_STYLE.get(arm, (arm, None))
            fpr, tpr, _ = roc_curve(labels == c, probs[:, c])
            label = name
            if binary and f"{arm}_auc" in figures:
                e = figures[f"{arm}_auc"]
                label = f"{name}: {e.value:.3f} [{e.ci_low:.3f}, {e.ci_high:.3f}]"
            ax.plot(fpr, tpr, color=colour, label=label)
        ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=0.8)
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.set_title(title if binary else f"{class_names[c]} vs rest", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_aspect("equal")
    if not binary:
        summary = "; ".join(f"{ARM_STYLE.get(a, (a,))[0].split(' ')[0]} {figures[f'{a}_auc'].value:.3f}"
                            for a in probabilities if f"{a}_auc" in figures)
        fig.suptitle(f"{title} — macro AUC: {summary}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
