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


def test_time_ms_is_the_timer_median():
    from rep_tune.runtime.measure import time_ms
    calls = []
    ms = time_ms(lambda: calls.append(1), "cpu", warmup=2, reps=5)
    assert len(calls) == 7 and 0 <= ms < 50


def test_cpu_windows_cannot_nest():
    import pytest
    with PeakMemory("cpu"):
        with pytest.raises(RuntimeError, match="cannot nest"):
            PeakMemory("cpu").__enter__()
    with PeakMemory("cpu") as pm:                 # the lock was released: a new window works
        a = torch.empty(2 ** 20, dtype=torch.uint8)
    assert pm.transient_bytes >= 2 ** 20
    del a


# Two threads measure peak memory at once while writing to fd 2 inside their windows: both
# writes reach the pipe (no fd swap), each thread counts only its own allocations, and the
# profiler's start/stop log lines stay silent.
THREADS = r'''
import os, sys, threading
import torch
from rep_tune.runtime.measure import PeakMemory
barrier = threading.Barrier(2)
peaks = {}
def work(i):
    barrier.wait()
    for _ in range(3):
        with PeakMemory("cpu") as pm:
            a = torch.empty((i + 1) * 2 ** 20, dtype=torch.uint8)
            os.write(2, f"fd2-marker-{i}\n".encode())
            print(f"py-marker-{i}", file=sys.stderr, flush=True)
            del a
        peaks[i] = max(peaks.get(i, 0), pm.transient_bytes)
ts = [threading.Thread(target=work, args=(i,)) for i in range(2)]
for t in ts: t.start()
for t in ts: t.join()
os.write(2, b"fd2-after\n")
print(peaks[0], peaks[1])
'''

MAIN_THREAD = r'''
import os
import torch
from rep_tune.runtime.measure import PeakMemory
before = torch.empty(1000)
with PeakMemory("cpu") as pm:
    del before                      # frees a block allocated before the window
    os.write(2, b"fd2-in-window\n")
os.write(2, b"fd2-after\n")
'''


def _run(script):
    import os
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("KINETO_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)


def test_concurrent_windows_keep_stderr_and_count_per_thread():
    r = _run(THREADS)
    assert r.returncode == 0, r.stderr
    for text in ("fd2-marker-0", "fd2-marker-1", "py-marker-0", "py-marker-1", "fd2-after"):
        assert r.stderr.count(text) == (1 if text == "fd2-after" else 3), r.stderr
    assert "profiler_start" not in r.stderr and "profiler_stop" not in r.stderr
    p0, p1 = map(int, r.stdout.split())
    assert 2 ** 20 <= p0 < 2 ** 20 + 64 * 1024          # thread 0 sees its 1 MiB only
    assert 2 * 2 ** 20 <= p1 < 2 * 2 ** 20 + 64 * 1024  # thread 1 its 2 MiB only


def test_main_thread_window_is_silent_and_stderr_intact():
    r = _run(MAIN_THREAD)
    assert r.returncode == 0, r.stderr
    assert "fd2-in-window" in r.stderr and "fd2-after" in r.stderr
    assert "Memory block of unknown size" not in r.stderr and "profiler_start" not in r.stderr, r.stderr
