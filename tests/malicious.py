"""Hostile files a user could be handed: pickles that run code when loaded, in every shape a model or weights file
takes, and configs whose YAML would build objects or explode.

Each payload, if it ever ran, writes `marker` (a file in the test's temp folder) — so "the marker never appears"
is the proof that nothing was unpickled, whatever the command printed. Deterministic: no randomness in any file.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
from pathlib import Path
from typing import Callable

import numpy as np


class MarkerPayload:
    """Unpickling this object calls builtins.exec on code that creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('unpickled')",))


def pickle_bytes(marker: Path, protocol: int = 4) -> bytes:
    return pickle.dumps({"state_dict": {"weight": MarkerPayload(marker)}}, protocol=protocol)


def torch_zip_bytes(marker: Path) -> bytes:
    """What torch.save writes (a zip holding data.pkl), with the payload inside."""
    import torch

    buffer = io.BytesIO()
    torch.save({"state_dict": {"weight": MarkerPayload(marker)}}, buffer)
    return buffer.getvalue()


def torch_legacy_bytes(marker: Path) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({"weight": MarkerPayload(marker)}, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


# name → (file name, bytes builder): every single-file form a weights file can take
WEIGHT_FILE_FORMS: dict[str, tuple[str, Callable[[Path], bytes]]] = {
    "pickle.pkl": ("weights.pkl", pickle_bytes),
    "pickle.pt": ("weights.pt", pickle_bytes),
    "pickle.pth": ("weights.pth", pickle_bytes),
    "pickle.bin": ("pytorch_model.bin", pickle_bytes),
    "pickle.ckpt": ("model.ckpt", pickle_bytes),
    "pickle-protocol0.pkl": ("weights0.pkl", lambda m: pickle_bytes(m, protocol=0)),
    "torch-zip.pt": ("model.pt", torch_zip_bytes),
    "torch-zip.bin": ("diffusion_pytorch_model.bin", torch_zip_bytes),
    "torch-legacy.pt": ("legacy.pt", torch_legacy_bytes),
    "pickle-as.safetensors": ("model.safetensors", pickle_bytes),
    "pickle-protocol0-as.safetensors": ("model0.safetensors", lambda m: pickle_bytes(m, protocol=0)),
    "torch-zip-as.safetensors": ("zipped.safetensors", torch_zip_bytes),
}


def write_weight_file(folder: Path, form: str, marker: Path) -> Path:
    name, build = WEIGHT_FILE_FORMS[form]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(build(marker))
    return path


# --- folders ----------------------------------------------------------------------------------------------------

def write_tiny_pipeline(folder: Path, safe: bool = True) -> Path:
    """A real (tiny, untrained) diffusers DDPM pipeline folder."""
    import torch
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), add_attention=False)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained(
        folder, safe_serialization=safe)
    return folder


def pipeline_with_pickled_weights(folder: Path, marker: Path, form: str) -> Path:
    """A diffusers pipeline folder whose UNet weights are the payload: as the .bin diffusers would pick up
    (`bin`), or as a pickle under the .safetensors name (`renamed`)."""
    write_tiny_pipeline(folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    if form == "bin":
        (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(torch_zip_bytes(marker))
    else:
        weights.write_bytes(pickle_bytes(marker))
    return folder


def pipeline_with_custom_code(folder: Path, marker: Path) -> Path:
    """A pipeline folder asking for its own Python code (`pipeline.py`, run on import) and for a component class
    from an arbitrary module — diffusers would import them only with trust_remote_code / custom_pipeline."""
    write_tiny_pipeline(folder)
    (folder / "pipeline.py").write_text(f"open({str(marker)!r}, 'w').write('imported')\n"
                                        "from diffusers import DDPMPipeline as EvilPipeline\n")
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = ["pipeline", "EvilPipeline"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def checkpoint_with_swapped_weights(checkpoint: Path, target: Path, relative: str, payload: bytes) -> Path:
    """A copy of a real checkpoint folder with one weights file replaced by `payload` (name kept)."""
    shutil.copytree(checkpoint, target)
    (target / relative).write_bytes(payload)
    return target


def npy_object_array(path: Path, marker: Path) -> Path:
    """A .npy holding a pickled object array (np.save with allow_pickle=True)."""
    array = np.empty(1, dtype=object)
    array[0] = MarkerPayload(marker)
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=True)
    return path


def nifti_with_pickle_extension(path: Path, marker: Path) -> Path:
    """A valid NIfTI volume carrying the payload in a 'pypickle' (code 16) header extension."""
    import nibabel as nib
    from nibabel.nifti1 import Nifti1Extension

    volume = np.linspace(0, 1, 8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    image = nib.Nifti1Image(volume, np.eye(4))
    image.header.extensions.append(Nifti1Extension(16, pickle_bytes(marker)))
    nib.save(image, str(path))
    return path


# --- configs ----------------------------------------------------------------------------------------------------

def yaml_object_tags(marker: Path) -> dict[str, str]:
    """YAML documents whose tags would run code under yaml.load / yaml.unsafe_load."""
    touch = f"open({str(marker)!r}, 'w').write('yaml')"
    return {
        "python-object-apply": f"name: x\nreader: folder\npreprocess: !!python/object/apply:builtins.exec [\"{touch}\"]\n",
        "python-object-new": "name: !!python/object/new:os.system [\"true\"]\nreader: folder\n",
        "python-name": "name: !!python/name:os.system\nreader: folder\n",
        "python-module": "name: !!python/module:os\nreader: folder\n",
        "top-level-apply": f"!!python/object/apply:builtins.exec [\"{touch}\"]\n",
    }


def yaml_alias_bomb(levels: int = 9, width: int = 9) -> str:
    """'Billion laughs': each level lists the previous one `width` times; width**levels strings once expanded."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    lines.append(f"name: *l{levels - 1}\nreader: folder\npreprocess: {{shape: [8, 8]}}")
    return "\n".join(lines) + "\n"
