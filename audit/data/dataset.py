"""The dataset API: records + a decoder + a cache → float32 [0, 1] arrays of one configured shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from audit.config import DataConfig, PreprocessConfig
from audit.data.cache import PreprocessCache, default_cache_dir
from audit.data.limits import check_declared_size
from audit.data.records import Record, SkippedFile
from audit.errors import AuditInputError


@dataclass
class Sample:
    image: np.ndarray  # float32 in [0, 1], shape = config shape
    record: Record
    boxes: np.ndarray  # (n, 4) xmin, ymin, xmax, ymax in output pixels (2D); (0, 4) otherwise


class Reader(Protocol):
    """A dataset layout. `scan` lists records (cheap: CSVs and stat); `decode` makes one image."""

    def scan(self, cfg: DataConfig) -> tuple[list[Record], list[SkippedFile]]: ...

    def decode(self, record: Record, pre: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]: ...


Decode = Callable[[Record, PreprocessConfig], tuple[np.ndarray, np.ndarray]]


@dataclass
class ImageDataset(Sequence[Sample]):
    name: str
    records: list[Record]
    decode: Decode
    preprocess: PreprocessConfig
    skipped: list[SkippedFile] = field(default_factory=list)
    cache: PreprocessCache | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.preprocess.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        record = self.records[index]
        image, boxes = self.load(record)
        return Sample(image=image, record=record, boxes=boxes)

    def load(self, record: Record) -> tuple[np.ndarray, np.ndarray]:
        """Decoded image + boxes for a record, through the cache. Raises AuditInputError naming the file."""
        if self.cache is not None:
            hit = self.cache.get(record)
            if hit is not None:
                return hit
        image, boxes = self.decode(record, self.preprocess)
        image = np.ascontiguousarray(image, dtype=np.float32)
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if image.shape != self.shape:
            raise AuditInputError(record.path, f"decoded to shape {image.shape}, expected {self.shape}")
        if self.cache is not None:
            self.cache.put(record, image, boxes)
        return image, boxes

    def subset(self, split: str | Iterable[str] | None = None, ids: Iterable[str] | None = None) -> "ImageDataset":
        """The records of some split(s) and/or ids, sharing decoder and cache."""
        splits = {split} if isinstance(split, str) else (set(split) if split is not None else None)
        wanted = set(ids) if ids is not None else None
        kept = [r for r in self.records
                if (splits is None or r.split in splits) and (wanted is None or r.id in wanted)]
        return ImageDataset(self.name, kept, self.decode, self.preprocess, list(self.skipped), self.cache)

    def iter_images(self, batch_size: int = 32, progress: str | None = None) -> Iterator[tuple[np.ndarray, list[Record]]]:
        """Stream (batch of images, their records); memory bounded by batch_size, not by the dataset."""
        from audit.progress import progress_bar

        bar = progress_bar(total=len(self), desc=progress) if progress else None
        for start in range(0, len(self), batch_size):
            records = self.records[start:start + batch_size]
            images = np.stack([self.load(r)[0] for r in records])
            if bar is not None:
                bar.update(len(records))
            yield images, records
        if bar is not None:
            bar.close()

    def stack(self, progress: str | None = None) -> np.ndarray:
        """All images as one array (N, *shape) — for small sets only."""
        out = np.empty((len(self), *self.shape), dtype=np.float32)
        i = 0
        for images, _ in self.iter_images(progress=progress):
            out[i:i + len(images)] = images
            i += len(images)
        return out


def open_dataset(cfg: DataConfig, use_cache: bool = True) -> ImageDataset:
    """Scan a dataset described by `cfg` with the reader it names."""
    from audit.data.readers import get_reader

    if cfg.root is None:
        raise AuditInputError(None, f"dataset '{cfg.name}' needs a root folder (--data-root)")
    if not cfg.root.is_dir():
        raise AuditInputError(cfg.root, "data root is not a folder")
    reader = get_reader(cfg.reader)
    records, skipped = reader.scan(cfg)
    return dataset_from_scan(cfg, records, skipped, reader.decode, use_cache)


def dataset_from_scan(cfg: DataConfig, records: list[Record], skipped: list[SkippedFile], decode: Decode,
                      use_cache: bool = True) -> ImageDataset:
    """The dataset of records a reader already listed (no second scan)."""
    if not records:
        detail = f" ({len(skipped)} files skipped, first: {skipped[0].reason})" if skipped else ""
        raise AuditInputError(cfg.root, f"no usable images found{detail}")
    # a shape set past the config's validation (e.g. a generator preset's) must not allocate a bomb either
    check_declared_size(cfg.root, cfg.preprocess.shape, "configured image shape")
    cache = PreprocessCache(cfg.cache_dir or default_cache_dir(), cfg.preprocess_key()) if use_cache else None
    return ImageDataset(cfg.name, records, decode, cfg.preprocess, skipped, cache)
