"""FolderGenerator: images somebody already generated (any GAN or external model), audited like a model.

`sample` returns the folder's images in order (image i of the folder for index i), or the files the conditions
name (`Condition.ref`, set by `default_conditions` from the manifest), so the images stay paired with the
conditions they were made from. There is no randomness: the seed is ignored, and asking for more images than
the folder holds is an error.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from audit.config import PreprocessConfig
from audit.data.imageio import read_image
from audit.data.readers.folder import DEFAULT_MANIFEST, decode_any, scan_folder
from audit.data.records import Record
from audit.errors import AuditInputError
from generators.base import Condition
from generators.checkpoint import folder_hash
from generators.conditions import condition_from_row


class FolderGenerator:
    kind = "folder"

    def __init__(self, folder: str | Path, manifest: str | None = None, shape: Sequence[int] | None = None):
        self.folder = Path(folder)
        self.records, self.skipped = scan_folder(self.folder, manifest)
        if not self.records:
            raise AuditInputError(self.folder, "no images listed in the manifest exist")
        manifest_path = self.folder / (manifest or DEFAULT_MANIFEST)
        self.has_manifest = manifest_path.is_file()
        rows = self._manifest_rows(manifest_path) if self.has_manifest else {}
        self.shape = tuple(shape) if shape else tuple(read_image(self.records[0].path).shape)
        self._pre = PreprocessConfig(shape=self.shape)
        self._conditions = [self._condition(r, rows.get(self._rel(r))) for r in self.records]
        self._by_ref = {self._rel(r): r for r in self.records}

    def _rel(self, record: Record) -> str:
        return Path(record.path).relative_to(self.folder).as_posix()

    def _manifest_rows(self, path: Path) -> dict[str, dict[str, str]]:
        with open(path, newline="") as fh:
            return {row["file"].strip(): row for row in csv.DictReader(fh) if row.get("file")}

    def _condition(self, record: Record, row: dict[str, str] | None) -> Condition:
        rel = self._rel(record)
        if row is None:
            return Condition(ref=rel)
        c = condition_from_row({k: v for k, v in row.items() if k not in ("seed", "index")}, self.folder)
        return replace(c, ref=rel)

    def __len__(self) -> int:
        return len(self.records)

    def default_conditions(self, n: int, seed: int = 0, first_index: int = 0) -> list[Condition]:
        """The folder's own images (with their manifest's conditions), in order."""
        self._check_range(first_index, n)
        return self._conditions[first_index:first_index + n]

    def sample(self, conditions: Sequence[Condition], seed: int = 0, first_index: int = 0) -> np.ndarray:
        out = np.empty((len(conditions), *self.shape), np.float32)
        for j, c in enumerate(conditions):
            if c.ref is not None:
                if c.ref not in self._by_ref:
                    raise AuditInputError(self.folder / c.ref, "not an image of this folder")
                record = self._by_ref[c.ref]
            else:
                self._check_range(first_index + j, 1)
                record = self.records[first_index + j]
            out[j] = decode_any(record, self._pre)[0]
        return out

    def _check_range(self, start: int, n: int) -> None:
        if start + n > len(self.records):
            raise AuditInputError(self.folder, f"holds {len(self.records)} images; {start + n} were asked for")

    def describe(self) -> dict:
        return {"kind": self.kind, "folder": str(self.folder), "n_images": len(self.records),
                "has_manifest": self.has_manifest, "shape": list(self.shape),
                "note": "pre-made images: sample() returns them in order; the seed is ignored",
                "checkpoint_hash": folder_hash(self.folder, exclude=())}

    def denoiser(self) -> None:
        return None  # no model behind the images: white-box attacks are skipped
