"""Checkpoint folders: JSON configs + safetensors weights, written atomically; never pickle.

A checkpoint is a folder. It is written next to its final place and swapped in with renames, so an interrupted
save leaves the previous checkpoint intact. Loading wraps every library error into an `AuditInputError` naming
the file, so a truncated or foreign checkpoint is one line and exit code 2.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import save_file

from audit.checkpoints import load_safetensors_file, refuse_pickle
from audit.errors import AuditInputError

GENERATOR_FILE = "generator.json"
FORMAT = "synth-audit-generator"


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise AuditInputError(path, "missing from the checkpoint") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AuditInputError(path, f"not a readable JSON file ({err})") from None


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise AuditInputError(path, "missing from the checkpoint")
    return load_safetensors_file(path)


def save_module(module: torch.nn.Module, config: dict, folder: Path) -> None:
    """A non-diffusers component (MONAI nets): folder/config.json + folder/model.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", config)
    save_file({k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()},
              str(folder / "model.safetensors"))


def load_module(folder: Path, build: Callable[[dict], torch.nn.Module]) -> torch.nn.Module:
    config = read_json(folder / "config.json")
    try:
        module = build(config)
    except (TypeError, ValueError, KeyError) as err:
        raise AuditInputError(folder / "config.json", f"config does not describe this component ({err})") from None
    state = load_tensors(folder / "model.safetensors")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AuditInputError(folder / "model.safetensors", f"weights do not fit the config ({first})") from None
    return module.eval()


def load_diffusers(cls, folder: Path):
    """A diffusers component from a local save_pretrained folder: offline, safetensors only."""
    if not (folder / "config.json").is_file():
        raise AuditInputError(folder / "config.json", "missing from the checkpoint")
    if not (folder / "diffusion_pytorch_model.safetensors").is_file():
        refuse_pickle(folder / "diffusion_pytorch_model.bin")
        raise AuditInputError(folder / "diffusion_pytorch_model.safetensors", "missing from the checkpoint")
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its key lists go to stderr; we report one line instead
    try:
        model, info = cls.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                          low_cpu_mem_usage=False, output_loading_info=True)
    except Exception as err:  # diffusers/safetensors raise many types for a bad file
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AuditInputError(folder, f"cannot load {cls.__name__}: truncated or foreign weights ({first})") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)
    # diffusers initialises missing weights at random and only warns: a foreign file must be an error instead
    problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if problems:
        kind, keys = next(iter(problems.items()))
        raise AuditInputError(folder / "diffusion_pytorch_model.safetensors",
                              f"weights do not fit {cls.__name__} ({len(keys)} {kind.replace('_', ' ')}, "
                              f"e.g. {keys[0]})")
    return model.eval()


# written by diffusers into config.json: where a model was loaded from and which library version saved it —
# neither changes the model, so neither may change its hash
VOLATILE_CONFIG_KEYS = ("_name_or_path", "_diffusers_version")


def folder_hash(folder: Path, exclude: tuple[str, ...] = ("training_state",)) -> str:
    """sha256 over every file's relative path and content (the model, not its resumable training state)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel.split("/")[0] in exclude or path.name.startswith("."):
            continue
        digest.update(rel.encode() + b"\0")
        if path.name == "config.json":
            try:
                config = {k: v for k, v in json.loads(path.read_text()).items() if k not in VOLATILE_CONFIG_KEYS}
                digest.update(json.dumps(config, sort_keys=True).encode())
                continue
            except (ValueError, AttributeError, UnicodeDecodeError):
                pass  # not a JSON object: hash the bytes
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """Yield a scratch folder; on success it replaces `final` (old copy removed only after the swap)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.with_name(f".{final.name}.partial")
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        yield scratch
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(scratch, final)
    shutil.rmtree(old, ignore_errors=True)


def recover_interrupted_save(final: Path) -> None:
    """A crash between the two renames of atomic_folder leaves only `.name.old`: put it back."""
    final = Path(final)
    old = final.with_name(f".{final.name}.old")
    if not final.exists() and old.exists():
        os.replace(old, final)


# --- optimizer state as safetensors + JSON --------------------------------------------------------------------

def save_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    save_file(tensors, str(folder / "optimizer.safetensors"))
    write_json(folder / "optimizer.json", {"param_groups": state["param_groups"], "scalars": scalars})


def load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    tensors = load_tensors(folder / "optimizer.safetensors")
    meta = read_json(folder / "optimizer.json")
    state: dict[int, dict[str, Any]] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as err:
        raise AuditInputError(folder, f"optimizer state does not fit the model ({err})") from None
