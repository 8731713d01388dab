"""`--model PATH` → a Generator: a synth-audit checkpoint, a diffusers pipeline folder, or a folder of images.

Loaders are registered by name in `LOADERS` (the suite's one registry pattern, `audit.registry`); each entry
carries its `recognises(path)` predicate as meta. They are tried in `LOADER_ORDER`: generator.json (our LDMs),
model_index.json (diffusers pipeline), image files (FolderGenerator). Pickled weights are refused, whatever the
layout.
"""

from __future__ import annotations

from pathlib import Path

from audit.checkpoints import PICKLE_SUFFIXES, refuse_pickle
from audit.errors import AuditInputError
from audit.registry import NoParams, Registry, Runtime
from generators.base import Generator
from generators.checkpoint import GENERATOR_FILE, recover_interrupted_save


class CheckpointLoader:
    """A synth-audit LDM checkpoint folder (generator.json + safetensors)."""

    Params = NoParams

    def __init__(self, params: NoParams, runtime: Runtime):
        self.device = runtime.device

    def load(self, path: Path) -> Generator:
        from generators.ldm import LatentDiffusionGenerator

        return LatentDiffusionGenerator.load(path, self.device)


class PipelineLoader(CheckpointLoader):
    """A diffusers pipeline folder (save_pretrained), local files only."""

    def load(self, path: Path) -> Generator:
        from generators.diffusers_pipeline import DiffusersPipelineGenerator

        return DiffusersPipelineGenerator(path, self.device)


class FolderLoader(CheckpointLoader):
    """A folder of already generated images (+ optional manifest.csv)."""

    def load(self, path: Path) -> Generator:
        from generators.folder import FolderGenerator

        return FolderGenerator(path)


def _has_images(path: Path) -> bool:
    from audit.data.readers.folder import DEFAULT_MANIFEST, list_image_files

    return (path / DEFAULT_MANIFEST).is_file() or bool(list_image_files(path))


LOADERS: Registry = Registry("generator loader")
LOADERS.register("synth-audit-checkpoint", CheckpointLoader, "synth-audit checkpoint (generator.json)",
                 recognises=lambda p: (p / GENERATOR_FILE).is_file())
LOADERS.register("diffusers-pipeline", PipelineLoader, "diffusers pipeline folder (model_index.json)",
                 recognises=lambda p: (p / "model_index.json").is_file())
LOADERS.register("image-folder", FolderLoader, "folder of generated images", recognises=_has_images)
LOADER_ORDER = ("synth-audit-checkpoint", "diffusers-pipeline", "image-folder")


def load_generator(path: str | Path, device: str = "cpu") -> Generator:
    path = Path(path)
    recover_interrupted_save(path)
    if path.is_file():
        refuse_pickle(path)
        raise AuditInputError(path, "a model is a folder (synth-audit checkpoint, diffusers pipeline or images), "
                                    "not a file")
    if not path.is_dir():
        raise AuditInputError(path, "no such model folder")
    for name in LOADER_ORDER:
        if LOADERS.entry(name).meta["recognises"](path):
            return LOADERS.create(name, None, Runtime(device=device)).load(path)
    for candidate in sorted(path.iterdir()):
        if candidate.name.lower().endswith(PICKLE_SUFFIXES):
            refuse_pickle(candidate)
    raise AuditInputError(path, f"not a model: no {GENERATOR_FILE} (synth-audit checkpoint), no model_index.json "
                                "(diffusers pipeline) and no image files")
