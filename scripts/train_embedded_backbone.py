"""Pre-train an embedded backbone on Fashion-MNIST (offline), for the committed checkpoints.

    python scripts/train_embedded_backbone.py --model vit_micro_patch2_28 --coarse-epochs 15 --epochs 2

Data: the 50,000-image pre-training part of the official training set
(``rep_tune.data.fashion_mnist.holdout_split``); the 10,000 held-out images are the continual
benchmark's and are never seen here. Accuracy is measured on the official 10,000-image test set.

Progressive resizing (the CPU needs it): ``--coarse-epochs`` at patch ``--coarse-patch`` (4: 7x7
tokens, about 5x cheaper per step), then timm's ``checkpoint_filter_fn`` resamples the patch
embedding (FlexiViT pseudo-inverse) and the position embedding to the model's own patch size, and
``--epochs`` fine-tune there. Writes ``rep_tune/runtime/weights/<model>.fmnist.safetensors`` and a
JSON log after every epoch (``--resume`` continues from them); MODEL_CARD.md quotes the log.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import checkpoint_filter_fn

from rep_tune.data.fashion_mnist import holdout_split
from rep_tune.data.idx import find_fashion_mnist, load_idx_split
from rep_tune.progress import ProgressBar
from rep_tune.runtime.backbone import WEIGHTS_DIR


def to_tensor(images) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 3, 28, 28) in [-1, 1], as the scenarios render it."""
    x = torch.as_tensor(images, dtype=torch.float32).div_(255.0).unsqueeze(1)
    return x.sub_(0.5).div_(0.5).expand(-1, 3, -1, -1).contiguous()


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shift of up to 2 px (one per batch) and per-image horizontal flip."""
    b, _, h, w = x.shape
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
    x = padded[:, :, dy:dy + h, dx:dx + w]
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


@torch.no_grad()
def evaluate(model, x, y, bs=500) -> float:
    model.eval()
    correct = sum((model(x[i:i + bs]).argmax(-1) == y[i:i + bs]).sum().item() for i in range(0, len(x), bs))
    return correct / len(x)


def run_stage(model, stage: str, epochs: int, start: int, xtr, ytr, xte, yte, a, log, save) -> None:
    """``epochs`` epochs of AdamW + warm-up/cosine; resumes at epoch ``start`` (moments restart)."""
    lr = a.fine_lr if (stage == "fine" and a.fine_lr) else a.lr
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=a.weight_decay)
    steps = len(xtr) // a.batch_size
    total, warm = max(1, epochs * steps), max(1, steps // 2)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator().manual_seed(a.seed + (0 if stage == "coarse" else 1))
    for _ in range(start * steps):
        sched.step()
    for _ in range(start):
        torch.randperm(len(xtr), generator=gen)
    for epoch in range(start, epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(xtr), generator=gen)
        bar = ProgressBar(steps, f"{stage} epoch {epoch + 1}/{epochs}", unit="steps")
        for i in range(steps):
            idx = perm[i * a.batch_size:(i + 1) * a.batch_size]
            loss = F.cross_entropy(model(augment(xtr[idx], gen)), ytr[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update(1)
            if i % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        acc = evaluate(model, xte, yte)
        log["epochs"].append({"stage": stage, "patch": model.patch_embed.patch_size[0], "epoch": epoch + 1,
                              "test_acc": acc, "seconds": round(time.time() - t0, 1)})
        print(f"{stage} epoch {epoch + 1}: test accuracy {acc:.4f} ({time.time() - t0:.0f} s)", flush=True)
        save(model, stage)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_micro_patch2_28")
    p.add_argument("--coarse-patch", type=int, default=4)
    p.add_argument("--coarse-epochs", type=int, default=15)
    p.add_argument("--epochs", type=int, default=2, help="epochs at the model's own patch size")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--fine-lr", type=float, default=None,
                   help="peak learning rate at the model's own patch size (default: --lr)")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="folder with Fashion-MNIST IDX files")
    p.add_argument("--out", default=str(WEIGHTS_DIR))
    p.add_argument("--limit", type=int, default=None, help="use only this many training images (smoke runs)")
    p.add_argument("--resume", action="store_true", help="continue from the saved checkpoint and log")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    root = find_fashion_mnist(a.data)
    xall, yall = load_idx_split(root, "train")
    pre, _held_out = holdout_split(yall)
    pre = pre[: a.limit] if a.limit else pre
    xte, yte = load_idx_split(root, "t10k")
    if a.limit:
        xte, yte = xte[: a.limit], yte[: a.limit]
    xtr, xte = to_tensor(xall[pre]), to_tensor(xte)
    ytr, yte = torch.as_tensor(yall[pre]).long(), torch.as_tensor(yte).long()

    out = Path(a.out) / f"{a.model}.fmnist.safetensors"
    coarse_file = Path(a.out) / f"{a.model}.coarse.safetensors"
    log_file = out.with_suffix(".json")
    log = {"model": a.model, "data": str(root), "pretrain_images": len(pre), "args": vars(a), "epochs": []}
    if a.resume and log_file.exists():
        log = json.loads(log_file.read_text())
        log.setdefault("resumed", []).append(len(log["epochs"]))

    def save(model, stage):
        target = coarse_file if stage == "coarse" else out
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(target))
        log["params"] = sum(q.numel() for q in model.parameters())
        log_file.write_text(json.dumps(log, indent=2))

    done = {s: sum(1 for e in log["epochs"] if e["stage"] == s) for s in ("coarse", "fine")}
    if done["fine"] == 0 and done["coarse"] < a.coarse_epochs:
        coarse = timm.create_model(a.model, pretrained=False, num_classes=10, patch_size=a.coarse_patch)
        if done["coarse"]:
            coarse.load_state_dict(load_file(str(coarse_file)))
        run_stage(coarse, "coarse", a.coarse_epochs, done["coarse"], xtr, ytr, xte, yte, a, log, save)
    model = timm.create_model(a.model, pretrained=False, num_classes=10)
    if done["fine"]:
        model.load_state_dict(load_file(str(out)))
    elif a.coarse_epochs:
        # patch coarse -> fine: FlexiViT resampling of the patch embedding, bicubic position embedding
        model.load_state_dict(checkpoint_filter_fn(load_file(str(coarse_file)), model))
        acc = evaluate(model, xte, yte)
        log["resampled_test_acc"] = acc
        print(f"resampled to patch {model.patch_embed.patch_size[0]}: test accuracy {acc:.4f}", flush=True)
    run_stage(model, "fine", a.epochs, done["fine"], xtr, ytr, xte, yte, a, log, save)


if __name__ == "__main__":
    main()
