"""Read a model weights file safely and name the file in every error.

``.safetensors`` files are checked (header length against the file size, header JSON, tensor
extents) before safetensors reads them; anything else is a PyTorch checkpoint read with
``torch.load(weights_only=True)``, which refuses pickled code. The state dict is unwrapped
(``state_dict_ema``/``model_ema``/``state_dict``/``model``) and cleaned of a ``module.`` prefix
as timm does, and every value must be a tensor with finite values.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import stat
import struct
import warnings
from pathlib import Path

import torch

MAX_HEADER_BYTES = 100 * 2 ** 20          # safetensors' own limit
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
             "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_WRAPPERS = ("state_dict_ema", "model_ema", "state_dict", "model")


class CheckpointError(ValueError):
    """A weights file that cannot be used: corrupt, not weights, or holding non-finite values."""


def read_checkpoint(path: str | Path, *, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (on the CPU), validated; CheckpointError/FileNotFoundError name the file."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint not found") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read this checkpoint: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path}: expected a weights file (.safetensors/.pth), found "
                              f"{'a directory' if stat.S_ISDIR(st.st_mode) else 'a special file'}")
    if path.suffix == ".safetensors":
        state = _read_safetensors(path, st.st_size)
    else:
        state = _read_torch(path)
    return _clean(path, state, use_ema)


def _read_safetensors(path: Path, size: int) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"{path}: not a safetensors file (header length {n} exceeds the "
                                      f"{size - 8} bytes after it)")
            text = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read this checkpoint: {e.strerror}") from None
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: not a safetensors file (header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a safetensors file (header is not a JSON object)")
    data_bytes = size - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(entry, dict) and entry.get("dtype") in _ITEMSIZE and isinstance(entry.get("shape"), list) \
            and all(isinstance(d, int) and d >= 0 for d in entry["shape"]) \
            and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2 \
            and all(isinstance(o, int) for o in entry["data_offsets"])
        if ok:
            begin, end = entry["data_offsets"]
            ok = 0 <= begin <= end <= data_bytes and end - begin == math.prod(entry["shape"]) * _ITEMSIZE[entry["dtype"]]
        if not ok:
            raise CheckpointError(f"{path}: corrupt safetensors header: tensor {name!r} has a bad dtype, shape "
                                  f"or data extent: {json.dumps(entry)[:200]}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors file: {e}") from None


def _read_torch(path: Path) -> object:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")   # a refusal follows anyway
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message advises weights_only=False ("will likely succeed"): never relay that; keep the cause
        m = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\.?\s*Please use|\n\n|$)", str(e), re.S)
        cause = " ".join((m.group(1) if m else str(e)).split())[:200] or type(e).__name__
        if "Unsupported global" in cause:
            raise CheckpointError(f"{path}: refused: not a plain weights file, it names code to run ({cause})") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({cause})") from None
    except Exception as e:  # noqa: BLE001 - zip, EOF, pickle-protocol errors: a corrupt file either way
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:200]})") from None


def _clean(path: Path, state: object, use_ema: bool) -> dict[str, torch.Tensor]:
    if isinstance(state, dict):
        for key in _WRAPPERS:
            if key.endswith("_ema") and not use_ema:
                continue
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: expected a state dict (parameter name -> tensor), found "
                              f"{'an empty one' if isinstance(state, dict) else type(state).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {key!r}: expected a tensor, found {type(value).__name__}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: tensor {key!r} holds NaN or infinite values")
        out[key[7:] if key.startswith("module.") else key] = value
    return out
