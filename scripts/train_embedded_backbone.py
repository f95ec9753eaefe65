"""Pre-train an embedded backbone on Fashion-MNIST (offline), for the committed checkpoints.

    python scripts/train_embedded_backbone.py --model vit_micro_patch4_32 --epochs 8

Writes ``rep_tune/runtime/weights/<model>.fmnist.safetensors`` after every epoch and a JSON log
next to it; the model card (MODEL_CARD.md) quotes that log.
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
from safetensors.torch import save_file
from tqdm import tqdm

from rep_tune.data.idx import find_fashion_mnist, load_idx_split
from rep_tune.runtime.backbone import WEIGHTS_DIR


def to_tensor(images) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 3, 32, 32) in [-1, 1], padded by 2 px like the scenarios."""
    x = torch.as_tensor(images, dtype=torch.float32).div_(255.0).unsqueeze(1)
    x = F.pad(x, (2, 2, 2, 2))
    return x.sub_(0.5).div_(0.5).expand(-1, 3, -1, -1).contiguous()


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 2 px shift and horizontal flip, batched."""
    b = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
    x = padded[:, :, dy:dy + 32, dx:dx + 32]
    flip = torch.rand(b, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


@torch.no_grad()
def evaluate(model, x, y, bs=1000) -> float:
    model.eval()
    correct = sum((model(x[i:i + bs]).argmax(-1) == y[i:i + bs]).sum().item() for i in range(0, len(x), bs))
    return correct / len(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="vit_micro_patch4_32")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=None, help="folder with Fashion-MNIST IDX files")
    p.add_argument("--resume", action="store_true",
                   help="continue from the saved checkpoint and log (optimizer moments restart)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    root = find_fashion_mnist(a.data)
    xtr, ytr = load_idx_split(root, "train")
    xte, yte = load_idx_split(root, "t10k")
    xtr, xte = to_tensor(xtr), to_tensor(xte)
    ytr, yte = torch.as_tensor(ytr).long(), torch.as_tensor(yte).long()
    model = timm.create_model(a.model, pretrained=False, num_classes=10)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    steps_per_epoch = len(xtr) // a.batch_size
    total, warm = a.epochs * steps_per_epoch, steps_per_epoch // 2
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    out = WEIGHTS_DIR / f"{a.model}.fmnist.safetensors"
    log = {"model": a.model, "data": str(root), "args": vars(a), "params": sum(p.numel() for p in model.parameters()),
           "epochs": []}
    start = 0
    if a.resume:
        from safetensors.torch import load_file
        model.load_state_dict(load_file(str(out)))
        log["epochs"] = json.loads(out.with_suffix(".json").read_text())["epochs"]
        start = len(log["epochs"])
        log["resumed_at_epoch"] = start
        for _ in range(start * steps_per_epoch):
            sched.step()
        for _ in range(start):
            torch.randperm(len(xtr), generator=gen)
    for epoch in range(start, a.epochs):
        model.train()
        t0 = time.time()
        perm = torch.randperm(len(xtr), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{a.epochs}", mininterval=5)
        for i in bar:
            idx = perm[i * a.batch_size:(i + 1) * a.batch_size]
            loss = F.cross_entropy(model(augment(xtr[idx], gen)), ytr[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            if i % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        acc = evaluate(model, xte, yte)
        log["epochs"].append({"epoch": epoch + 1, "test_acc": acc, "seconds": round(time.time() - t0, 1)})
        print(f"epoch {epoch + 1}: test accuracy {acc:.4f} ({time.time() - t0:.0f} s)", flush=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
        out.with_suffix(".json").write_text(json.dumps(log, indent=2))


if __name__ == "__main__":
    main()
