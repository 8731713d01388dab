"""A PNG contact sheet of dataset samples with their labels and lesion boxes drawn — for people to look at."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from audit.data.dataset import Sample


def _caption(sample: Sample) -> str:
    r = sample.record
    parts = [r.id[:10], r.split]
    if r.view or r.laterality:
        parts.append(f"{r.laterality or '?'}-{r.view or '?'}")
    if r.labels.birads is not None:
        parts.append(f"BI-RADS {r.labels.birads}")
    if r.labels.density:
        parts.append(f"dens {r.labels.density}")
    if r.labels.findings:
        parts.append(",".join(f[:12] for f in r.labels.findings[:2]))
    for key, value in r.labels.extra[:2]:
        parts.append(f"{key}={value}")
    return "\n".join([" ".join(parts[:3]), " ".join(parts[3:])])


def _display_slice(image: np.ndarray) -> np.ndarray:
    """2D images as they are; RAS volumes as sagittal | coronal | axial middle slices side by side, rotated so
    superior (or anterior, for the axial plane) is up."""
    if image.ndim == 2:
        return image
    x, y, z = (s // 2 for s in image.shape)
    planes = [np.rot90(image[x]), np.rot90(image[:, y, :]), np.rot90(image[:, :, z])]
    height = max(p.shape[0] for p in planes)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 1))) for p in planes]
    return np.concatenate(padded, axis=1)


def write_contact_sheet(samples: Sequence[Sample], out: str | Path, title: str = "", columns: int = 6) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    out = Path(out)
    wide = bool(samples) and samples[0].image.ndim == 3
    columns = min(columns, 3) if wide else columns
    n = max(1, len(samples))
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(columns * (4.2 if wide else 2.2), rows * 2.7), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, sample in zip(axes.ravel(), samples):
        ax.imshow(_display_slice(sample.image), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        if sample.image.ndim == 2:
            for xmin, ymin, xmax, ymax in sample.boxes:
                ax.add_patch(Rectangle((xmin - 0.5, ymin - 0.5), xmax - xmin, ymax - ymin, fill=False,
                                       edgecolor="red", linewidth=1.2))
        # parse_math=False: a '$' in a file name or label is text, never matplotlib mathtext (which can fail to parse)
        ax.set_title(_caption(sample), fontsize=6.5, parse_math=False)
    if title:
        fig.suptitle(title + ("  (sagittal | coronal | axial)" if wide else ""), fontsize=10, parse_math=False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
