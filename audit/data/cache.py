"""Persistent cache of preprocessed images.

Keyed by file identity (absolute path, size, modification time: `stat`, never a read of the file) + the record's
labels (they drive flips and boxes) + the preprocessing config, so a second pass never decodes a DICOM again and
any change to the file or the config misses the cache. Entries hold only pixels and boxes; names are hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from audit.data.records import Record


def default_cache_dir() -> Path:
    env = os.environ.get("SYNTH_AUDIT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "synth-audit"


def file_identity(path: str | Path) -> str:
    st = os.stat(path)
    return f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}"


class PreprocessCache:
    """One folder per preprocessing config; one .npz per (file identity, record)."""

    def __init__(self, root: str | Path, namespace: str):
        self.folder = Path(root) / "preprocessed" / namespace
        self.hits = 0
        self.misses = 0

    def key(self, record: Record) -> str:
        payload = json.dumps([file_identity(record.path), record.as_dict()], sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()

    def get(self, record: Record) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            path = self.folder / f"{self.key(record)}.npz"
        except OSError:
            return None  # the source file is gone: let the decoder report it
        if not path.exists():
            self.misses += 1
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                out = z["image"], z["boxes"]
        except Exception:  # a torn or foreign cache entry is a miss, not an error
            self.misses += 1
            return None
        self.hits += 1
        return out

    def put(self, record: Record, image: np.ndarray, boxes: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / f"{self.key(record)}.npz"
        # atomic: a crash mid-write never leaves a half entry under the final name
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, image=image, boxes=boxes)
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
