"""Adding a cost metric is one ``register_metric`` call: the CLI flag, profile budgets, verdicts,
constraints, the trial record, trials.csv and the Pareto files follow from the registry.

The hypothetical metric ``power_w`` (mean power while training) is registered in a fixture; a
training that measures it (here: the fake train_fn at the Trainer seam, as a measuring runtime
would) is the only other code a real metric needs.
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np
import pytest

from rep_tune.cli import build_parser
from rep_tune.device import Budgets, DeviceProfile
from rep_tune.figures import Cost, Figure, Metric, register_metric, unregister_metric
from rep_tune.search.budgets import parse_budget

sys.path.insert(0, str(Path(__file__).parent))
from search_fakes import PROXY, FakeTrain, write_space  # noqa: E402


@pytest.fixture
def power_w():
    m = register_metric(Metric("power_w", "W", "power", "mean power while training", {"w": 1.0, "mw": 1e-3},
                               default_relative=None))
    yield m
    unregister_metric("power_w")


def test_a_registered_metric_gets_a_flag_a_budget_field_and_parsing(power_w):
    parser = build_parser()
    args = parser.parse_args(["search", "--device", "local", "--power-budget", "1500mW"])
    assert args.budget_power_w == "1500mW"
    assert parse_budget("1500mW", "power_w").value == pytest.approx(1.5)
    assert parse_budget("0.8x", "power_w").relative
    prof = DeviceProfile.from_dict({"name": "dev", "kind": "cpu", "spec": {"peak_tflops": {"fp32": 0.1}, "memory_bandwidth_gbs": 20.0},
                                    "budgets": {"latency_ms": 100.0, "power_w": 12.0}})
    assert prof.budgets.power_w == 12.0 and dict(prof.budgets.items()) == {"latency_ms": 100.0, "power_w": 12.0}
    assert DeviceProfile.from_dict(prof.to_dict()).budgets.power_w == 12.0
    assert Budgets().power_w is None


class PowerTrain(FakeTrain):
    """The fake training, measuring the new metric as a runtime that knew it would."""

    def __call__(self, config, scenario, **kw):
        res = super().__call__(config, scenario, **kw)
        watts = 8.0 + 0.5 * config.prompt.length      # longer prompts: more power
        res.cost = Cost(latency_ms=Figure(50.0, "ms", "measured"), peak_memory_mb=Figure(30.0, "MiB", "measured"),
                        power_w=Figure(watts, "W", "measured", "fake meter"))
        return res


def test_a_search_constrains_records_and_reports_the_new_metric(power_w, tmp_path):
    from rep_tune.search.record import TrialRecord
    from rep_tune.search.run import SearchSettings, search

    settings = SearchSettings(confirm_seeds=0, devices=["local"], space=write_space(tmp_path / "space.yaml"), backbone=PROXY,
                              n_trials=4, timeout=None, n_workers=1, run_dir=str(tmp_path / "run"), progress=False,
                              seed=0, budgets={"power_w": "10W", "latency_ms": "1e6ms", "peak_memory_mb": "1e6MB"})
    outcome = search(settings, train_fn=PowerTrain(0.0), out=io.StringIO())
    trained = [TrialRecord.read(t) for t in outcome.study.get_trials() if TrialRecord.read(t).trained]
    assert trained
    for r in trained:
        watts = r.value_of("power_w", "local")
        assert watts is not None
        assert r.feasible("local") == (watts <= 10.0)
    rows = list(csv.DictReader(open(outcome.run_dir / "trials.csv")))
    assert "power_w@local" in rows[0] and "power_w_source@local" in rows[0]
    assert any(row["power_w_source@local"] == "measured" for row in rows)
    pareto = list(csv.DictReader(open(outcome.run_dir / "pareto_local.csv")))
    assert "power_w" in pareto[0]
    values = [float(row["power_w"]) for row in pareto if row["power_w"]]
    assert values and np.all(np.asarray(values) > 0)
