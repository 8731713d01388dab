"""In-memory labelled image sets for the utility tests: phantom-like images with a planted lesion label."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.config import PreprocessConfig
from audit.data.dataset import ImageDataset
from audit.data.records import Labels, Record
from tests.image_factory import structured_images


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread for the module (the machine is shared; OpenMP threads spin against other jobs).
    Test modules import it to use it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def planted_lesion_images(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Organ-like images; half of them (alternating) carry a bright disc (the planted 'lesion'). (images, labels)"""
    images = structured_images(n, shape, seed)
    labels = np.arange(n) % 2
    rng = np.random.default_rng(seed + 1000)
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    for i in np.flatnonzero(labels):
        centre = rng.uniform(0.35, 0.65, len(shape)) * np.array(shape)
        radius = shape[0] / 6
        disc = sum((g - c) ** 2 for g, c in zip(grid, centre)) < radius ** 2
        images[i][disc] = 1.0
    return images.astype(np.float32), labels


def memory_dataset(images: np.ndarray, labels: list[Labels], name: str, split: str = "train",
                   images_per_patient: int = 2, source: bool = False) -> ImageDataset:
    """An ImageDataset over arrays (no files): record i → images[i]; `images_per_patient` consecutive images
    share a patient."""
    records = [Record(id=f"{name}{i:04d}", patient_id=f"{name}-p{i // images_per_patient:03d}", split=split,
                      modality="OT", path=f"/nonexistent/{name}/{i}.png", labels=lab,
                      source_id=f"src{i}" if source else None)
               for i, lab in enumerate(labels)]
    lookup = {r.id: images[i] for i, r in enumerate(records)}

    def decode(record, pre):
        return lookup[record.id], np.zeros((0, 4), np.float32)

    return ImageDataset(name, records, decode, PreprocessConfig(shape=tuple(images.shape[1:])))


def lesion_labels(values) -> list[Labels]:
    return [Labels(extra=(("lesion", str(int(v))),)) for v in values]
