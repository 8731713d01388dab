"""Checkpoints as a folder: `config.json` (what the weights are) + `model.safetensors` (the tensors).

The config travels with the weights, so a checkpoint can be rebuilt without the code that trained it guessing
hyper-parameters. Loading checks, in order: the folder and both files exist; the file is not a pickle (pickles
execute code when loaded, so they are refused outright, never "tried"); `config.json` names the expected kind
and format; the weights' SHA-256 matches the one recorded at save time (catches truncated or swapped files);
the safetensors header parses. Every failure is an `AuditInputError` naming the file.

Generic on purpose: any component (encoders, DeepSSIM, generators) stores `kind` + a JSON-able config + a
state dict. Nothing here imports a model class.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from audit.errors import AuditInputError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1

# First bytes of the formats we refuse: raw pickle (protocol 2-5 starts with 0x80) and torch.save's zip archive.
_PICKLE_MAGIC = b"\x80"
_ZIP_MAGIC = b"PK\x03\x04"
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def looks_like_pickle(path: str | Path) -> bool:
    """True for files torch.save / pickle would write (checked on content, not only on the suffix): protocol 2+
    pickles (0x80), torch.save's zip archives, and protocol 0/1 pickles, which have no magic number and are
    recognised by parsing their first opcodes (pickletools only reads opcodes; nothing is executed)."""
    with open(path, "rb") as fh:
        head = fh.read(_TEXT_PICKLE_PROBE)
    if head.startswith(_PICKLE_MAGIC) or head.startswith(_ZIP_MAGIC):
        return True
    return not looks_like_safetensors(path) and _parses_as_text_pickle(head)


_TEXT_PICKLE_PROBE = 1 << 16


def _parses_as_text_pickle(head: bytes) -> bool:
    """Protocol 0/1 opcodes from the first byte on: a STOP reached, or at least 4 opcodes before the probe ends."""
    import io
    import pickletools

    if not head or head[:1] not in b"(cSIVLFGN]})TUXJKMPQ":  # opcodes a protocol 0/1 pickle starts with
        return False
    parsed = 0
    try:
        for opcode, _, _ in pickletools.genops(io.BytesIO(head)):
            parsed += 1
            if opcode.name == "STOP":
                return True
    except (ValueError, UnicodeDecodeError, TypeError):  # an invalid opcode, or the probe ended mid-argument
        pass
    return parsed >= 4


def looks_like_safetensors(path: str | Path) -> bool:
    """A safetensors file starts with a little-endian u64 header length followed by a JSON object."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 0 < header_len <= size - 8 and head[8:9] == b"{"


def refuse_pickle(path: str | Path) -> None:
    """Pickled weights can run code when loaded: refuse a file that is one by content, or that carries a pickle
    suffix without being safetensors. Paths that are not files pass (their absence is reported elsewhere)."""
    path = Path(path)
    if not path.is_file():
        return
    if looks_like_pickle(path) or (path.suffix.lower() in PICKLE_SUFFIXES and not looks_like_safetensors(path)):
        raise AuditInputError(path, "pickled weights are refused (they can run code when loaded); "
                                    "convert them to safetensors (safetensors.torch.save_file)")


def load_safetensors_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from one safetensors file; pickles and truncated files are clean errors."""
    path = Path(path)
    if not path.is_file():
        raise AuditInputError(path, "weights file not found")
    refuse_pickle(path)
    if not looks_like_safetensors(path):
        raise AuditInputError(path, "not a safetensors file (or truncated)")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise AuditInputError(path, f"unreadable safetensors file, truncated or corrupt ({err})") from None


def save_checkpoint(folder: str | Path, kind: str, config: dict[str, Any],
                    state_dict: dict[str, torch.Tensor], extra: dict[str, Any] | None = None) -> Path:
    """Write `folder/model.safetensors` then `folder/config.json` (config last: a folder with a config is complete)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise AuditInputError(folder, "checkpoint path exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / WEIGHTS_FILE
    # safetensors wants contiguous tensors that do not share memory
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    save_file(tensors, str(weights))
    meta = {"kind": kind, "format_version": FORMAT_VERSION, "weights_file": WEIGHTS_FILE,
            "weights_sha256": file_sha256(weights), "config": config}
    if extra:
        meta["extra"] = extra
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return folder


def read_checkpoint_meta(folder: str | Path, kind: str) -> dict[str, Any]:
    """The validated `config.json` of a checkpoint of `kind` (without loading tensors)."""
    folder = Path(folder)
    if folder.is_file():
        refuse_pickle(folder)
        raise AuditInputError(folder, f"a checkpoint is a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}")
    if not folder.is_dir():
        raise AuditInputError(folder, "checkpoint folder not found")
    config_path = folder / CONFIG_FILE
    if not config_path.is_file():
        raise AuditInputError(folder, f"not a checkpoint: {CONFIG_FILE} is missing")
    try:
        meta = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AuditInputError(config_path, f"unreadable checkpoint config ({err})") from None
    if not isinstance(meta, dict) or "kind" not in meta or "config" not in meta:
        raise AuditInputError(config_path, "not a synth-audit checkpoint config (no 'kind'/'config')")
    if meta["kind"] != kind:
        raise AuditInputError(folder, f"checkpoint is a '{meta['kind']}', expected a '{kind}'")
    if meta.get("format_version") != FORMAT_VERSION:
        raise AuditInputError(config_path, f"unsupported checkpoint format_version {meta.get('format_version')!r}")
    return meta


def load_checkpoint(folder: str | Path, kind: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, state_dict) of a checkpoint of `kind`; every inconsistency is an AuditInputError."""
    folder = Path(folder)
    meta = read_checkpoint_meta(folder, kind)
    weights = folder / meta.get("weights_file", WEIGHTS_FILE)
    if not weights.is_file():
        raise AuditInputError(weights, "checkpoint weights file is missing")
    refuse_pickle(weights)
    expected = meta.get("weights_sha256")
    if expected and file_sha256(weights) != expected:
        raise AuditInputError(weights, "weights do not match the checksum in config.json (truncated or replaced)")
    return meta["config"], load_safetensors_file(weights)


def load_state_strict(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], where: str | Path) -> None:
    """`module.load_state_dict(strict=True)`, with missing/unexpected keys or shape mismatches as clean errors."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing tensors (first: {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (first: {unexpected[0]})")
        if wrong_shape:
            k = wrong_shape[0]
            parts.append(f"shape mismatch for {k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}")
        raise AuditInputError(where, "weights do not fit the model: " + "; ".join(parts))
    module.load_state_dict(state_dict, strict=True)
