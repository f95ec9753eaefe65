"""Read a model weights file safely and name the file in every error.

``.safetensors`` files are checked (header length against the file size, header JSON, tensor
extents) before safetensors reads them; anything else is a PyTorch checkpoint read with
``torch.load(weights_only=True)``, which refuses pickled code (the refusal says so, without torch's
advice to load with ``weights_only=False``). A zip checkpoint's entries may not declare more bytes
than the file holds (a deflated "zip bomb" is refused before torch inflates it). The state dict is
unwrapped (``state_dict_ema``/``model_ema``/``state_dict``/``model``) and cleaned of a ``module.``
prefix as timm does, and every value must be a tensor whose size the file backs (no broadcast view
claiming terabytes over one stored value; all distinct storages together at most the file's size),
checked before its values are: finite.
"""
from __future__ import annotations

import json
import math
import pickle
import re
import struct
import warnings
import zipfile
from pathlib import Path

import torch

from rep_tune.schema import regular_file

MAX_HEADER_BYTES = 100 * 2 ** 20          # safetensors' own limit
_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
             "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_WRAPPERS = ("state_dict_ema", "model_ema", "state_dict", "model")


class CheckpointError(ValueError):
    """A weights file that cannot be used: corrupt, not weights, or holding non-finite values."""


def read_checkpoint(path: str | Path, *, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (on the CPU), validated; CheckpointError/FileNotFoundError name the file."""
    path = Path(path)
    st = regular_file(path, "weights file (.safetensors/.pth)", CheckpointError)
    if path.suffix == ".safetensors":
        state = _read_safetensors(path, st.st_size)
    else:
        state = _read_torch(path, st.st_size)
    return _clean(path, state, use_ema, st.st_size)


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
    from rep_tune.schema import load_json
    try:
        header = load_json(text.decode("utf-8"))      # a tensor named twice is refused, not the last one kept
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError) as e:
        raise CheckpointError(f"{path}: not a safetensors file (header is not JSON: {str(e)[:200]})") from None
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


_ADVICE = re.compile(r"weights_only|safe_globals|trust|Re-running|file an issue|Check the documentation|"
                     r"pytorch\.org|Please use", re.I)


def _torch_cause(e: BaseException) -> str:
    """What torch's refusal says is wrong, without its advice (``weights_only=False``, allowlisting)."""
    text = str(e)
    m = re.search(r"WeightsUnpickler error:\s*(.*)", text, re.S)
    body = m.group(1) if m else text
    sentences = re.split(r"(?<=[.!?])\s+|\n+", body)
    kept = [s for s in (" ".join(x.split()) for x in sentences) if s and not _ADVICE.search(s)]
    return " ".join(kept).replace(" by default", "")[:200].rstrip(" .") or type(e).__name__


def _check_zip(path: Path, size: int) -> None:
    """A zip checkpoint's entries may not declare more bytes than the file holds (torch.save writes
    them uncompressed; a deflated entry would be inflated, to its declared size, before any check)."""
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as z:
            declared = sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, NotImplementedError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt zip: {str(e)[:160]})") from None
    if declared > size:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (its zip entries declare {declared:,} "
                              f"bytes in a {size:,}-byte file; torch.save writes them uncompressed)")


def _read_torch(path: Path, size: int) -> object:
    _check_zip(path, size)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")   # a refusal follows anyway
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message advises weights_only=False ("will likely succeed"): never relay that; keep the cause
        cause = _torch_cause(e)
        if "Unsupported global" in cause or "Unsupported class" in cause:
            raise CheckpointError(f"{path}: refused: it contains code or objects that are not plain tensors "
                                  f"({cause}); rep-tune reads weights only") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({cause})") from None
    except MemoryError:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (it claims more memory than is free)") from None
    except Exception as e:  # noqa: BLE001 - zip, EOF, pickle-protocol errors: a corrupt file either way
        m = re.search(r"tried to allocate (\d+) bytes", str(e))
        if m:                              # a storage claiming more than any file this size can hold
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (a storage claims {int(m.group(1)):,} "
                                  f"bytes; the file holds {size:,})") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                              f"{_torch_cause(e)})") from None


def _clean(path: Path, state: object, use_ema: bool, file_size: int) -> dict[str, torch.Tensor]:
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
    storages: dict[int, int] = {}
    for key, value in state.items():           # sizes first: a value check allocates as much as the tensor claims
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: entry {str(key)[:80]!r}: expected a tensor, found {type(value).__name__}")
        if value.layout != torch.strided or value.is_quantized:
            raise CheckpointError(f"{path}: tensor {key[:80]!r}: expected a plain dense tensor, found {value.layout}")
        claimed = value.numel() * value.element_size()
        stored = value.untyped_storage().nbytes()
        if claimed > stored:
            raise CheckpointError(f"{path}: tensor {key[:80]!r} of shape {tuple(value.shape)} claims {claimed:,} bytes "
                                  f"over {stored:,} stored (a broadcast view, not weights)")
        storages[value.untyped_storage().data_ptr()] = stored
    total = sum(storages.values())
    if total > file_size:
        raise CheckpointError(f"{path}: its tensors claim {total:,} bytes, more than the file's {file_size:,}")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{path}: tensor {key!r} holds NaN or infinite values")
        out[key[7:] if key.startswith("module.") else key] = value
    return out
