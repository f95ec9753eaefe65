"""What the GPU machines allow: benchmarks/gpu_check.sh parses and dry-runs anywhere; the runtime,
profiler, cost model and verify import and run with optuna, ray, scikit-learn, scipy and psutil
absent (as on the GPU images); the script's python steps work."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ROOT / "benchmarks" / "gpu_check_steps.py"
ENV = dict(os.environ, PYTHONPATH=str(ROOT), PYTHON=sys.executable)


def test_script_syntax_and_dry_run():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 0, r.stderr
    steps = [x.split()[0] for x in r.stdout.splitlines() if "(<=" in x]
    assert steps == ["gpu", "profile", "published", "memory", "verify"]
    assert "gpu_check_steps.py published" in r.stdout and "benchmarks/results/gpu-" in r.stdout
    limits = [int(x.split("<=")[1].split("s)")[0]) for x in r.stdout.splitlines() if "(<=" in x]
    assert sum(limits) <= 540                           # every step at its limit ends inside a 10-minute device call
    some = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--steps", "bench,cost"], capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert [x.split()[0] for x in some.stdout.splitlines() if "(<=" in x] == ["bench", "cost"]
    assert "vit_tiny_patch16_224,vit_base_patch16_224" in some.stdout and "--precisions fp32,bf16" in some.stdout
    for bad_args in (["--bogus"], ["--dry-run", "--steps", "bench,nope"]):
        bad = subprocess.run(["bash", str(SCRIPT), *bad_args], capture_output=True, text=True, env=ENV)
        assert bad.returncode == 2


# imports with the packages the GPU images lack made unimportable (sys.modules[name] = None)
BLOCKED = ("optuna", "optuna_dashboard", "ray", "sklearn", "scipy", "psutil")
IMPORTS = r'''
import sys
for name in {blocked!r}:
    sys.modules[name] = None
import rep_tune.runtime.measure, rep_tune.runtime.learner, rep_tune.runtime.step
import rep_tune.profiler, rep_tune.profiler.device_profile, rep_tune.profiler.energy, rep_tune.profiler.probe
import rep_tune.cost, rep_tune.cost.calibrate, rep_tune.cost.deploy
import rep_tune.verify, rep_tune.cli.verify, rep_tune.cli.profile, rep_tune.cli.train
sys.path.insert(0, {bench!r})
import bench_runtime, gpu_check_steps
# and run: a CPU memory window, the profiler's memory probe, verify end to end on a tiny config
from rep_tune.runtime.measure import PeakMemory, RssPeak
import torch
with PeakMemory("cpu") as pm:
    t = torch.empty(2 ** 20, dtype=torch.uint8)
assert pm.transient_bytes >= 2 ** 20
assert RssPeak().stop().value > 0
from rep_tune.profiler.probe import memory_mb
total, usable = memory_mb(torch.device("cpu"))
assert 0 < usable <= total
from rep_tune.config import preset
cfg = preset("paper", **{{"backbone.pretrained": False, "selection.pretrained": False, "training.iters_per_task": 4}})
cfg.target = {{"device": "x", "budgets": {{"batch_size": 2, "latency_ms": {{"value": 1e6}}}}}}
cfg.save(sys.argv[1])
rc = gpu_check_steps.cli("verify", ["--config", sys.argv[1], "--iters", "1", "--no-progress", "--threads", "1"])
assert rc == 0, rc
# the same config under a budget no CPU meets: the verdict must be a violation (exit 3), or the 0 above proves nothing
import os
os.makedirs(sys.argv[2], exist_ok=True)
cfg.target = {{"device": "x", "budgets": {{"batch_size": 2, "latency_ms": {{"value": 0.001}}}}}}
cfg.save(os.path.join(sys.argv[2], "best.yaml"))
rc = gpu_check_steps.cli("verify", ["--config", os.path.join(sys.argv[2], "best.yaml"), "--iters", "1", "--no-progress",
                                    "--threads", "1"])
assert rc == 3, rc
for name in {blocked!r}:
    assert sys.modules[name] is None, name
print("ok")
'''


def test_gpu_paths_import_and_run_without_optuna_ray_sklearn_scipy_psutil(tmp_path):
    code = IMPORTS.format(blocked=BLOCKED, bench=str(ROOT / "benchmarks"))
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "best.yaml"), str(tmp_path / "tight")],
                       capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]
    assert yaml.safe_load((tmp_path / "verify.yaml").read_text())["exit_code"] == 0
    tight = yaml.safe_load((tmp_path / "tight" / "verify.yaml").read_text())
    assert tight["exit_code"] == 3


def test_cost_error_and_verify_config_steps(tmp_path):
    from rep_tune.device import DeviceProfile
    prof = DeviceProfile.load("cpu_x86_generic")
    prof.save(tmp_path / "profile.yaml")
    rows = [{"backbone": "vit_tiny_patch16_224", "variant": v, "precision": "fp32", "batch": 16,
             "ms_per_iter": ms, "peak_mib": mib} for v, ms, mib in (("baseline L2P", 400.0, 300.0),
                                                                    ("REP paper defaults", 250.0, 200.0))]
    with open(tmp_path / "bench_runtime_gpuhost.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    sys.path.insert(0, str(STEPS.parent))
    try:
        import gpu_check_steps as steps
    finally:
        sys.path.pop(0)
    assert steps.cost_error(str(tmp_path)) == 0
    got = list(csv.DictReader(open(tmp_path / "cost_model_error.csv")))
    assert [g["variant"] for g in got] == ["baseline", "paper"]
    for g in got:
        assert float(g["error_pct"]) == pytest.approx(100 * (float(g["predicted_ms"]) / float(g["measured_ms"]) - 1),
                                                      abs=0.01)
    assert steps.verify_config(str(tmp_path)) == 0
    from rep_tune.config import RepConfig
    cfg = RepConfig.load(tmp_path / "best_gpu_check.yaml")
    assert cfg.backbone.name == "vit_base_patch16_224" and cfg.training.precision == prof.dtype
    assert steps.cli("verify", ["--config", str(tmp_path / "missing.yaml")]) == 2


def test_measure_one_and_memory_error_steps(tmp_path):
    """The measured-row step on the CPU (one fresh process), and the memory-error report on its CSV."""
    import json
    sys.path.insert(0, str(STEPS.parent))
    try:
        import gpu_check_steps as steps
    finally:
        sys.path.pop(0)
    spec = {"label": "x", "backbone": "vit_micro_patch2_28", "preset": "paper", "batch": 4, "n": 1, "warmup": 1,
            "device": "cpu", "num_classes": 10, "overrides": {"training.precision": "fp32"}}
    row = steps._run_specs([spec], timeout=300)[0]
    assert "error" not in row, row
    assert row["ms"] > 0 and row["live_mib"] > row["resident_mib"] > 0 and row["blocks_run"] >= 1
    assert "allocator_mib" not in row                   # the allocator's view exists on CUDA only
    # memory-error: a grid row whose allocator figure is exactly the prediction -> 0 % error
    from rep_tune.config import preset
    from rep_tune.cost import predict
    from rep_tune.device import DeviceProfile
    cfg = preset("paper", "l2p", "vit_tiny_patch16_224", **{"backbone.pretrained": False,
                                                           "selection.pretrained": False})
    pred = predict(cfg, DeviceProfile.load("h100_sxm"), batch=8, num_classes=100, iters_per_task=1).peak_memory_mb.value
    steps._write_rows([{"label": "t", "backbone": "vit_tiny_patch16_224", "method": "l2p", "preset": "paper",
                        "batch": 8, "precision": "fp32", "live_mib": pred - 65.0, "allocator_mib": pred}],
                      tmp_path / "memory_grid.csv", ["label", "backbone", "method", "preset", "batch", "precision"])
    out = subprocess.run([sys.executable, str(STEPS), "memory-error", str(tmp_path), "h100_sxm"], capture_output=True,
                         text=True, env=ENV, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "median |error| 0.0 %" in out.stdout.splitlines()[-2], out.stdout
    assert json.loads(json.dumps(row))["label"] == "x"
