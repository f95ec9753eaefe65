"""Telemetry backends and measurement windows: sysfs trees in tmp_path, a fake pynvml at the import boundary."""
from __future__ import annotations

import os
import pathlib
import sys
import time
import types
import warnings

import pytest

from rep_tune.profiler import detect, jetson, nvml
from rep_tune.profiler.meter import EstimatedMeter
from rep_tune.profiler.monitor import Monitor, ShortWindowWarning
from rep_tune.profiler.rapl import RaplMeter, RaplPermissionError


# ---------------------------------------------------------------- RAPL
def put(path: pathlib.Path, value: int) -> None:
    """Atomic write, as a sysfs read never sees a half-written counter."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{value}\n")
    os.replace(tmp, path)


def rapl_tree(root: pathlib.Path, max_range: int = 1000) -> dict[str, pathlib.Path]:
    zones = {"intel-rapl:0": "package-0", "intel-rapl:0:0": "core", "intel-rapl:0:1": "dram"}
    out = {}
    for d, name in zones.items():
        z = root / d
        z.mkdir(parents=True)
        (z / "name").write_text(name + "\n")
        (z / "max_energy_range_uj").write_text(f"{max_range}\n")
        (z / "energy_uj").write_text("0\n")
        out[name] = z / "energy_uj"
    return out


def test_rapl_names_and_several_wraps(tmp_path):
    files = rapl_tree(tmp_path, max_range=1000)
    files["package-0"].write_text("900\n")
    meter = RaplMeter(tmp_path)
    assert meter.domains == ("package-0", "package-0/core", "package-0/dram")
    raw = 900
    for _ in range(10):                      # 10 x 350 uJ from 900: wraps at 1000 three times
        raw = (raw + 350) % 1000
        files["package-0"].write_text(f"{raw}\n")
        files["dram"].write_text("40\n")
        meter.read()
    e = meter.read()
    assert e["package-0"] == pytest.approx(3500e-6)
    assert e["package-0/dram"] == pytest.approx(40e-6)
    assert meter.total(e) == pytest.approx(3540e-6)          # core is inside the package


def test_rapl_background_poller_counts_wraps_in_a_window(tmp_path):
    files = rapl_tree(tmp_path, max_range=1000)
    meter = RaplMeter(tmp_path, poll_s=0.005)
    with Monitor([meter], track_memory=False) as mon:
        mon.begin_window("long")
        raw = 0
        for _ in range(8):                   # 8 x 400 uJ = 3200 uJ, three wraps, seen only by the poller
            raw = (raw + 400) % 1000
            put(files["package-0"], raw)
            time.sleep(0.05)
        res = mon.end_window("long")
    assert res.energy["package-0"].value == pytest.approx(3200e-6)
    assert res.energy["package-0"].source == "measured"
    assert res.total_energy.value == pytest.approx(3200e-6)


def test_rapl_permission_error_says_how_to_fix(tmp_path, monkeypatch):
    rapl_tree(tmp_path)
    real = pathlib.Path.read_text

    def denied(self, *a, **k):
        if self.name == "energy_uj":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **k)
    monkeypatch.setattr(pathlib.Path, "read_text", denied)
    with pytest.raises(RaplPermissionError) as e:
        RaplMeter(tmp_path)
    msg = str(e.value)
    assert "root" in msg and "chmod o+r" in msg and "CVE-2020-8694" in msg and "udev" in msg
    meters, notes = detect.detect_meters(power_w=20.0, jetson_root=tmp_path, powercap=tmp_path)
    assert [m.source for m in meters] == ["estimated"]
    assert any("chmod o+r" in n for n in notes)


# ---------------------------------------------------------------- Jetson INA3221
def hwmon(root, monitor, rails: dict[int, tuple[str, float, float]]):
    d = root / f"sys/bus/i2c/drivers/ina3221/{monitor}/hwmon/hwmon3"
    d.mkdir(parents=True)
    for n, (label, mv, ma) in rails.items():
        (d / f"in{n}_label").write_text(label + "\n")
        (d / f"in{n}_input").write_text(f"{mv}\n")
        (d / f"curr{n}_input").write_text(f"{ma}\n")
    return d


def iio(root, monitor, rails: dict[int, tuple[str, float]]):
    d = root / f"sys/bus/i2c/drivers/ina3221x/{monitor}/iio:device0"
    d.mkdir(parents=True)
    for n, (label, mw) in rails.items():
        (d / f"rail_name_{n}").write_text(label + "\n")
        (d / f"in_power{n}_input").write_text(f"{mw}\n")
    return d


def orin_nano(root):
    return hwmon(root, "1-0040", {1: ("VDD_IN", 5000, 1000), 2: ("VDD_CPU_GPU_CV", 5000, 400),
                                  3: ("VDD_SOC", 5000, 300)})


def test_hwmon_orin_nano_total_is_vdd_in(tmp_path):
    orin_nano(tmp_path)
    m = jetson.JetsonMeter(tmp_path, model="NVIDIA Jetson Orin Nano Developer Kit")
    assert set(m.domains) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC", "total"}
    p = m.power_w()
    assert p["VDD_IN"] == pytest.approx(5.0) and p["VDD_SOC"] == pytest.approx(1.5)
    assert p["total"] == pytest.approx(5.0)                   # not 5 + 2 + 1.5


def test_iio_jetson_nano_total_is_pom_5v_in_only(tmp_path):
    iio(tmp_path, "6-0040", {0: ("POM_5V_IN", 4000), 1: ("POM_5V_GPU", 1000), 2: ("POM_5V_CPU", 800)})
    m = jetson.JetsonMeter(tmp_path, model="")
    assert m.total_rails == ["POM_5V_IN"]
    assert m.power_w()["total"] == pytest.approx(4.0)


def agx_orin(root, with_sys=True):
    rails = {1: ("VDD_GPU_SOC", 5000, 600), 2: ("VDD_CPU_CV", 5000, 400)}
    if with_sys:
        rails[3] = ("VIN_SYS_5V0", 5000, 800)
    hwmon(root, "1-0040", rails)
    d = hwmon(root, "1-0041", {1: ("NC", 0, 0), 2: ("VDDQ_VDD2_1V8AO", 5000, 200), 3: ("NC", 0, 0)})
    (d / "in7_label").write_text("sum of shunt voltages\n")


def test_agx_orin_total_excludes_vddq(tmp_path):
    agx_orin(tmp_path)
    m = jetson.JetsonMeter(tmp_path, model="NVIDIA Jetson AGX Orin Developer Kit")
    assert "VDDQ_VDD2_1V8AO" in m.domains and "NC" not in m.domains
    assert sorted(m.total_rails) == sorted(jetson.AGX_ORIN_RAILS)
    assert m.power_w()["total"] == pytest.approx(3.0 + 2.0 + 4.0)       # not + 1.0


def test_missing_rail_is_a_clear_error(tmp_path):
    agx_orin(tmp_path, with_sys=False)
    with pytest.raises(jetson.JetsonRailError, match="VIN_SYS_5V0"):
        jetson.JetsonMeter(tmp_path, model="NVIDIA Jetson AGX Orin Developer Kit")
    with pytest.raises(jetson.JetsonRailError, match="VDD_IN"):
        jetson.total_rule(["VDD_CPU_GPU_CV", "VDD_SOC"], "NVIDIA Jetson Orin Nano Developer Kit")
    with pytest.raises(jetson.JetsonRailError, match="no INA3221 rails"):
        jetson.total_rule([], "")


def test_constant_power_integrates_to_p_times_t(tmp_path):
    orin_nano(tmp_path)                                        # total 5 W
    meter = jetson.JetsonMeter(tmp_path, model="Jetson Orin Nano", poll_s=0.01)
    with Monitor([meter], track_memory=False) as mon:
        with mon.window("w") as w:
            time.sleep(0.3)
    r = w.result
    assert meter.integrator.samples >= 10                      # the background poller ran
    assert r.total_energy.source == "integrated"
    assert r.total_energy.value == pytest.approx(5.0 * r.elapsed_s, rel=0.03)
    assert r.energy["VDD_SOC"].value == pytest.approx(1.5 * r.elapsed_s, rel=0.03)
    assert not r.short_window


def test_jetson_detection_and_power_mode(tmp_path):
    assert not jetson.is_jetson(tmp_path, machine="aarch64")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    assert jetson.is_jetson(tmp_path, machine="aarch64")
    assert not jetson.is_jetson(tmp_path, machine="x86_64")
    assert jetson.power_mode(lambda cmd: "NV Power Mode: MAXN_SUPER\n2\n") == "MAXN_SUPER"
    assert jetson.power_mode(lambda cmd: "") is None


# ---------------------------------------------------------------- NVML (fake module at the import boundary)
def fake_pynvml(*, energy=True, memory=True, power_mw=50_000.0):
    nv = types.ModuleType("pynvml")
    nv.NVML_ERROR_NOT_SUPPORTED = 3
    nv.NVML_CLOCK_SM, nv.NVML_CLOCK_MEM = 1, 2

    class NVMLError(Exception):
        def __init__(self, value):
            self.value = value
            super().__init__("Not Supported" if value == 3 else f"error {value}")
    nv.NVMLError = NVMLError
    nv.counter_mj = [1000]

    def unsupported(*a):
        raise NVMLError(3)
    nv.nvmlInit = lambda: None
    nv.nvmlDeviceGetCount = lambda: 1
    nv.nvmlDeviceGetHandleByIndex = lambda i: f"h{i}"
    nv.nvmlDeviceGetName = lambda h: b"Fake GPU"
    nv.nvmlSystemGetDriverVersion = lambda: "550.1"
    nv.nvmlDeviceGetMemoryInfo = (lambda h: types.SimpleNamespace(total=2 ** 34, used=2 ** 30)) if memory else unsupported
    nv.nvmlDeviceGetClockInfo = lambda h, c: 1500
    nv.nvmlDeviceGetMaxClockInfo = lambda h, c: 1980
    nv.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=7, memory=3)
    nv.nvmlDeviceGetEnforcedPowerLimit = lambda h: 300_000
    nv.nvmlDeviceGetPowerUsage = lambda h: power_mw
    nv.nvmlDeviceGetTotalEnergyConsumption = (lambda h: nv.counter_mj[0]) if energy else unsupported
    return nv


def test_nvml_energy_counter_is_measured(monkeypatch):
    nv = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    meter = nvml.NvmlMeter()
    assert meter.source == "measured" and meter.domains == ("gpu0",)
    with Monitor([meter], track_memory=False) as mon:
        with mon.window("train") as w:
            time.sleep(0.12)
            nv.counter_mj[0] += 5000
    assert w.result.energy["gpu0"].value == pytest.approx(5.0)
    assert w.result.total_energy.source == "measured" and not w.result.short_window


def test_nvml_without_energy_counter_polls_and_integrates(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(energy=False, power_mw=50_000.0))
    meter = nvml.NvmlMeter(indices=[0], poll_s=0.01)
    assert meter.source == "integrated"
    with Monitor([meter], track_memory=False) as mon:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ShortWindowWarning)
            with mon.window("w") as w:
                time.sleep(0.25)
    r = w.result
    assert r.energy["gpu0"].source == "integrated"
    assert r.energy["gpu0"].value == pytest.approx(50.0 * r.elapsed_s, rel=0.03)
    assert r.short_window       # 0.25 s < the 1 s averaging period of nvmlDeviceGetPowerUsage
    with pytest.raises(ValueError, match="10 Hz"):
        nvml.NvmlMeter(indices=[0], poll_s=0.5)


def test_nvml_unsupported_queries_are_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(memory=False))
    info = nvml.gpu_info(0)
    assert info["name"] == "Fake GPU" and info["driver"] == "550.1"
    assert info["memory_total_mb"] is None and info["memory_used_mb"] is None
    assert {"memory_total_mb", "memory_used_mb"} <= set(info["unsupported"])
    assert info["power_limit_w"] == pytest.approx(300.0) and info["sm_clock_max_mhz"] == 1980


def test_cuda_visible_devices_maps_to_nvml_indices(monkeypatch):
    nv = fake_pynvml()
    nv.nvmlDeviceGetCount = lambda: 4
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert nvml.visible_indices(nv) == [2, 3]


def test_short_window_is_flagged_not_zero(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(power_mw=80_000.0))
    mon = Monitor([nvml.NvmlMeter()], track_memory=False)
    with pytest.warns(ShortWindowWarning, match="shorter than"):
        mon.begin_window("tiny")
        res = mon.end_window("tiny")               # the counter did not move
    assert res.short_window
    assert res.energy["gpu0"].value > 0 and res.energy["gpu0"].source == "estimated"
    assert res.energy["gpu0"].value == pytest.approx(80.0 * res.elapsed_s, rel=0.5)


def test_jetson_is_detected_before_nvml(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())     # NVML would answer too
    monkeypatch.setattr(jetson.platform, "machine", lambda: "aarch64")
    (tmp_path / "usr/lib/aarch64-linux-gnu/tegra").mkdir(parents=True)
    orin_nano(tmp_path)
    meters, _ = detect.detect_meters(jetson_root=tmp_path, powercap=tmp_path / "none")
    assert [m.kind for m in meters] == ["jetson-ina3221"]


# ---------------------------------------------------------------- estimated, memory, windows
def test_estimated_energy_is_labelled_and_never_mixed():
    mon = Monitor([EstimatedMeter(10.0, "test")])
    with mon.window("w") as w:
        time.sleep(0.1)
    r = w.result
    assert r.total_energy.source == "estimated"
    assert r.total_energy.value == pytest.approx(10.0 * r.elapsed_s, rel=0.05)
    assert r.peak_memory_mb.value > 0 and r.peak_memory_mb.source == "measured"
    assert r.to_cost().energy_j.source == "estimated"


def test_measured_and_estimated_totals_are_not_summed(tmp_path):
    rapl_tree(tmp_path)
    mon = Monitor([RaplMeter(tmp_path), EstimatedMeter(10.0)], track_memory=False)
    mon.begin_window("w")
    time.sleep(0.01)
    r = mon.end_window("w")
    mon.close()
    assert r.total_energy is None and any("never summed" in n for n in r.notes)
    assert r.energy["device"].source == "estimated" and r.energy["package-0"].source == "measured"


def test_begin_end_window_errors():
    mon = Monitor([EstimatedMeter(5.0)], track_memory=False)
    mon.begin_window("a")
    with pytest.raises(ValueError, match="already open"):
        mon.begin_window("a")
    with pytest.raises(ValueError, match="no open"):
        mon.end_window("b")
    assert mon.end_window("a").name == "a"


def test_this_vm_falls_back_to_an_estimate():
    mon = Monitor.for_this_machine(power_w=12.0)
    if mon.estimated:
        assert mon.telemetry == "none" and "12 W" in mon.describe()
    mon.close()


# ---------------------------------------------------------------- real hardware
@pytest.mark.gpu
def test_real_nvml_meter_and_info():
    info = nvml.gpu_info(0)
    assert info["name"]
    meter = nvml.NvmlMeter(indices=[0])
    with Monitor([meter], track_memory=False) as mon:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ShortWindowWarning)
            with mon.window("sleep") as w:
                time.sleep(1.2)
    assert w.result.energy["gpu0"].source in ("measured", "integrated")
    assert w.result.energy["gpu0"].value > 0


@pytest.mark.rapl
def test_real_rapl():
    meter = RaplMeter()
    with Monitor([meter], track_memory=False) as mon:
        with mon.window("sleep") as w:
            time.sleep(0.2)
    assert w.result.total_energy.value > 0 and w.result.total_energy.source == "measured"


@pytest.mark.jetson
def test_real_jetson_rails():
    meter = jetson.JetsonMeter()
    assert meter.power_w()["total"] > 0
