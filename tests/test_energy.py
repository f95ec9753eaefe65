"""Energy windows around training: the run's energy comes from the counter when one is readable
(a RAPL sysfs tree in tmp_path stands in for the hardware), is labelled estimated and said once
when none is, and a failing meter never fails a run."""
from __future__ import annotations

import os
import threading
import time

import pytest

from rep_tune.config import preset
from rep_tune.data.scenario import Scenario
from rep_tune.profiler import energy as energy_mod
from rep_tune.profiler import rapl
from rep_tune.profiler.energy import RunEnergy
from rep_tune.profiler.meter import EnergyMeter
from rep_tune.profiler.monitor import Monitor
from rep_tune.runtime.learner import train
from rep_tune.runtime.measure import measure_iterations

RANDOM = {"backbone.pretrained": False, "selection.pretrained": False}
TINY = Scenario(dataset="digits", n_tasks=2, max_per_class=8, test_fraction=0.05)
FAKE_W = 1000.0                       # the fake package's power: far from any estimate (15 W here)


def tiny_config(**over):
    return preset("paper", **RANDOM, **{"training.epochs": 6, "training.iters_per_task": 6, "training.eval_batch_size": 256, **over})


class FakeRapl:
    """A powercap tree whose package counter reads FAKE_W x elapsed time (rewritten every 2 ms)."""

    def __init__(self, root):
        z = root / "intel-rapl:0"
        z.mkdir(parents=True)
        (z / "name").write_text("package-0\n")
        (z / "max_energy_range_uj").write_text(f"{2 ** 50}\n")
        self.file = z / "energy_uj"
        self.t0 = time.monotonic()
        self._write()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _write(self):
        tmp = self.file.with_name("energy_uj.tmp")
        tmp.write_text(f"{int(FAKE_W * 1e6 * (time.monotonic() - self.t0))}\n")
        os.replace(tmp, self.file)

    def _loop(self):
        while not self.stop.wait(0.002):
            self._write()

    def close(self):
        self.stop.set()
        self.thread.join()


@pytest.fixture
def fake_rapl(tmp_path, monkeypatch):
    monkeypatch.setattr(rapl, "POWERCAP", tmp_path)          # detect_meters reads it at call time
    tree = FakeRapl(tmp_path)
    yield tree
    tree.close()


def test_training_energy_comes_from_the_rapl_counter(fake_rapl):
    from rep_tune.profiler.energy import training_meter
    res = train(tiny_config(), TINY, progress=False, energy=training_meter)
    e = res.cost.energy_j
    assert e is not None and e.source == "measured" and "rapl" in e.detail and e.unit == "J"
    # FAKE_W x the time of an iteration: the estimate would be ~65x smaller
    seconds_per_iter = res.cost.latency_ms.value / 1000
    assert 0.5 * FAKE_W * seconds_per_iter < e.value < 5 * FAKE_W * seconds_per_iter, (e, seconds_per_iter)
    # 2 tasks x 6 iterations, less the run's 3 warm-up ones and each task's memory-probed one: the
    # energy covers exactly the iterations the time per iteration is the median of
    assert "over 7 training iterations" in e.detail and res.cost.extras["timed_iterations"] == 7
    assert res.to_dict()["cost"]["energy_j"]["source"] == "measured"


def test_measure_iterations_energy_from_the_counter(fake_rapl):
    run = RunEnergy.for_this_machine("cpu")
    try:
        cost = measure_iterations(tiny_config(), batch_size=4, n=3, warmup=1, memory_iters=0, energy=run)
    finally:
        run.close()
    assert cost.energy_j.source == "measured"
    assert cost.energy_j.value == pytest.approx(FAKE_W * run.seconds / 3, rel=0.2)


def test_no_counter_is_estimated_and_said_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rapl, "POWERCAP", tmp_path / "none")
    energy_mod._SAID.clear()
    a = RunEnergy.for_this_machine("cpu")
    b = RunEnergy.for_this_machine("cpu")
    a.close(), b.close()
    err = capsys.readouterr().err
    assert err.count("ESTIMATED") == 1 and "RAPL" in err
    from rep_tune.profiler.energy import training_meter
    # 4 iterations a task: the run's first 3 are warm-up and each task's 4th is memory-probed, so
    # task 1's first 3 are the timed ones the energy (like the time per iteration) covers
    res = train(tiny_config(**{"training.iters_per_task": 4}), TINY, progress=False, energy=training_meter)
    assert res.cost.energy_j.source == "estimated" and "estimated from" in res.cost.energy_j.detail
    assert "ESTIMATED" not in capsys.readouterr().err                         # said once per process


class Breaks(EnergyMeter):
    """Reads fine at first, then raises (a sensor that disappears mid-run)."""

    kind, source = "rapl", "measured"

    def __init__(self, good_reads=1):
        self.reads, self.good = 0, good_reads

    @property
    def domains(self):
        return ("package-0",)

    def read(self):
        self.reads += 1
        if self.reads > self.good:
            raise OSError("energy_uj vanished")
        return {"package-0": 0.001 * self.reads}


def test_a_failing_meter_never_fails_the_run(capsys):
    energy_mod._SAID.clear()
    run = RunEnergy(Monitor([Breaks()], track_memory=False), power_w=10.0)
    res = train(tiny_config(**{"training.iters_per_task": 4}), TINY, progress=False, energy=run)
    assert res.tasks_done == 2
    e = res.cost.energy_j
    assert e.source == "estimated" and "meter failed" in e.detail
    assert capsys.readouterr().err.count("energy meter failed") == 1


def test_meters_that_cannot_start_fall_back_to_an_estimate(monkeypatch):
    from rep_tune.profiler import detect

    def boom(**kw):
        raise RuntimeError("driver crashed")
    monkeypatch.setattr(detect, "detect_meters", boom)
    from rep_tune.profiler.energy import training_meter
    res = train(tiny_config(**{"training.iters_per_task": 4}), TINY, progress=False, energy=training_meter)
    assert res.cost.energy_j.source == "estimated" and "driver crashed" in res.cost.energy_j.detail


def test_energy_off_and_no_power_figure():
    res = train(tiny_config(**{"training.iters_per_task": 2}), TINY, progress=False, energy=False)
    assert res.cost.energy_j is None
    run = RunEnergy(Monitor([Breaks(good_reads=0)], track_memory=False), power_w=None)
    run.begin()
    run.end(3)
    assert run.per_iteration() is None                    # nothing to estimate from: omitted, not invented
