"""What both phantom makers share: the summary they return, the patient split, per-patient random streams."""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np


@dataclass(frozen=True)
class PhantomSummary:
    """What a phantom writer made. Counts are plain dicts so they print and serialise as they are."""

    kind: str  # "mammo" | "brain3d"
    out: Path
    seed: int
    n_patients: int
    n_images: int  # images (mammo) or volumes (brain3d)
    images_per_split: dict[str, int]
    patients_per_split: dict[str, int]
    label_counts: dict[str, dict[str, int]] = field(default_factory=dict)  # e.g. {"breast_density": {...}}
    files: tuple[str, ...] = ()  # the CSV/manifest files written, relative to `out`

    def __str__(self) -> str:
        splits = ", ".join(f"{name} {n}" for name, n in self.patients_per_split.items())
        unit = "images" if self.kind == "mammo" else "volumes"
        return (f"{self.kind} phantom: {self.n_images} {unit} of {self.n_patients} patients ({splits}), "
                f"seed {self.seed}, in {self.out}")


def check_arguments(patients: int, test_fraction: float, seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(patients, (int, np.integer)) or patients < 1:
        raise ValueError(f"patients must be a positive integer, got {patients!r}")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1], got {test_fraction!r}")


def patient_rng(seed: int, kind: str, patient: int, stream: str = "anatomy") -> np.random.Generator:
    """An independent random stream per (seed, kind, patient, purpose): adding patients or reordering the
    work never changes an existing patient, and the views of one patient can draw from a shared stream."""
    tag = [ord(ch) for ch in f"{kind}/{stream}"]
    return np.random.default_rng([int(seed), int(patient) + 1, *tag])  # patient -1 = streams of the whole set


def split_patients(n_patients: int, test_fraction: float, seed: int, names: tuple[str, str],
                   kind: str) -> list[str]:
    """Split name per patient (index order). Split by patient, never by image, so no patient straddles splits.

    round(fraction × n) test patients; with 0 < fraction < 1 and n ≥ 2 both splits get at least one patient.
    """
    train_name, test_name = names
    n_test = int(round(test_fraction * n_patients))
    if 0.0 < test_fraction < 1.0 and n_patients >= 2:
        n_test = min(max(n_test, 1), n_patients - 1)
    order = patient_rng(seed, kind, -1, "split").permutation(n_patients)
    test = set(order[:n_test].tolist())
    return [test_name if i in test else train_name for i in range(n_patients)]


def balanced_choice(n_patients: int, options: Sequence, seed: int, kind: str, stream: str) -> list:
    """Assign options to patients in a shuffled round-robin: every option occurs once any len(options)
    patients exist (tests rely on that, e.g. both photometric interpretations in every set of ≥ 5)."""
    order = patient_rng(seed, kind, -1, stream).permutation(n_patients)
    slot = np.empty(n_patients, dtype=int)
    slot[order] = np.arange(n_patients)
    return [options[slot[i] % len(options)] for i in range(n_patients)]


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def count(values: Iterable) -> dict[str, int]:
    return dict(sorted(Counter(str(v) for v in values).items()))


def empty_output_folder(out: str | Path) -> Path:
    """The folder a phantom is written into: new or empty, never someone's data."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: not empty; the phantom writes into an empty (or new) folder")
    out.mkdir(parents=True, exist_ok=True)
    return out
