"""Price a searched config on the backbone that will be deployed, at the deployment's schedule.

The search trains a *proxy* for accuracy (the embedded 196-patch backbone by default) and prices
the same knobs on the profile's ``workload`` (e.g. ViT-B/16@224 with a ViT-Ti surrogate, batch 16,
5 epochs of 5,000 images per task). A knob maps 1:1 only when the two backbones have the same
depth and the same token layout (patch grid and prefix tokens); otherwise the mapping is refused.
The config keeps its own prompt method, merge schedule and ALD settings. Its precision is the
deployment's: a config at fp32 (the proxy's default) trains on the device in the profile's training
dtype (``DeviceProfile.dtype``: fp16 on the Jetsons, bf16 on recent GPUs), as ``rep-tune cost``
prices a preset and as the profile's budgets were written; a config at bf16/fp16 keeps its own.

Latency is the mean per iteration over the whole deployed schedule (``rep_tune.cost.model``):
the first epoch computes the selection query (the per-sample cache is empty), later epochs read
it from the cache; ALD's keep probabilities are averaged over the task's iterations.
"""
from __future__ import annotations

import dataclasses

from rep_tune.figures import Cost


class MappingError(ValueError):
    """A proxy config's knobs cannot be carried 1:1 onto the deployment backbone."""


def _prefix_tokens(arch) -> int:
    return int(getattr(arch, "num_prefix_tokens", 1))


def deploy_precision(profile) -> str | None:
    """The training precision a deployment on ``profile`` runs at: its dtype, when that is one."""
    from rep_tune.config import PRECISIONS
    return profile.dtype if profile.dtype in PRECISIONS else None


def map_to_deployment(config, workload, backbone: str | None = None, batch_size: int | None = None,
                      precision: str | None = None):
    """``config``'s knobs on the deployment backbone/surrogate/image size, batch size and schedule
    (and ``precision``, the deployment's, for a config left at fp32).

    Raises MappingError saying why when depth or token layout differ.
    """
    from rep_tune.config import BackboneConfig

    name = backbone or workload.backbone
    proxy = config.backbone.arch
    target_cfg = BackboneConfig(name=name, pretrained=True, checkpoint=None, img_size=workload.img_size)
    try:
        target = target_cfg.arch
    except KeyError as e:
        raise MappingError(f"deployment backbone {name!r}: {e.args[0] if e.args else e}") from None
    problems = []
    if proxy.depth != target.depth:
        problems.append(f"depth {proxy.depth} vs {target.depth} blocks (per-block merge counts and ALD blocks would shift)")
    if proxy.num_patches() != target.num_patches():
        problems.append(f"{proxy.num_patches()} vs {target.num_patches()} patches (merge counts are token counts)")
    if _prefix_tokens(proxy) != _prefix_tokens(target):
        problems.append(f"{_prefix_tokens(proxy)} vs {_prefix_tokens(target)} prefix tokens")
    if problems:
        raise MappingError(f"config {config.name!r} on {config.backbone.name} cannot be priced on "
                           f"{name}@{workload.img_size}: " + "; ".join(problems))
    surrogate = config.selection.surrogate and (workload.surrogate or config.selection.surrogate)
    changes = {"backbone": dataclasses.asdict(target_cfg),
               "selection.surrogate": surrogate or None,
               "selection.checkpoint": None,
               "training.batch_size": batch_size or config.training.batch_size,
               "training.epochs": workload.epochs,
               "training.iters_per_task": workload.iters_per_task,
               "ald.horizon": None}            # the deployment runs its own keep schedule
    if precision and config.training.precision == "fp32":
        changes["training.precision"] = precision
    return config.replace(**changes)


def schedule_mean(cached: float, first_epoch: float, iters_first_epoch: float, iters_total: int) -> float:
    """Mean per iteration over a task: the first epoch at ``first_epoch``, the rest at ``cached``."""
    n1 = min(iters_first_epoch, iters_total)
    return (n1 * first_epoch + (iters_total - n1) * cached) / max(1, iters_total)


def predict_deployed(config, profile, *, backbone: str | None = None, keep_precision: bool = False) -> Cost:
    """Predicted cost of ``config``'s knobs on ``profile``'s workload, per iteration, schedule mean.

    Batch size: the profile's ``budgets.batch_size``; schedule: the workload's epochs over its
    ``images_per_task`` (capped at its ``iters_per_task``); head: its ``num_classes``.
    ``extras['deploy_iters_per_task']`` is the task length priced. Precision: the deployment's
    (``deploy_precision``) for a config at fp32, unless ``keep_precision``.
    """
    from rep_tune.cost.model import predict

    w = profile.workload
    batch = profile.budgets.batch_size
    deployed = map_to_deployment(config, w, backbone, batch, None if keep_precision else deploy_precision(profile))
    cost = predict(deployed, profile, batch=batch, num_classes=w.num_classes, images_per_task=w.images_per_task)
    cost.extras.update(deploy_iters_per_task=cost.extras["iters_per_task"])
    return cost
