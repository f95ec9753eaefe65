"""`rep-tune cost`: predict a config's training cost on a device and check it against the budgets."""
from __future__ import annotations

import argparse

from rep_tune.cli.common import int_range, non_negative_float, path_arg
from rep_tune.config import MAX_ITERATIONS, PRECISIONS, PRESETS, RepConfig, preset
from rep_tune.cost.deploy import deploy_precision
from rep_tune.device import DeviceProfile
from rep_tune.methods import method_names


MAX_IMAGES_PER_TASK = 10 ** 9


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=path_arg, help="RepConfig YAML/JSON (default: the --preset)")
    p.add_argument("--device", type=path_arg, required=True, help="device profile YAML, or a shipped profile name")
    p.add_argument("--preset", choices=PRESETS, default="paper", help="preset used when --config is absent")
    p.add_argument("--method", default="l2p", choices=list(method_names()), help="prompt method of the preset")
    p.add_argument("--backbone", default=None, help="backbone of the preset (timm name)")
    p.add_argument("--t", type=int_range(0, MAX_ITERATIONS), default=None,
                   help="ALD at this iteration (default: averaged over a task)")
    p.add_argument("--iters-per-task", type=int_range(1, MAX_ITERATIONS), default=None,
                   help="task length for ALD averaging")
    p.add_argument("--margin", type=non_negative_float, default=0.0, help="required headroom, e.g. 0.1 = 10%%")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="price at this training precision (default: the config's training.precision; "
                        "a preset takes the profile's preferred dtype)")
    p.add_argument("--images-per-task", type=int_range(1, MAX_IMAGES_PER_TASK), default=None,
                   help="training images per task: sets the epoch length, so the first epoch (query not "
                        "cached yet) is priced at its share of the schedule (default: epochs of equal length)")
    p.add_argument("--deploy", action="store_true",
                   help="price the config's knobs on the profile's workload (its backbone, surrogate, image "
                        "size, batch size and schedule), as a search does")
    p.add_argument("--deploy-backbone", default=None,
                   help="with --deploy: this backbone instead of the workload's (timm name)")


def _config(args, prof: DeviceProfile) -> tuple[RepConfig, str]:
    """The config to price and where its precision comes from."""
    if args.config:
        cfg, why = RepConfig.load(args.config), f"{args.config}: training.precision"
    else:
        kw = {"backbone": args.backbone} if args.backbone else {}
        try:
            cfg = preset(args.preset, args.method, **kw)
        except KeyError as e:
            raise ValueError(f"--backbone: expected a timm ViT name like vit_tiny_patch16_224, "
                             f"found {args.backbone!r}") from e
        if deploy_precision(prof):
            cfg = cfg.replace(**{"training.precision": deploy_precision(prof)})
            why = f"preset for {prof.name}: the profile's preferred dtype"
        else:
            why = f"preset default (the profile's dtype {prof.dtype} is not a training precision)"
    if args.precision:
        cfg, why = cfg.replace(**{"training.precision": args.precision}), "--precision"
    return cfg, why


def run(args) -> int:
    from rep_tune.cost import check
    from rep_tune.cost.counts import count
    from rep_tune.cost.deploy import map_to_deployment, predict_deployed
    from rep_tune.cost.latency import rates
    from rep_tune.cost.model import block_ms, predict, task_schedule
    from rep_tune.cost.verdict import verdict

    prof = DeviceProfile.load(args.device)
    cfg, why = _config(args, prof)
    prec = cfg.training.precision
    if args.deploy:
        w = prof.workload
        batch = prof.budgets.batch_size
        keep = bool(args.precision)
        priced = map_to_deployment(cfg, w, args.deploy_backbone, batch, None if keep else deploy_precision(prof))
        cost = predict_deployed(cfg, prof, backbone=args.deploy_backbone, keep_precision=keep)
        if priced.training.precision != prec:
            prec, why = priced.training.precision, f"the deployment's: {prof.name}'s training dtype"
        sched = task_schedule(priced, batch, images_per_task=w.images_per_task)
        t, classes = None, w.num_classes
        print(f"proxy  {cfg.name}: {cfg.backbone.name} ({cfg.prompt.method})")
        print(f"deploy {priced.backbone.name}@{priced.backbone.img_size}, surrogate {priced.selection.surrogate}, "
              f"batch {batch}, {w.epochs} epochs of {w.images_per_task} images/task ({w.dataset}, "
              f"{w.num_classes} classes): the profile's workload")
    else:
        priced, t, classes = cfg, args.t, None
        pkw = {"t": args.t, "iters_per_task": args.iters_per_task, "images_per_task": args.images_per_task}
        sched = task_schedule(cfg, images_per_task=args.images_per_task, iters_per_task=args.iters_per_task)
        cost = predict(cfg, prof, **pkw)
    c = count(priced, t=t, iters_per_task=sched.iterations, **({"num_classes": classes} if classes else {}))
    ms = block_ms(c, rates(prof, prec))
    print(f"config {priced.name}: {priced.backbone.name} ({priced.prompt.method}), batch {c.batch}, "
          f"{prec} on {prof.name}{'' if prof.calibrated else ' [uncalibrated: spec-only estimate]'}")
    print(f"precision {prec} ({why}); {prof.name} prefers {prof.dtype}")
    when = f"at t = {t}" if t is not None else f"averaged over {sched.describe()}"
    print(f"ALD keep probabilities {when}")
    print(f"{'block':>5} {'tokens':>7} {'after':>7} {'merge':>5} {'keep':>6} {'grad':>4} {'ms if run':>10}")
    for b, t in zip(c.blocks, ms):
        print(f"{b.index:>5} {b.tokens:>7.1f} {b.tokens_mlp:>7.1f} {b.merges:>5} {b.keep:>6.3f} "
              f"{'y' if b.grad else 'n':>4} {t:>10.3f}")
    x = cost.extras
    n, n1 = sched.iterations, x["first_epoch_iterations"]
    print(f"latency     {cost.latency_ms}")
    if x["latency_ms_first_epoch"] != x["latency_ms_cached"]:
        if n1 < n:
            print(f"  = mean of: first epoch (query computed) {x['latency_ms_first_epoch']:.4g} ms x {n1:.4g} iterations, "
                  f"later epochs (query cached) {x['latency_ms_cached']:.4g} ms x {n - n1:.4g}")
        else:
            print(f"  = the first epoch's (query computed every iteration); later epochs would read the cached query: "
                  f"{x['latency_ms_cached']:.4g} ms")
    print(f"  parts: blocks {x['blocks_ms']:.4g} ms, query {x['query_ms_first_epoch']:.4g} ms "
          f"({'cached after the first epoch' if x['query_ms'] == 0 else 'every iteration'}), "
          f"rest of the iteration {x['other_ms']:.4g} ms")
    print(f"peak memory {cost.peak_memory_mb}   (keep-weighted: {x['peak_memory_mb_expected']:.4g} MiB; "
          f"resident {x['resident_mb']:.4g}, activations {x['activations_mb']:.4g}, workspace {x['workspace_mb']:.4g})")
    print(f"energy      {cost.energy_j if cost.energy_j else 'n/a (profile has no power figure)'}")
    print(f"FLOPs fwd {x['flops_fwd']:.4g}, bwd {x['flops_bwd']:.4g}, "
          f"blocks expected to run {x['blocks_expected']:.2f}/{len(c.blocks)}")
    b = prof.budgets
    limits = ", ".join(f"{m} {v:g}" for m, v in b.items()) or "none set"
    print(f"budgets (batch {b.batch_size}): {limits}{'  - ' + b.rationale if b.rationale else ''}")
    if args.deploy:
        v = verdict(cost, b, args.margin)
    else:
        _, v = check(cfg, prof, args.margin, **pkw)
    print(v)
    return 0 if v.fits else 1
