"""Generators: what makes synthetic images, behind one protocol (`generators.base.Generator`).

    from generators import load_generator, Condition
    gen = load_generator("ckpt/")                 # LDM checkpoint, diffusers pipeline folder, or image folder
    images = gen.sample(gen.default_conditions(8, seed=0), seed=0)   # (8, *shape) float32 in [0, 1]
    gen.describe()                                # kind, resolved config, checkpoint hash
    gen.denoiser()                                # white-box access (None for an image folder)

Everything loads on first use, so `audit --help` does not import torch, diffusers or MONAI.
"""

_LAZY = {"Condition": "generators.base", "Denoiser": "generators.base", "Generator": "generators.base",
         "image_seed": "generators.base", "load_generator": "generators.loading",
         "LDM2D": "generators.ldm", "LDM3D": "generators.ldm", "LatentDiffusionGenerator": "generators.ldm",
         "FolderGenerator": "generators.folder", "DiffusersPipelineGenerator": "generators.diffusers_pipeline",
         "GeneratorConfig": "generators.config", "load_generator_config": "generators.config",
         "train_from_dataset": "generators.training", "generate_to_folder": "generators.writer"}

__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'generators' has no attribute {name!r}")
