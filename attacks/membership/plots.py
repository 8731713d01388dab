"""The log-log ROC of every attack (Carlini et al. 2022: membership attacks are judged at low FPR), each with its
control run dashed in the same colour, and the chance diagonal."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_roc_loglog(path: Path, evaluations: dict, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    floor = 1e-3
    for i, (name, ev) in enumerate(evaluations.items()):
        colour = f"C{i % 10}"
        fpr, tpr = ev.roc
        auc = ev.figures["auc"]
        ax.plot(np.maximum(fpr, floor), np.maximum(tpr, floor), color=colour, lw=1.6,
                label=f"{name} AUC {auc.value:.3f} [{auc.ci_low:.2f}, {auc.ci_high:.2f}]")
        cfpr, ctpr = ev.control_roc
        ax.plot(np.maximum(cfpr, floor), np.maximum(ctpr, floor), color=colour, lw=0.9, ls="--", alpha=0.7)
    grid = np.logspace(np.log10(floor), 0, 50)
    ax.plot(grid, grid, color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor, 1)
    ax.set_ylim(floor, 1.05)
    ax.set_xlabel("false positive rate (non-members called members)")
    ax.set_ylabel("true positive rate (members found)")
    ax.set_title(title or "membership inference (dashed: control run)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
