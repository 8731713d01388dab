"""`--model PATH` → a Generator: a synth-audit checkpoint, a diffusers pipeline folder, or a folder of images.

Recognised by a marker file, in this order: generator.json (our LDMs), model_index.json (diffusers pipeline),
image files (FolderGenerator). Pickled weights are refused, whatever the layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from audit.checkpoints import PICKLE_SUFFIXES, refuse_pickle
from audit.errors import AuditInputError
from generators.base import Generator
from generators.checkpoint import GENERATOR_FILE, recover_interrupted_save


def _ldm(path: Path, device: str) -> Generator:
    from generators.ldm import LatentDiffusionGenerator

    return LatentDiffusionGenerator.load(path, device)


def _pipeline(path: Path, device: str) -> Generator:
    from generators.diffusers_pipeline import DiffusersPipelineGenerator

    return DiffusersPipelineGenerator(path, device)


def _folder(path: Path, device: str) -> Generator:
    from generators.folder import FolderGenerator

    return FolderGenerator(path)


def _has_images(path: Path) -> bool:
    from audit.data.readers.folder import DEFAULT_MANIFEST, list_image_files

    return (path / DEFAULT_MANIFEST).is_file() or bool(list_image_files(path))


LOADERS: tuple[tuple[str, Callable[[Path], bool], Callable[[Path, str], Generator]], ...] = (
    ("synth-audit checkpoint", lambda p: (p / GENERATOR_FILE).is_file(), _ldm),
    ("diffusers pipeline", lambda p: (p / "model_index.json").is_file(), _pipeline),
    ("image folder", _has_images, _folder),
)


def load_generator(path: str | Path, device: str = "cpu") -> Generator:
    path = Path(path)
    recover_interrupted_save(path)
    if path.is_file():
        refuse_pickle(path)
        raise AuditInputError(path, "a model is a folder (synth-audit checkpoint, diffusers pipeline or images), "
                                    "not a file")
    if not path.is_dir():
        raise AuditInputError(path, "no such model folder")
    for _, recognises, load in LOADERS:
        if recognises(path):
            return load(path, device)
    for candidate in sorted(path.iterdir()):
        if candidate.name.lower().endswith(PICKLE_SUFFIXES):
            refuse_pickle(candidate)
    raise AuditInputError(path, f"not a model: no {GENERATOR_FILE} (synth-audit checkpoint), no model_index.json "
                                "(diffusers pipeline) and no image files")
