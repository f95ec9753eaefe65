"""One training iteration of REP (the learner's loop body, and what measure.py times)."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rep_tune.config import RepConfig


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN/inf: the run (a search trial) failed."""


def make_optimizer(config: RepConfig, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """The configured optimiser at ``training.effective_lr`` (L2P: Adam, betas 0.9/0.999, no decay)."""
    t = config.training
    params = list(params)
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
               mask: Tensor | None = None, clip_grad: float | None = None):
    """zero_grad -> forward (ALD at ``iteration``) -> CE (+ masked logits) + pull loss -> backward -> clip -> step.

    Returns (loss value, RepOutput). Raises NonFiniteLoss on a NaN/inf loss, before stepping.
    """
    optimizer.zero_grad(set_to_none=True)
    out = model(x, query, task_id=task_id, iteration=iteration)
    logits = out.logits.masked_fill(mask, float("-inf")) if mask is not None else out.logits
    loss = F.cross_entropy(logits, y) + out.pull_loss
    value = float(loss.detach())
    if value != value or value in (float("inf"), float("-inf")):
        raise NonFiniteLoss(f"training loss is {value} at iteration {iteration}"
                            f"{'' if task_id is None else f' of task {task_id}'} (learning rate too high?)")
    loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    optimizer.step()
    return value, out
