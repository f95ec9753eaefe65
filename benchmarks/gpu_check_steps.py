"""Python steps of benchmarks/gpu_check.sh (kept here so that tests can run them on the CPU).

    python benchmarks/gpu_check_steps.py cli verify --config C.yaml ...   # one rep-tune subcommand
    python benchmarks/gpu_check_steps.py cost-error OUT                   # cost model vs bench rows
    python benchmarks/gpu_check_steps.py verify-config OUT                # the config step 5 verifies
    python benchmarks/gpu_check_steps.py published OUT [--device cuda]    # bench_published's rows, timed
    python benchmarks/gpu_check_steps.py memory-grid OUT [--device cuda]  # allocator view of memory
    python benchmarks/gpu_check_steps.py measure-one JSON                 # one config, one fresh process
    python benchmarks/gpu_check_steps.py memory-error OUT [PROFILE]       # the cost model vs memory-grid

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
    from rep_tune.deployable import DeployTarget, TargetBudgets
    from rep_tune.device import DeviceProfile

    prof = DeviceProfile.load(f"{out}/profile.yaml")
    precision = prof.dtype if prof.dtype in ("fp32", "bf16", "fp16") else "fp32"
    cfg = preset("paper", "l2p", "vit_base_patch16_224",
                 **{"backbone.pretrained": False, "selection.pretrained": False, "training.epochs": 5,
                    "training.precision": precision})
    cfg.name = "rep-l2p-gpu-check"
    cfg.target = DeployTarget(device="gpu-check", kind="gpu", budgets=TargetBudgets(batch_size=16))
    print(cfg.save(Path(out) / "best_gpu_check.yaml"))
    return 0


# ---- measured rows: one config per fresh process (the allocator's statistics are per process) -------
def measure_one(spec: dict) -> dict:
    """Time and memory of one config in this (fresh) process, with the allocator's view on CUDA.

    ``spec``: preset, method, backbone, overrides, batch, num_classes, classes_per_task, n, warmup,
    iteration, stride, device. Returns the runtime's figures (``ms``: median ms/iteration;
    ``live_mib``: peak live tensor bytes, rep-tune's memory quantity) and, on CUDA, the caching
    allocator's: ``allocator_mib`` (max_memory_allocated in the memory window: what
    ``torch.cuda.max_memory_allocated`` users read), ``requested_mib`` (the same peak before the
    allocator's 512-byte rounding), ``reserved_mib`` (segments held), ``cublas_workspace_mib``
    (freed by clearing cuBLAS's workspaces), ``resident_mib`` (parameters, buffers, optimizer state).
    """
    import torch

    from rep_tune.config import preset
    from rep_tune.runtime.measure import measure_iterations, resident_bytes
    from rep_tune.runtime.model import RepModel

    dev = torch.device(spec.get("device", "cuda"))
    cfg = preset(spec.get("preset", "paper"), spec.get("method", "l2p"), spec["backbone"],
                 **{"backbone.pretrained": False, "selection.pretrained": False, **spec.get("overrides", {})})
    model = RepModel(cfg, spec.get("num_classes", 100))
    cost = measure_iterations(model, batch_size=spec.get("batch"), n=spec.get("n", 10), warmup=spec.get("warmup", 3),
                              memory_iters=1, iteration=spec.get("iteration", 0),
                              iteration_stride=spec.get("stride", 1), device=dev,
                              num_classes=spec.get("num_classes", 100), classes_per_task=spec.get("classes_per_task"))
    mib = 2.0 ** 20
    out = {"ms": cost.latency_ms.value, "live_mib": cost.peak_memory_mb.value,
           "blocks_run": cost.extras.get("blocks_run"),
           "resident_mib": resident_bytes([model]) / mib}
    if dev.type == "cuda":
        st = torch.cuda.memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)   # private: no public way to size it
        if clear is not None:
            clear()
        out.update(allocator_mib=st["allocated_bytes.all.peak"] / mib, requested_mib=st["requested_bytes.all.peak"] / mib,
                   reserved_mib=st["reserved_bytes.all.peak"] / mib,
                   cublas_workspace_mib=(before - torch.cuda.memory_allocated(dev)) / mib if clear else None,
                   allocs=st.get("allocation.all.allocated"))
    return out


def _run_specs(specs: list[dict], parallel: int = 1, timeout: float = 120.0) -> list[dict]:
    """Each spec measured in its own process (``parallel`` at a time: only for memory, never timing)."""
    import concurrent.futures as cf
    import json
    import subprocess

    def one(spec: dict) -> dict:
        try:
            p = subprocess.run([sys.executable, __file__, "measure-one", json.dumps(spec)], capture_output=True,
                               text=True, timeout=timeout)
            line = [x for x in p.stdout.splitlines() if x.startswith("{")]
            if p.returncode == 0 and line:
                return {**spec, **json.loads(line[-1])}
            return {**spec, "error": (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1][:300]}
        except subprocess.TimeoutExpired:
            return {**spec, "error": f"timed out after {timeout:.0f} s"}

    with cf.ThreadPoolExecutor(parallel) as ex:
        return list(ex.map(one, specs))


def _write_rows(rows: list[dict], path: Path, keys: list[str]) -> None:
    cols = keys + ["ms", "live_mib", "allocator_mib", "requested_mib", "reserved_mib", "cublas_workspace_mib",
                   "resident_mib", "blocks_run", "allocs", "error"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()})


def published(out: str, device: str = "cuda", precisions: tuple[str, ...] = ("fp32",)) -> int:
    """bench_published.py's rows timed one after the other on ``device`` (fresh process each)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_published as bp

    T = bp.iterations_per_task()
    n, warmup = 10, 3
    specs = []
    for prec in precisions:
        for row in bp.ROWS + bp.EXPLAIN:
            over = {**row.overrides, "training.precision": prec}
            if row.preset == "paper" and over.get("ald.enabled", True):
                over["ald.horizon"] = T
            # ALD's draws sampled across the task: iterations 0, T/k, 2T/k, ... (k = all iterations run)
            specs.append({"label": row.label, "precision": prec, "preset": row.preset, "method": "l2p",
                          "backbone": bp.BACKBONE, "overrides": over, "batch": bp.WORKLOAD["batch"],
                          "num_classes": bp.WORKLOAD["num_classes"], "classes_per_task": bp.WORKLOAD["classes_per_task"],
                          "n": n, "warmup": warmup, "iteration": 0, "stride": max(1, T // (n + warmup + 1)),
                          "device": device})
    rows = []
    for spec in specs:                       # one at a time (timed), the CSV rewritten after each row
        rows += _run_specs([spec], parallel=1, timeout=60.0)
        _write_rows(rows, Path(out) / "published_measured.csv", ["label", "precision", "batch"])
    for r in rows:
        print(f"{r['precision']} {r['label']:<45} " + (f"error: {r['error']}" if "error" in r else
              f"{r['ms']:8.1f} ms  live {r['live_mib']:8.0f} MiB  allocator {r.get('allocator_mib') or 0:8.0f} MiB  "
              f"blocks {r.get('blocks_run') or 0:.1f}"))
    _write_rows(rows, Path(out) / "published_measured.csv", ["label", "precision", "batch"])
    return 0 if not any("error" in r for r in rows) else 1


MEMORY_GRID = {"backbones": ("vit_tiny_patch16_224", "vit_base_patch16_224"), "methods": ("l2p", "dualprompt", "coda"),
               "presets": ("baseline", "paper"), "batches": (8, 32), "precisions": ("fp32", "bf16")}


def memory_grid(out: str, device: str = "cuda", parallel: int = 12) -> int:
    """Live vs allocator memory over backbones x methods x presets x batch x precision (not timed)."""
    g = MEMORY_GRID
    specs = [{"label": f"{b}/{m}/{p}", "backbone": b, "method": m, "preset": p, "batch": bs, "precision": prec,
              "overrides": {"training.precision": prec}, "num_classes": 100, "n": 1, "warmup": 2, "device": device}
             for b in g["backbones"] for m in g["methods"] for p in g["presets"] for bs in g["batches"]
             for prec in g["precisions"]]
    rows = _run_specs(specs, parallel=parallel, timeout=120.0)
    _write_rows(rows, Path(out) / "memory_grid.csv", ["label", "backbone", "method", "preset", "batch", "precision"])
    print(f"wrote {out}/memory_grid.csv")
    ok = [r for r in rows if "error" not in r and r.get("allocator_mib")]
    if ok:
        ratio = sorted(r["allocator_mib"] / r["live_mib"] for r in ok)
        print(f"allocator / live peak over {len(ok)} configs: min {ratio[0]:.3f}, median {statistics.median(ratio):.3f}, "
              f"max {ratio[-1]:.3f}")
    return 0 if len(ok) == len(rows) else 1


def memory_error(out: str, profile: str = "h100_sxm") -> int:
    """The cost model's peak memory against OUT/memory_grid.csv: the allocator's and the live-tensor peak.

    ``profile``: an uncalibrated profile of the same GPU family (its allocator overhead is the
    family's default, ``rep_tune.cost.memory.allocator_overhead_mb``), so the check does not lean on
    a calibration fitted from the very runs it checks. Prints one line per config and the summary.
    """
    from rep_tune.config import preset
    from rep_tune.cost import predict
    from rep_tune.cost.memory import allocator_overhead_mb
    from rep_tune.device import DeviceProfile

    prof = DeviceProfile.load(profile)
    rows = [r for r in csv.DictReader(open(Path(out) / "memory_grid.csv")) if not r.get("error")]
    live, alloc = [], []
    for r in rows:
        cfg = preset(r["preset"], r["method"], r["backbone"], **{"backbone.pretrained": False,
                                                                "selection.pretrained": False,
                                                                "training.precision": r["precision"]})
        p = predict(cfg, prof, batch=int(r["batch"]), num_classes=100, iters_per_task=1).peak_memory_mb.value
        tensors = p - allocator_overhead_mb(prof)                       # the prediction less the overhead
        live.append(tensors / float(r["live_mib"]) - 1)
        alloc.append(p / float(r["allocator_mib"]) - 1)
        print(f"{r['label']:<42} b{r['batch']:<3} {r['precision']}  predicted {p:7.0f} MiB  allocator "
              f"{float(r['allocator_mib']):7.0f} ({100 * alloc[-1]:+5.1f} %)  live {float(r['live_mib']):7.0f}")

    def summary(e: list[float]) -> str:
        return (f"median |error| {100 * statistics.median(abs(x) for x in e):.1f} %, mean signed "
                f"{100 * statistics.mean(e):+.1f} %, worst {100 * max(e, key=abs):+.1f} %")
    print(f"{len(rows)} configs, profile {prof.name}: predicted vs CUDA allocator peak (max_memory_allocated): "
          f"{summary(alloc)}")
    print(f"tensors only (prediction less its allocator overhead) vs live-tensor peak: {summary(live)}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "cli":
        return cli(argv[1], argv[2:])
    if len(argv) == 2 and argv[0] == "cost-error":
        return cost_error(argv[1])
    if len(argv) == 2 and argv[0] == "verify-config":
        return verify_config(argv[1])
    if len(argv) in (2, 3) and argv[0] == "memory-error":
        return memory_error(*argv[1:])
    if len(argv) == 2 and argv[0] == "measure-one":
        import json
        print(json.dumps(measure_one(json.loads(argv[1]))))
        return 0
    if len(argv) in (2, 4) and argv[0] in ("published", "memory-grid"):
        device = argv[3] if len(argv) == 4 and argv[2] == "--device" else "cuda"
        return (published if argv[0] == "published" else memory_grid)(argv[1], device=device)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
