"""Peak-memory and timing measurement: a known allocation is counted; peak grows with batch size."""
import torch

from rep_tune.config import preset
from rep_tune.runtime.measure import IterationTimer, PeakMemory, measure_iterations, measure_step, resident_bytes


def test_known_allocation_is_counted():
    with PeakMemory("cpu") as pm:
        a = torch.empty(4 * 2 ** 20, dtype=torch.uint8)      # 4 MiB, live at the end
        b = torch.empty(2 * 2 ** 20, dtype=torch.uint8)      # +2 MiB -> 6 MiB peak
        del b
    assert 6 * 2 ** 20 <= pm.transient_bytes < 6 * 2 ** 20 + 64 * 1024
    del a


def test_freed_temporaries_count_only_while_live():
    with PeakMemory("cpu") as pm:
        for _ in range(3):
            t = torch.empty(2 ** 20, dtype=torch.uint8)
            del t
    assert 2 ** 20 <= pm.transient_bytes < 2 ** 20 + 64 * 1024


def test_resident_bytes_counts_params_buffers_and_optimizer_state():
    lin = torch.nn.Linear(100, 10)          # 1010 floats
    lin.register_buffer("buf", torch.zeros(25))
    opt = torch.optim.Adam(lin.parameters())
    assert resident_bytes([lin], [opt]) == 4 * (1010 + 25)
    lin(torch.randn(2, 100)).sum().backward()
    opt.step()                              # Adam: exp_avg + exp_avg_sq per parameter (+ step scalars)
    assert resident_bytes([lin], [opt]) >= 4 * (1010 + 25 + 2 * 1010)


def test_measure_step_reports_measured_figures():
    w = torch.nn.Parameter(torch.randn(64, 64))

    def step(i):
        (torch.randn(32, 64) @ w).sum().backward()

    cost = measure_step(step, n=3, warmup=1, memory_iters=1, resident=lambda: w.numel() * 4)
    assert cost.latency_ms.source == "measured" and cost.latency_ms.value > 0
    assert cost.peak_memory_mb.source == "measured" and "peak live tensor bytes" in cost.peak_memory_mb.detail
    assert cost.peak_memory_mb.value * 2 ** 20 >= w.numel() * 4 + 32 * 64 * 4
    t = IterationTimer()
    t.times = [1.0, 0.002, 0.004, 0.003]
    assert t.summary_ms(skip=1) == 3.0


def test_peak_memory_grows_with_batch_size():
    cfg = preset("baseline", **{"backbone.pretrained": False, "training.clip_grad": None})
    small = measure_iterations(cfg, batch_size=2, n=1, warmup=1, memory_iters=1)
    large = measure_iterations(cfg, batch_size=8, n=1, warmup=1, memory_iters=1)
    assert large.peak_memory_mb.value > small.peak_memory_mb.value * 1.3
    assert small.extras["blocks_run"] == 12
