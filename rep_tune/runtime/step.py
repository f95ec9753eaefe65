"""One training iteration of REP (the learner's loop body, and what measure.py times).

Mixed precision (``training.precision``): the forward runs under ``torch.autocast`` at bf16 or
fp16, so the frozen backbone's matmuls, attention and convolutions run in that dtype, while
prompts, keys and head stay fp32 parameters (autocast casts a copy for its ops; gradients and
optimiser state are fp32) and the loss is computed in fp32. fp16 adds a dynamic loss scaler
(``torch.amp.GradScaler``) so small gradients do not underflow; bf16 has fp32's exponent range
and needs none. fp32 is the plain path (no autocast).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rep_tune.config import RepConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN/inf: the run (a search trial) failed."""


@dataclass
class Precision:
    """How a training iteration runs numerically: ``name`` fp32|bf16|fp16, autocast and loss scaling."""

    name: str = "fp32"
    device_type: str = "cpu"
    scaler: "torch.amp.GradScaler | None" = None

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context for the forward (a no-op for fp32)."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


def make_precision(config: RepConfig, device: torch.device | str | None = None) -> Precision:
    """The config's ``training.precision`` on ``device`` (a fresh loss scaler for fp16)."""
    name = config.training.precision
    if name not in DTYPES:
        raise ValueError(f"training.precision: expected one of {', '.join(DTYPES)}, found {name!r}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    scaler = torch.amp.GradScaler(dev.type) if name == "fp16" else None
    return Precision(name, dev.type, scaler)


def make_optimizer(config: RepConfig, params: Iterable[nn.Parameter] | Iterable[dict]) -> torch.optim.Optimizer:
    """The configured optimiser at ``training.effective_lr`` (L2P: Adam, betas 0.9/0.999, no decay).

    ``params``: parameters, or torch's parameter groups (``RepModel.param_groups``: a group may
    turn weight decay off)."""
    t = config.training
    params = [g for g in params if not isinstance(g, dict) or g["params"]]
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.effective_lr, betas=(0.9, 0.999))
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.effective_lr)
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.effective_lr, momentum=0.9)
    raise ValueError(f"training.optimizer: expected adam, adamw or sgd, found {t.optimizer!r}")


def class_mask(num_classes: int, classes: Sequence[int], device: torch.device | str | None = None) -> Tensor:
    """Bool (num_classes,) True for classes outside ``classes`` (their logits are masked in training)."""
    m = torch.ones(num_classes, dtype=torch.bool, device=device)
    m[list(classes)] = False
    return m


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, *,
               query: Tensor | None, iteration: int, task_id: int | None = None,
               mask: Tensor | None = None, clip_grad: float | None = None, precision: Precision | None = None):
    """zero_grad -> forward (ALD at ``iteration``, autocast per ``precision``) -> CE (+ masked logits)
    + pull loss in fp32 -> backward (scaled for fp16) -> clip -> step.

    Returns (loss value, RepOutput). Raises NonFiniteLoss on a NaN/inf loss, before stepping.
    """
    precision = precision or Precision()
    optimizer.zero_grad(set_to_none=True)
    with precision.autocast():
        out = model(x, query, task_id=task_id, iteration=iteration)
    logits = out.logits.float()
    logits = logits.masked_fill(mask, float("-inf")) if mask is not None else logits
    loss = F.cross_entropy(logits, y) + out.pull_loss.float()
    value = float(loss.detach())
    if value != value or value in (float("inf"), float("-inf")):
        raise NonFiniteLoss(f"training loss is {value} at iteration {iteration}"
                            f"{'' if task_id is None else f' of task {task_id}'} (learning rate too high?)")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    scaler = precision.scaler
    if scaler is None:
        loss.backward()
        if clip_grad:
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        if clip_grad:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        scaler.step(optimizer)                 # skipped when the scaled gradients overflowed
        scaler.update()
    return value, out
