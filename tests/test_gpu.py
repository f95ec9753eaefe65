"""CUDA paths (skipped without an NVIDIA GPU; run by benchmarks/gpu_check.sh): the allocator peak,
REP iterations in fp32/bf16 on the GPU, NVML energy in a training run, and `rep-tune verify`.
Imports nothing beyond what the GPU machines have (no optuna, no ray)."""
from __future__ import annotations

import pytest
import torch

from rep_tune.config import preset

RANDOM = {"backbone.pretrained": False, "selection.pretrained": False}
pytestmark = pytest.mark.gpu


def test_cuda_peak_memory_counts_a_known_allocation():
    from rep_tune.runtime.measure import PeakMemory
    torch.zeros(1, device="cuda")
    with PeakMemory("cuda") as pm:
        a = torch.empty(64 * 2 ** 20, dtype=torch.uint8, device="cuda")
        b = torch.empty(32 * 2 ** 20, dtype=torch.uint8, device="cuda")
        del b
    assert 96 * 2 ** 20 <= pm.transient_bytes < 97 * 2 ** 20
    del a


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_rep_iterations_on_cuda(precision):
    from rep_tune.runtime.measure import measure_iterations
    cfg = preset("paper", "l2p", "vit_tiny_patch16_224", **RANDOM, **{"training.precision": precision})
    cost = measure_iterations(cfg, batch_size=8, n=3, warmup=2, memory_iters=1, device="cuda", num_classes=100)
    assert cost.latency_ms.value > 0 and torch.cuda.get_device_name() in cost.latency_ms.detail
    assert "CUDA max_memory_allocated" in cost.peak_memory_mb.detail and cost.peak_memory_mb.value > 10
    assert precision in cost.latency_ms.detail


def test_training_on_cuda_measures_nvml_energy(tmp_path):
    from rep_tune.runtime.learner import train
    cfg = preset("paper", "l2p", "vit_tiny_patch16_224", **RANDOM,
                 **{"training.iters_per_task": 20, "training.precision": "bf16", "backbone.img_size": 96})
    from rep_tune.profiler.energy import training_meter
    res = train(cfg, _scenario(tmp_path), device="cuda", progress=False, energy=training_meter)
    e = res.cost.energy_j
    assert e is not None and e.source in ("measured", "integrated") and "nvml" in e.detail
    assert res.cost.peak_memory_mb.unit == "MiB" and res.device.startswith("cuda")


def _scenario(root):
    """A 4-class image folder (digits would need scikit-learn, absent on the GPU machines)."""
    import numpy as np
    from PIL import Image

    from rep_tune.data.scenario import Scenario
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("test", 8)):          # train/ and test/: no scikit-learn split needed
        for c in range(4):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / split / f"c{c}" / f"{i}.png")
    return Scenario(dataset="folder", data_path=str(root), n_tasks=2)


def test_verify_on_cuda(tmp_path, capsys):
    import argparse

    from rep_tune.cli.verify import add_arguments, run
    cfg = preset("paper", "l2p", "vit_tiny_patch16_224", **RANDOM, **{"training.iters_per_task": 40})
    cfg.target = {"device": "gpu", "budgets": {"batch_size": 16, "latency_ms": {"value": 1e4}}}
    cfg.expected = {"latency_ms": {"value": 10.0, "unit": "ms", "source": "predicted"}}
    path = cfg.save(tmp_path / "best_gpu.yaml")
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert run(p.parse_args(["--config", str(path), "--iters", "3", "--run-on", "cuda", "--no-progress"])) == 0
    out = capsys.readouterr().out
    assert "CUDA" in out or "cuda" in out
