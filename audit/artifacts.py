"""Cached artefacts that depend only on the data (a re-identification attacker, a domain encoder, the real
set's feature statistics, real-vs-real nulls): built once, shared by every model audited on that data.

An artefact is a folder under ``<cache>/artifacts/<kind>/<key>/``, where the key hashes everything it depends on:
the data's fingerprint (record ids, labels and file identities — `stat`, never a read — plus the preprocessing)
and the builder's configuration. Folders are built in a scratch folder next to their final place and renamed
in, so a crash never leaves a half artefact under the final name; two processes building the same artefact at
once both finish, and the first rename wins (the loser's copy is discarded).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

from audit.data.cache import default_cache_dir, file_identity
from audit.data.records import Record


def stable_hash(payload: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of `payload` (sorted keys; Paths and other objects as strings)."""
    text = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def records_fingerprint(records: Iterable[Record], extra: Any = None) -> str:
    """What a set of images is: ids, patients, splits, labels and file identities (path, size, mtime)."""
    rows = []
    for record in records:
        try:
            identity = file_identity(record.path)
        except OSError:
            identity = f"{record.path}|missing"
        rows.append([record.id, record.patient_id, record.split, record.source_id, record.view, record.laterality,
                     record.labels.as_dict(), identity])
    return stable_hash({"records": rows, "extra": extra}, length=32)


def dataset_fingerprint(dataset) -> str:
    """Fingerprint of an `ImageDataset`: its records and its preprocessing (shape, crop, intensity...)."""
    return records_fingerprint(dataset.records, extra=dataset.preprocess.model_dump(mode="json"))


class ArtifactCache:
    """Folders keyed by (kind, hash of what they depend on). `hits`/`builds` count what happened (tests use
    them instead of the clock)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.hits = 0
        self.builds = 0

    def path(self, kind: str, key: dict[str, Any] | str) -> Path:
        digest = key if isinstance(key, str) else stable_hash(key, length=24)
        return self.root / "artifacts" / kind / digest

    def get(self, kind: str, key: dict[str, Any] | str) -> Path | None:
        folder = self.path(kind, key)
        if (folder / ".complete").is_file():
            self.hits += 1
            return folder
        return None

    def get_or_build(self, kind: str, key: dict[str, Any] | str, build: Callable[[Path], None]) -> Path:
        """The artefact's folder; `build(scratch_folder)` writes it when missing. The key is stored beside it
        (`key.json`) so a cache folder says what it holds."""
        hit = self.get(kind, key)
        if hit is not None:
            return hit
        final = self.path(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            build(scratch)
            (scratch / "key.json").write_text(json.dumps(key, indent=2, sort_keys=True, default=str))
            (scratch / ".complete").write_text("")
            try:
                os.rename(scratch, final)
            except OSError:  # another process finished first (final exists and is not empty): keep theirs
                if not (final / ".complete").is_file():
                    raise
                shutil.rmtree(scratch, ignore_errors=True)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        self.builds += 1
        return final
