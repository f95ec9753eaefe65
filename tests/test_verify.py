"""`rep-tune verify` on the CPU: a config whose budgets hold (exit 0), one whose budgets fail (exit 3),
bad input (exit 2), the deployed schedule's two parts, and a profile's fresh prediction."""
from __future__ import annotations

import pytest
import yaml

from rep_tune.cli import main
from rep_tune.config import preset
from rep_tune.deployable import DeployTarget, Expected
from rep_tune.device import DeviceProfile, Spec, Workload, Budgets
from rep_tune.schema import from_dict
from rep_tune.verify import load_plan


def best_config(tmp_path, *, latency=5000.0, memory=4000.0, energy=None, name="best_local.yaml", **over):
    cfg = preset("paper", **{"backbone.pretrained": False, "selection.pretrained": False,
                             "training.iters_per_task": 6, "training.epochs": 3, **over})
    cfg.name = "rep-l2p-local"
    budgets = {"batch_size": 4, "latency_ms": {"value": latency, "unit": "ms", "basis": "test"},
               "peak_memory_mb": {"value": memory, "unit": "MB", "basis": "test"}}
    if energy is not None:
        budgets["energy_j"] = {"value": energy, "unit": "J", "basis": "test"}
    cfg.target = from_dict(DeployTarget, {"device": "local", "profile": None, "kind": "cpu", "budgets": budgets})
    cfg.expected = from_dict(Expected, {"latency_ms": {"value": 40.0, "unit": "ms", "source": "measured"},
                                        "peak_memory_mb": {"value": 30.0, "unit": "MB", "source": "measured"},
                                        "final_acc": {"value": 0.5, "unit": "fraction", "source": "measured"}})
    return cfg.save(tmp_path / name)


def verify(path, *extra):
    return main(["verify", "--config", str(path), "--iters", "2", "--no-progress", "--threads", "1", *extra])


def test_budgets_hold_exit_0_and_report_written(tmp_path, capsys):
    path = best_config(tmp_path)
    assert verify(path) == 0
    out = capsys.readouterr().out
    for col in ("figure", "expected", "measured", "error %", "budget", "pass"):
        assert col in out
    assert "every budget holds" in out
    rep = yaml.safe_load((tmp_path / "verify.yaml").read_text())
    figs = {f["metric"]: f for f in rep["figures"]}
    assert set(figs) == {"latency_ms", "peak_memory_mb", "energy_j"}
    lat = figs["latency_ms"]
    assert lat["measured"]["source"] == "measured" and lat["measured"]["value"] > 0 and lat["pass"] is True
    assert lat["error_pct"] == pytest.approx(100 * (lat["measured"]["value"] / 40.0 - 1), abs=0.01)
    assert figs["peak_memory_mb"]["measured"]["unit"] == "MiB" and figs["peak_memory_mb"]["pass"] is True
    assert figs["energy_j"]["measured"]["source"] in ("measured", "estimated") and figs["energy_j"]["pass"] is None
    assert rep["batch_size"] == 4 and rep["exit_code"] == 0
    # default workload: 5000 images per task -> 1250 per epoch at batch 4, capped at 6: one part, query computed
    assert [p["query"] for p in rep["schedule"]["parts"]] == ["computed"]


def test_violated_budget_exit_3(tmp_path, capsys):
    path = best_config(tmp_path, latency=0.001)
    assert verify(path) == 3
    out = capsys.readouterr().out
    assert "budget violated: latency_ms" in out and "NO" in out
    rep = yaml.safe_load((tmp_path / "verify.yaml").read_text())
    assert rep["exit_code"] == 3 and {f["metric"]: f["pass"] for f in rep["figures"]}["latency_ms"] is False


@pytest.mark.parametrize("source, hint", [("predicted", "calibrate the cost model"),
                                          ("measured", "figures the search measured differ")])
def test_expected_far_off_says_what_to_do(tmp_path, capsys, source, hint):
    path = best_config(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["expected"]["latency_ms"].update(value=1e-3, source=source)     # far below any measurement
    data["expected"]["peak_memory_mb"]["value"] = 3000.0                 # far above (and fits in RAM)
    path.write_text(yaml.safe_dump(data))
    assert verify(path) == 0
    out = capsys.readouterr().out
    assert hint in out and "rep-tune profile" in out
    line = next(x for x in out.splitlines() if hint in x)
    assert "latency_ms" in line and ("peak_memory_mb" in line) == (source == "measured")


def profile_file(tmp_path, images_per_task=8):
    prof = DeviceProfile(name="tinybox", kind="cpu", spec=Spec(peak_tflops={"fp32": 0.1}, memory_bandwidth_gbs=10.0,
                                                               memory_mb=8000, power_w=20.0),
                         budgets=Budgets(batch_size=4, latency_ms=1e6, peak_memory_mb=6000),
                         workload=Workload(images_per_task=images_per_task, epochs=3))
    return prof.save(tmp_path / "tinybox.yaml")


def test_device_profile_gives_budgets_schedule_and_prediction(tmp_path, capsys):
    path = best_config(tmp_path)
    prof = profile_file(tmp_path)
    plan = load_plan(path, device=str(prof), iters=2)
    # 8 images per task at batch 4: 2 iterations per epoch, 3 epochs capped at 6
    assert (plan.iters_per_task, plan.first_epoch_iters) == (6, 2)
    assert [(p.t0, p.t1, p.cached_query) for p in plan.parts] == [(0, 2, False), (2, 6, True)]
    assert plan.budgets["latency_ms"][0] == 1e6 and "tinybox" in plan.expected_from
    assert plan.expected["latency_ms"].source == "estimated"       # uncalibrated profile
    assert plan.power_w == 20.0
    assert verify(path, "--device", str(prof)) == 0
    rep = yaml.safe_load((tmp_path / "verify.yaml").read_text())
    parts = rep["schedule"]["parts"]
    assert [p["query"] for p in parts] == ["computed", "cached"]
    lat = {f["metric"]: f for f in rep["figures"]}["latency_ms"]["measured"]
    first, cached = (p["cost"]["latency_ms"]["value"] for p in parts)
    assert lat["value"] == pytest.approx((2 * first + 4 * cached) / 6, rel=1e-4)   # the schedule mean


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d["expected"]["latency_ms"].update(value="fast"), "expected.latency_ms.value"),
    (lambda d: d["target"]["budgets"]["latency_ms"].update(value=-1), "target.budgets.latency_ms.value"),
    (lambda d: d["backbone"].update(name="vit_tiny_patch8_64"), "no such model"),
    # the typed sections refuse what a hand parser skipped: a misspelt budget, a source nobody writes
    (lambda d: d["target"]["budgets"].update(latency=5), "target.budgets.latency"),
    (lambda d: d["expected"]["latency_ms"].update(source="guessed"), "expected.latency_ms.source"),
    (lambda d: d["target"].pop("device"), "target.device"),
])
def test_bad_input_exit_2(tmp_path, capsys, mutate, message):
    path = best_config(tmp_path)
    data = yaml.safe_load(path.read_text())
    mutate(data)
    path.write_text(yaml.safe_dump(data))
    assert verify(path) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and "Traceback" not in err
    assert not (tmp_path / "verify.yaml").exists()


def test_missing_config_and_folder_exit_2(tmp_path, capsys):
    assert verify(tmp_path / "nope.yaml") == 2
    assert verify(tmp_path) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "found a folder" in err


def test_expected_memory_beyond_this_machine_is_refused(tmp_path, capsys):
    path = best_config(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["expected"]["peak_memory_mb"]["value"] = 1e9                    # a petabyte-class target
    path.write_text(yaml.safe_dump(data))
    assert verify(path) == 2
    assert "exceeds the" in capsys.readouterr().err


def test_backbone_timm_cannot_build_here_is_refused(tmp_path, capsys, monkeypatch):
    import timm
    path = best_config(tmp_path)
    real = timm.is_model
    monkeypatch.setattr(timm, "is_model", lambda name: False if name.startswith("vit_pico") else real(name))
    assert verify(path) == 2                       # e.g. an older timm on the device than where the search ran
    err = capsys.readouterr().err
    assert "selection.surrogate" in err and "cannot be built here" in err
    assert not (tmp_path / "verify.yaml").exists()
