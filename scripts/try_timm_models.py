"""Try timm ViT-family models as rep-tune backbones: name -> outcome, as a Markdown table.

For each architecture of rep_tune/timm_archs.json (or the names given): refused models with the
reason; accepted ones up to --max-params run a real RepModel forward+backward (random weights,
L2P + AToM, input 4 patches wide) and the cost model; bigger ones are listed with their shape.

    PYTHONPATH=$PWD python scripts/try_timm_models.py [--max-params 30e6] [--out try.md] [NAME ...]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def try_one(name: str, max_params: float) -> str:
    """One line of outcome for ``name``."""
    import torch
    from rep_tune.archs import UnsupportedArch, arch_of
    try:
        a = arch_of(name)
    except UnsupportedArch as e:
        return "refused: " + str(e).split(": ", 1)[1]
    shape = (f"D={a.embed_dim} L={a.depth} H={a.num_heads} patch={a.patch_size} prefix={a.num_prefix_tokens}"
             f"{' LayerScale' if a.layer_scale else ''}{' ' + a.mlp_kind.upper() if a.mlp_kind != 'mlp' else ''}")
    if a.params > max_params:
        return f"accepted, not run ({a.params / 1e6:.0f}M params): {shape}"
    from rep_tune.config import preset
    from rep_tune.cost import predict
    from rep_tune.device import Budgets, DeviceProfile, Spec
    from rep_tune.runtime.backbone import clear_backbone_cache
    from rep_tune.runtime.model import RepModel
    img = 4 * a.patch_size
    cfg = preset("paper", "l2p", name, **{
        "backbone.pretrained": False, "backbone.img_size": img, "selection.surrogate": "vit_pico_patch4_32",
        "selection.pretrained": False, "ald.enabled": False, "prompt.pool_size": 4, "prompt.length": 2,
        "prompt.top_k": 2, "atom.merge": [1] * a.depth})
    t = time.perf_counter()
    model = RepModel(cfg, 5).train()
    out = model(torch.randn(2, 3, img, img))
    (torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1])) + out.pull_loss).backward()
    ok = torch.isfinite(out.logits).all() and model.prompt.prompts.grad.abs().sum() > 0
    prof = DeviceProfile(name="cpu", kind="cpu", dtype="fp32", budgets=Budgets(),
                         spec=Spec(peak_tflops={"fp32": 0.1}, memory_bandwidth_gbs=20.0))
    ms = predict(cfg, prof).latency_ms.value
    clear_backbone_cache()
    return (f"works{'' if ok else ' (NON-FINITE or no gradient)'}: RepModel fwd+bwd at {img} px, tokens "
            f"{out.tokens[0]}->{out.tokens[-1]}, {time.perf_counter() - t:.1f} s; cost model {ms:.1f} ms; {shape}")


def main(argv: list[str] | None = None) -> int:
    from rep_tune.archs import table_names
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*")
    p.add_argument("--max-params", type=float, default=30e6)
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    lines = ["| model | outcome |", "|---|---|"]
    for name in a.names or table_names():
        try:
            outcome = try_one(name, a.max_params)
        except Exception as e:  # a crash is an outcome too
            outcome = f"FAILED: {type(e).__name__}: {e}"
        lines.append(f"| {name} | {outcome} |")
        print(lines[-1], flush=True)
    if a.out:
        a.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
