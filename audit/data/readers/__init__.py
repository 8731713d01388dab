"""Dataset readers by name. Each is imported only when used (the DICOM stack is not needed for NIfTI)."""

from __future__ import annotations

import importlib

_READERS = {
    "vindr": "audit.data.readers.vindr:VinDrReader",
    "nifti": "audit.data.readers.nifti:NiftiReader",
    "folder": "audit.data.readers.folder:FolderReader",
}


def get_reader(name: str):
    module, cls = _READERS[name].split(":")
    return getattr(importlib.import_module(module), cls)()


def reader_names() -> list[str]:
    return sorted(_READERS)
