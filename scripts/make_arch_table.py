"""Write rep_tune/timm_archs.json: the shape (or the refusal) of every timm ViT-family model.

Builds each model on the 'meta' device (no memory, no weights, no network) and reads it with
``rep_tune.arch_probe.spec_from_model``, so the table is timm's own configuration, never a guess
from the name. Rerun after upgrading timm or adding an embedded backbone; tests/test_timm_families.py
checks a sample of the table against the installed timm.

    PYTHONPATH=$PWD python scripts/make_arch_table.py [--out rep_tune/timm_archs.json]
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

# timm modules holding ViT-family models: the plain ones rep-tune drives and their relatives
# (relative position bias, rotary embeddings, hybrids, ...), which the table records as refused.
MODULES = ("vision_transformer", "deit", "eva", "vision_transformer_relpos", "vision_transformer_hybrid",
           "vision_transformer_sam", "beit", "naflexvit")


def names() -> list[str]:
    """Every architecture name of MODULES, plus the embedded backbones (registered on import)."""
    import timm
    from rep_tune.runtime.backbone import EMBEDDED
    found = {n for m in MODULES for n in timm.list_models(module=m)}
    return sorted(found | set(EMBEDDED))


def row(name: str) -> dict:
    """Table row of one architecture: the ArchSpec fields, or {"refused": reason}."""
    from rep_tune.arch_probe import build_meta, reason_against, spec_from_model
    model = build_meta(name)
    reason = reason_against(model)
    return {"refused": reason} if reason else spec_from_model(model, name).to_dict()


def main(argv: list[str] | None = None) -> int:
    import timm
    from rep_tune.archs import TABLE
    from rep_tune.progress import ProgressBar
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=TABLE)
    a = p.parse_args(argv)
    archs = {}
    todo = names()
    with warnings.catch_warnings(), ProgressBar(len(todo), "timm models", unit="model") as bar:
        warnings.simplefilter("ignore")
        for name in todo:
            archs[name] = row(name)
            bar.update()
    accepted = sum("refused" not in r for r in archs.values())
    lines = ",\n".join(f"    {json.dumps(n)}: {json.dumps(r, sort_keys=True)}" for n, r in archs.items())
    a.out.write_text(f'{{\n  "timm": {json.dumps(timm.__version__)},\n  "archs": {{\n{lines}\n  }}\n}}\n')
    print(f"{a.out}: {len(archs)} architectures from timm {timm.__version__}, {accepted} accepted, "
          f"{len(archs) - accepted} refused")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
