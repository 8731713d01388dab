"""Conditions as model inputs and as table rows.

- `LabelVocabulary`: each conditioning field's values seen in training → embedding indices (0 = unknown, which is
  also the classifier-free-guidance null).
- `box_mask`: lesion boxes rendered as a soft mask at latent resolution (the 2D model's extra input channel).
- rows: the manifest/conditions CSV columns, compatible with the folder reader (`findings` `;`-separated; `boxes`
  `xmin,ymin,xmax,ymax,category` `;`-separated, in output pixels).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from audit.data import labels
from audit.data.records import Box
from audit.data.csvio import read_csv_rows
from audit.errors import AuditInputError
from generators.base import Condition

MAMMO_FIELDS = ("birads", "density", "view", "laterality", "finding")
CONDITION_COLUMNS = ("source_id", "view", "laterality", "birads", "density", "findings", "boxes")
# label keys that are bookkeeping, not labels: never conditioning fields, never "extra" labels of a condition
NON_LABEL_COLUMNS = {"file", "id", "patient_id", "split", "seed", "index", "modality", "path"}


@dataclass(frozen=True)
class LabelVocabulary:
    """Per field, the sorted values seen in training; value k ↦ index k+1, anything else ↦ 0 (unknown/null)."""

    fields: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]

    @classmethod
    def build(cls, conditions: Sequence[Condition], fields: Sequence[str]) -> "LabelVocabulary":
        values = tuple(tuple(sorted({v for c in conditions if (v := c.value(f)) is not None})) for f in fields)
        return cls(tuple(fields), values)

    @property
    def sizes(self) -> tuple[int, ...]:
        """Embedding table size per field (+1 for unknown)."""
        return tuple(len(v) + 1 for v in self.values)

    def indices(self, conditions: Sequence[Condition]) -> torch.Tensor:
        """(N, n_fields) int64 embedding indices."""
        lookup = [{v: i + 1 for i, v in enumerate(vals)} for vals in self.values]
        rows = [[lookup[j].get(c.value(f), 0) for j, f in enumerate(self.fields)] for c in conditions]
        return torch.tensor(rows, dtype=torch.long).reshape(len(conditions), len(self.fields))

    def to_json(self) -> dict:
        return {"fields": list(self.fields), "values": [list(v) for v in self.values]}

    @classmethod
    def from_json(cls, data: dict) -> "LabelVocabulary":
        return cls(tuple(data["fields"]), tuple(tuple(v) for v in data["values"]))


def auto_fields(conditions: Sequence[Condition], max_values: int = 32) -> tuple[str, ...]:
    """Fields worth conditioning on when the preset names none: the mammography labels and every extra label
    with 2..max_values distinct values (a label with one value carries nothing; with hundreds, it is an id)."""
    fields = []
    for name in MAMMO_FIELDS + tuple(sorted({k for c in conditions for k, _ in c.extra} - NON_LABEL_COLUMNS)):
        distinct = {c.value(name) for c in conditions} - {None}
        if 2 <= len(distinct) <= max_values:
            fields.append(name)
    return tuple(fields)


def box_mask(conditions: Sequence[Condition], image_shape: Sequence[int], mask_shape: Sequence[int]) -> torch.Tensor:
    """(N, 1, h, w) float32: the union of each condition's boxes drawn at image resolution, then area-averaged to
    `mask_shape` so a box smaller than a latent pixel still leaves a trace."""
    H, W = image_shape
    h, w = mask_shape
    full = torch.zeros(len(conditions), 1, H, W)
    for i, c in enumerate(conditions):
        for b in c.boxes:
            x0, x1 = int(np.floor(max(0.0, b.xmin))), int(np.ceil(min(float(W), b.xmax)))
            y0, y1 = int(np.floor(max(0.0, b.ymin))), int(np.ceil(min(float(H), b.ymax)))
            if x1 > x0 and y1 > y0:
                full[i, 0, y0:y1, x0:x1] = 1.0
    return torch.nn.functional.adaptive_avg_pool2d(full, (h, w)) if (h, w) != (H, W) else full


def cycle_conditions(pool: Sequence[Condition], n: int, seed: int, first_index: int = 0) -> list[Condition]:
    """Conditions first_index .. first_index+n-1 of an endless sequence of shuffled passes over `pool`: every
    training record is used once before any is reused (so the label distribution is the training set's), and
    condition i depends only on (seed, i)."""
    if not pool:
        raise AuditInputError(None, "the generator has no training conditions to draw from; pass --conditions")
    out, size, perms = [], len(pool), {}
    for i in range(first_index, first_index + n):
        epoch, pos = divmod(i, size)
        if epoch not in perms:
            perms[epoch] = np.random.default_rng([int(seed) % (1 << 63), epoch, 7]).permutation(size)
        out.append(pool[int(perms[epoch][pos])])
    return out


# --- rows ---------------------------------------------------------------------------------------------------

def _format_box(b: Box) -> str:
    return f"{b.xmin:g},{b.ymin:g},{b.xmax:g},{b.ymax:g},{b.category}"


def _parse_boxes(text: str, where: Path, line: int | None = None) -> tuple[Box, ...]:
    boxes = []
    at = f"line {line}: " if line is not None else ""
    for part in (p.strip() for p in (text or "").split(";")):
        if not part:
            continue
        items = part.split(",", 4)
        try:
            coords = [float(x) for x in items[:4]]
        except ValueError:
            coords = []
        # NaN/inf or inverted corners would reach the box mask as garbage (or crash int(floor(nan)))
        if len(coords) != 4 or not all(math.isfinite(c) for c in coords) or coords[0] > coords[2] \
                or coords[1] > coords[3]:
            raise AuditInputError(where, f"{at}bad box {part[:80]!r} (expected xmin,ymin,xmax,ymax[,category]: "
                                         "finite numbers with min <= max)")
        boxes.append(Box(*coords, category=items[4].strip() if len(items) > 4 and items[4].strip() else "Mass"))
    return tuple(boxes)


def condition_to_row(c: Condition) -> dict[str, str]:
    row = {"source_id": c.source_id or "", "view": c.view or "", "laterality": c.laterality or "",
           "birads": "" if c.birads is None else str(c.birads), "density": c.density or "",
           "findings": ";".join(c.findings), "boxes": ";".join(_format_box(b) for b in c.boxes)}
    row.update({k: v for k, v in c.extra})
    return row


def condition_from_row(row: dict[str, str], where: Path, line: int | None = None) -> Condition:
    """A conditions/manifest row → Condition. Labels are parsed strictly (audit.data.labels): a bad value is an
    error naming `where` and the line, never a silently different condition."""
    def text(key: str) -> str | None:
        value = (row.get(key) or "").strip()
        return value or None

    known = set(CONDITION_COLUMNS) | NON_LABEL_COLUMNS
    extra = tuple(sorted((k, v.strip()) for k, v in row.items()
                         if k and k not in known and isinstance(v, str) and v.strip() != ""))
    return Condition(birads=labels.parse_birads(row.get("birads"), where, "birads", line),
                     density=labels.parse_density(row.get("density"), where, "density", line),
                     view=text("view"), laterality=labels.parse_laterality(row.get("laterality"), where,
                                                                           "laterality", line),
                     findings=labels.split_findings(row.get("findings")),
                     boxes=_parse_boxes(row.get("boxes") or "", where, line), extra=extra,
                     source_id=text("source_id"))


def read_conditions_csv(path: str | Path) -> list[Condition]:
    path = Path(path)
    rows = read_csv_rows(path, "conditions CSV")
    return [condition_from_row(r, path, rows.line(i)) for i, r in enumerate(rows)]


def write_rows_csv(path: str | Path, rows: Sequence[dict[str, str]], first_columns: Sequence[str]) -> None:
    """Write rows atomically (temp file + rename); columns: `first_columns`, then the others sorted."""
    import os

    path = Path(path)
    others = sorted({k for r in rows for k in r} - set(first_columns))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(first_columns) + others, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
