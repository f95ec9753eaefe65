"""Python steps of benchmarks/gpu_check.sh (kept here so that tests can run them on the CPU).

    python benchmarks/gpu_check_steps.py cli verify --config C.yaml ...   # one rep-tune subcommand
    python benchmarks/gpu_check_steps.py cost-error OUT                   # cost model vs bench rows
    python benchmarks/gpu_check_steps.py verify-config OUT                # the config step 5 verifies

``cli`` runs a subcommand without importing the CLI's others (``rep-tune search`` imports optuna,
absent on the GPU machines), with the CLI's exit status for bad input (2).
"""
from __future__ import annotations

import argparse
import csv
import glob
import importlib
import statistics
import sys
from pathlib import Path

PAPER_ITERS_PER_TASK = 1563


def cli(name: str, argv: list[str]) -> int:
    mod = importlib.import_module(f"rep_tune.cli.{name}")
    p = argparse.ArgumentParser(prog=f"rep-tune {name}")
    mod.add_arguments(p)
    try:
        return int(mod.run(p.parse_args(argv)) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"rep-tune {name}: error: {e}", file=sys.stderr)
        return 2


def cost_error(out: str) -> int:
    """Predicted (cost model on OUT/profile.yaml) vs measured ms/iter and MiB of OUT/bench_runtime_*.csv."""
    from rep_tune.config import preset
    from rep_tune.cost import predict
    from rep_tune.device import DeviceProfile

    prof = DeviceProfile.load(f"{out}/profile.yaml")
    files = glob.glob(f"{out}/bench_runtime_*.csv")
    if not files:
        print(f"cost-error: no bench_runtime_*.csv in {out} (step 3 failed?)", file=sys.stderr)
        return 1
    res = []
    for r in csv.DictReader(open(files[0])):
        name = "baseline" if r["variant"].startswith("baseline") else "paper"
        cfg = preset(name, "l2p", r["backbone"], **{"training.precision": r["precision"]})
        pred = predict(cfg, prof, iters_per_task=PAPER_ITERS_PER_TASK, batch=int(r["batch"]), num_classes=100)
        ms, mib = float(r["ms_per_iter"]), float(r["peak_mib"])
        res.append({"backbone": r["backbone"], "variant": name, "precision": r["precision"], "batch": r["batch"],
                    "measured_ms": ms, "predicted_ms": round(pred.latency_ms.value, 3),
                    "error_pct": round(100 * (pred.latency_ms.value / ms - 1), 2),
                    "measured_mib": mib, "predicted_mib": round(pred.peak_memory_mb.value, 1),
                    "mem_error_pct": round(100 * (pred.peak_memory_mb.value / mib - 1), 2),
                    "profile_dtype": prof.dtype, "source": pred.latency_ms.source})
    with open(f"{out}/cost_model_error.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(res[0]))
        w.writeheader()
        w.writerows(res)
    for r in res:
        print(f"{r['backbone']:<22} {r['variant']:<8} {r['precision']} b{r['batch']:<3} measured {r['measured_ms']:9.2f} ms "
              f"predicted {r['predicted_ms']:9.2f} ms ({r['error_pct']:+6.1f} %); memory {r['mem_error_pct']:+6.1f} %")
    for dt in sorted({r["precision"] for r in res}):
        errs = sorted(abs(r["error_pct"]) for r in res if r["precision"] == dt)
        mem = sorted(abs(r["mem_error_pct"]) for r in res if r["precision"] == dt)
        p90 = errs[min(len(errs) - 1, int(0.9 * len(errs)))]
        print(f"{dt} rows: latency |error| median {statistics.median(errs):.1f} %, p90 {p90:.1f} %; memory |error| "
              f"median {statistics.median(mem):.1f} % (profile dtype {prof.dtype}, {res[0]['source']})")
    print(f"wrote {out}/cost_model_error.csv")
    return 0


def verify_config(out: str) -> int:
    """A deployable ViT-B/16 paper config at the profile's dtype, targeting a GPU (no budgets of its own)."""
    from rep_tune.config import preset
    from rep_tune.device import DeviceProfile

    prof = DeviceProfile.load(f"{out}/profile.yaml")
    precision = prof.dtype if prof.dtype in ("fp32", "bf16", "fp16") else "fp32"
    cfg = preset("paper", "l2p", "vit_base_patch16_224",
                 **{"backbone.pretrained": False, "selection.pretrained": False, "training.epochs": 5,
                    "training.precision": precision})
    cfg.name = "rep-l2p-gpu-check"
    cfg.target = {"device": "gpu-check", "kind": "gpu", "budgets": {"batch_size": 16}}
    print(cfg.save(Path(out) / "best_gpu_check.yaml"))
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "cli":
        return cli(argv[1], argv[2:])
    if len(argv) == 2 and argv[0] == "cost-error":
        return cost_error(argv[1])
    if len(argv) == 2 and argv[0] == "verify-config":
        return verify_config(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
