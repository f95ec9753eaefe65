"""Shapes of the ViT backbones rep-tune can drive, without importing torch or timm.

The cost model needs depth, width, heads and token counts for thousands of candidates per
second, so ``arch_of`` answers from a table (``timm_archs.json``, next to this file) that
``scripts/make_arch_table.py`` writes by building every timm ViT-family model on the 'meta'
device and reading its modules (``rep_tune.arch_probe``). Names the table lacks (a newer timm,
a model registered by the user) are resolved the same way on first use, lazily: only then are
torch and timm imported. The runtime checks each model it builds against ``arch_of``.

A model rep-tune cannot drive (no class token, relative position bias, rotary embeddings,
windowed attention, a CNN stem, ...) is in the table with the reason; ``arch_of`` raises
``UnsupportedArch`` carrying it.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from rep_tune.arch_spec import MLP_KINDS, ArchSpec, UnsupportedArch

TABLE = Path(__file__).resolve().parent / "timm_archs.json"
__all__ = ["ArchSpec", "MLP_KINDS", "TABLE", "UnsupportedArch", "arch_of", "base_name", "table_names"]


@lru_cache(maxsize=1)
def _table() -> dict[str, dict]:
    """The generated shape table: arch name -> ArchSpec fields, or {"refused": reason}."""
    with open(TABLE) as f:
        return json.load(f)["archs"]


def table_names() -> list[str]:
    """Every architecture name in the generated table (accepted and refused)."""
    return sorted(_table())


def base_name(name: str) -> str:
    """timm architecture name without its pretrained tag: ``vit_base_patch16_224.augreg_in21k`` ->
    ``vit_base_patch16_224``; an ``hf-hub:`` or ``timm/`` prefix is dropped."""
    for prefix in ("hf-hub:timm/", "hf_hub:timm/", "timm/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name.split(".", 1)[0]


@lru_cache(maxsize=None)
def arch_of(name: str) -> ArchSpec:
    """ArchSpec of a timm model name, tag or not (``vit_small_patch14_reg4_dinov2.lvd142m``).

    From the generated table; a name it lacks is resolved through timm itself (torch imported
    then, once per name). Raises ``UnsupportedArch`` (a KeyError) naming the model and the
    reason when rep-tune cannot drive it, or when timm has no such model.
    """
    arch = base_name(name)
    row = _table().get(arch)
    if row is None:
        from rep_tune.arch_probe import probe   # imports torch + timm: only for names off the table
        return probe(arch)
    if "refused" in row:
        raise UnsupportedArch(f"timm model {arch!r} cannot be a rep-tune backbone: {row['refused']}")
    return ArchSpec(name=arch, **row)
