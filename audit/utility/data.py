"""Labelled image sets for a utility classifier: images of one or more `ImageDataset`s, their class index under
a target, and the patient each belongs to (the unit the test-set bootstrap resamples).

An image whose labels do not define the target is left out and counted (`n_unlabelled`), never silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from audit.data.records import Record


@dataclass
class LabelledSet:
    name: str
    items: list[tuple[object, Record]]  # (ImageDataset it loads from, record)
    y: np.ndarray  # (N,) int64 class index
    n_classes: int
    n_unlabelled: int = 0
    parts: dict[str, int] = field(default_factory=dict)  # images per source set (mixed: real + synthetic)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> list[str]:
        return [r.id for _, r in self.items]

    @property
    def patients(self) -> np.ndarray:
        return np.array([r.patient_id for _, r in self.items], dtype=object)

    def class_counts(self) -> list[int]:
        return np.bincount(self.y, minlength=self.n_classes).astype(int).tolist()

    def present_classes(self) -> list[int]:
        return [c for c, count in enumerate(self.class_counts()) if count > 0]

    def summary(self, class_names: Sequence[str]) -> dict:
        """Sizes and prevalences (what the report states beside every AUC)."""
        counts = self.class_counts()
        n = max(len(self), 1)
        return {"images": len(self), "patients": int(len(set(self.patients.tolist()))),
                "unlabelled_images_left_out": int(self.n_unlabelled),
                "class_counts": dict(zip(class_names, counts)),
                "prevalence": {c: round(k / n, 4) for c, k in zip(class_names, counts)},
                **({"parts": dict(self.parts)} if self.parts else {})}

    def load(self, index: int) -> np.ndarray:
        dataset, record = self.items[index]
        return dataset.load(record)[0]

    def load_many(self, indices: Sequence[int]) -> np.ndarray:
        return np.stack([self.load(int(i)) for i in indices]).astype(np.float32, copy=False)


def labelled_set(dataset, target, name: str) -> LabelledSet:
    """The images of `dataset` that carry `target`'s label, with their class index."""
    items, labels, missing = [], [], 0
    for record in dataset.records:
        label = target.label_of(record.labels)
        if label is None:
            missing += 1
            continue
        items.append((dataset, record))
        labels.append(int(label))
    return LabelledSet(name, items, np.asarray(labels, dtype=np.int64), len(target.classes), missing)


def concatenate(name: str, *sets: LabelledSet) -> LabelledSet:
    """One training set from several (the mixed real + synthetic arm)."""
    n_classes = {s.n_classes for s in sets}
    if len(n_classes) != 1:
        raise ValueError("sets of different targets cannot be joined")
    return LabelledSet(name, [it for s in sets for it in s.items], np.concatenate([s.y for s in sets]),
                       n_classes.pop(), sum(s.n_unlabelled for s in sets), {s.name: len(s) for s in sets})
