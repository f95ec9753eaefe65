"""`rep-tune train`: run REP continual learning for one config and report accuracy and cost.

With no flags: the embedded offline benchmark (preset paper, L2P, Split Fashion-MNIST in 5 tasks,
the embedded backbone and surrogate), under 3 minutes on 2 CPU cores. Cost per iteration:
latency, peak memory and energy (measured by this machine's counters, or estimated, labelled).
``--set training.precision=bf16`` trains under autocast (see rep_tune.runtime.step).
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from rep_tune.cli.common import add_threads_argument, path_arg, positive_int, set_overrides, set_threads, torch_device
from rep_tune.config import EMBEDDED_BACKBONE, PRESETS
from rep_tune.data.registry import dataset_names
from rep_tune.methods import method_names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=path_arg, metavar="C.yaml", help="a RepConfig file (wins over --preset/--method/--backbone)")
    p.add_argument("--preset", choices=PRESETS, default="paper", help="starting point when no --config (default paper)")
    p.add_argument("--method", choices=method_names(), default="l2p", help="prompt method of the preset")
    p.add_argument("--backbone", default=EMBEDDED_BACKBONE, help=f"timm ViT name of the preset (default {EMBEDDED_BACKBONE})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set training.epochs=1 (repeatable; YAML values)")
    p.add_argument("--scenario", type=path_arg, metavar="S.yaml", help="a Scenario file (wins over --dataset/--tasks)")
    p.add_argument("--dataset", default="fashion-mnist", choices=dataset_names(),
                   help="a registered dataset (rep_tune.data.registry; default fashion-mnist)")
    p.add_argument("--tasks", type=positive_int, default=5, help="number of tasks (default 5)")
    p.add_argument("--data-path", type=path_arg, help="dataset folder (cifar100, imagenet-r, folder, fashion-mnist)")
    p.add_argument("--download", action="store_true", help="let torchvision download the dataset if absent")
    p.add_argument("--out", type=path_arg, metavar="DIR", help="output folder (default runs/train-<date>-<time>)")
    p.add_argument("--device", type=torch_device, help="cpu, cuda, cuda:1 ... (default: cuda when available, else cpu)")
    p.add_argument("--no-query-cache", action="store_true", help="compute every selection query (no per-sample cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_argument(p)


def build_config(args: argparse.Namespace):
    """The RepConfig the flags describe (validated)."""
    from rep_tune.config import RepConfig, preset
    from rep_tune.schema import SchemaError
    cfg = RepConfig.load(args.config) if args.config else preset(args.preset, args.method, args.backbone)
    overrides = set_overrides(args.set)
    if overrides:
        try:
            cfg = cfg.replace(**overrides)
        except KeyError as e:
            raise ValueError(f"--set: unknown config field {e}") from None
        except SchemaError as e:
            if e.source is not None:
                raise
            raise SchemaError("--set", e.field, e.expected, e.found) from None
    return cfg.validate(args.config)


def build_scenario(args: argparse.Namespace):
    from rep_tune.data.scenario import Scenario
    if args.scenario:
        scenario = Scenario.load(args.scenario).validate(args.scenario)
        scenario.check_reachable(args.scenario)           # data there and enough classes, before any work
        return scenario
    scenario = Scenario(dataset=args.dataset, n_tasks=args.tasks, data_path=args.data_path,
                        download=args.download).validate("--dataset/--tasks/--data-path")
    scenario.check_reachable("--dataset/--tasks/--data-path")
    return scenario


def format_matrix(acc) -> str:
    n = len(acc)
    lines = ["after \\ on " + " ".join(f"{'T' + str(j):>6}" for j in range(n))]
    for i, row in enumerate(acc):
        cells = " ".join("     ." if (isinstance(v, float) and math.isnan(v)) or v is None else f"{100 * v:6.1f}"
                         for v in row)
        lines.append(f"{'task ' + str(i):<11}" + cells)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from rep_tune.figures import METRICS, metric
    from rep_tune.runtime.learner import train
    from rep_tune.schema import write_mapping

    cfg = build_config(args)
    scenario = build_scenario(args)
    set_threads(args.threads)
    out = Path(args.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    scenario.save(out / "scenario.yaml")
    print(f"config {cfg.name}: backbone {cfg.backbone.name}, surrogate {cfg.selection.surrogate}, "
          f"method {cfg.prompt.method}, AToM {'on' if cfg.atom.enabled and any(cfg.merge_schedule) else 'off'}, "
          f"ALD {'on' if cfg.ald.enabled else 'off'}, precision {cfg.training.precision}")
    print(f"scenario: {scenario.dataset}, {scenario.n_tasks} tasks")
    from rep_tune.profiler.energy import training_meter
    res = train(cfg, scenario, device=args.device, progress=not args.quiet,
                use_query_cache=False if args.no_query_cache else None, energy=training_meter)
    print("\naccuracy (%) on each task's test set")
    print(format_matrix(res.acc_matrix.tolist()))
    print(f"\nfinal average accuracy   {100 * res.final_acc:.2f} %  (on {res.eval_size:,} test images, "
          f"sampling error ±{100 * res.sampling_error:.2f} points)")
    print(f"average incremental acc  {100 * res.avg_incremental_acc:.2f} %")
    print(f"forgetting               {100 * res.forgetting:.2f} %")
    for name, fig in res.cost.items():
        print(f"{metric(name).label.split(' (')[0]:<28} {fig.value:.4g} {fig.unit}  [{fig.source}: {fig.detail}; machine {fig.machine}]")
    missing = [metric(m).label.split(' (')[0] for m in METRICS if res.cost.get(m) is None]
    if missing:
        print(f"{'not measured':<28} {', '.join(missing)}")
    print(f"query cache              {res.query_cache.get('reason')}")
    print(f"{res.iterations} iterations in {res.seconds:.1f} s on {res.device}")
    data = {"scenario": scenario.to_dict(), **res.to_dict()}
    path = write_mapping(data, out / "results.yaml")
    print(f"\nresults: {path}")
    return 0
