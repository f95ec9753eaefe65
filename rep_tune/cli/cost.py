"""`rep-tune cost`: predict a config's training cost on a device and check it against the budgets."""
from __future__ import annotations

import argparse

from rep_tune.cli.common import non_negative_float, non_negative_int, positive_int
from rep_tune.config import PRESETS, RepConfig, preset
from rep_tune.device import DeviceProfile


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="RepConfig YAML/JSON (default: the --preset)")
    p.add_argument("--device", required=True, help="device profile YAML, or a shipped profile name")
    p.add_argument("--preset", choices=PRESETS, default="paper", help="preset used when --config is absent")
    p.add_argument("--method", default="l2p", choices=["l2p", "dualprompt"], help="prompt method of the preset")
    p.add_argument("--backbone", default=None, help="backbone of the preset (timm name)")
    p.add_argument("--t", type=non_negative_int, default=None, help="ALD at this iteration (default: averaged over a task)")
    p.add_argument("--iters-per-task", type=positive_int, default=None, help="task length for ALD averaging")
    p.add_argument("--margin", type=non_negative_float, default=0.0, help="required headroom, e.g. 0.1 = 10%%")


def _config(args) -> RepConfig:
    if args.config:
        return RepConfig.load(args.config)
    kw = {"backbone": args.backbone} if args.backbone else {}
    try:
        return preset(args.preset, args.method, **kw)
    except KeyError as e:
        raise ValueError(f"--backbone: expected a timm ViT name like vit_tiny_patch16_224, found {args.backbone!r}") from e


def run(args) -> int:
    from rep_tune.cost import check
    from rep_tune.cost.counts import count
    from rep_tune.cost.latency import rates
    from rep_tune.cost.model import block_ms, predict

    cfg = _config(args)
    prof = DeviceProfile.load(args.device)
    kw = {"t": args.t, "iters_per_task": args.iters_per_task}
    cost = predict(cfg, prof, **kw)
    c = count(cfg, dtype=prof.dtype, **kw)
    ms = block_ms(c, rates(prof))
    when = f"at t = {args.t}" if args.t is not None else f"averaged over a task of {int(cost.extras.get('iters_per_task', 0)) or 'the default'} iterations"
    print(f"config {cfg.name}: {cfg.backbone.name} ({cfg.prompt.method}), batch {cfg.training.batch_size}, "
          f"{prof.dtype} on {prof.name}{'' if prof.calibrated else ' [uncalibrated: spec-only estimate]'}")
    print(f"ALD keep probabilities {when}")
    print(f"{'block':>5} {'tokens':>7} {'after':>7} {'merge':>5} {'keep':>6} {'grad':>4} {'ms if run':>10}")
    for b, t in zip(c.blocks, ms):
        print(f"{b.index:>5} {b.tokens:>7.1f} {b.tokens_mlp:>7.1f} {b.merges:>5} {b.keep:>6.3f} "
              f"{'y' if b.grad else 'n':>4} {t:>10.3f}")
    print(f"latency     {cost.latency_ms}   (first epoch, query not cached yet: "
          f"{cost.extras['latency_ms_first_epoch']:.4g} ms)")
    print(f"peak memory {cost.peak_memory_mb}   (keep-weighted: {cost.extras['peak_memory_mb_expected']:.4g} MB)")
    print(f"energy      {cost.energy_j if cost.energy_j else 'n/a (profile has no power figure)'}")
    print(f"FLOPs fwd {cost.extras['flops_fwd']:.4g}, bwd {cost.extras['flops_bwd']:.4g}, "
          f"blocks expected to run {cost.extras['blocks_expected']:.2f}/{len(c.blocks)}")
    b = prof.budgets
    print(f"budgets (batch {b.batch_size}): latency {b.latency_ms} ms, peak memory {b.peak_memory_mb} MB, "
          f"energy {b.energy_j} J{'  - ' + b.rationale if b.rationale else ''}")
    _, v = check(cfg, prof, args.margin, **kw)
    print(v)
    return 0 if v.fits else 1
