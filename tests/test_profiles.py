"""Shipped device profiles load, validate, and carry the figures of DEVICE_SPECS.md."""
from __future__ import annotations

import pytest

from rep_tune.device import PROFILES_DIR, DeviceProfile
from rep_tune.profiler.catalog import catalog, render

SHIPPED = ["jetson_orin", "jetson_orin_nano", "jetson_orin_nano_super", "jetson_orin_nx", "jetson_xavier_nx",
           "jetson_nano", "raspberry_pi5", "rtx3090", "rtx4090", "a100_80gb", "h100_sxm", "l4", "t4",
           "cpu_x86_generic"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads_and_is_explained(name):
    p = DeviceProfile.load(PROFILES_DIR / f"{name}.yaml").validate()
    assert p.name == name
    assert p.sources and p.description and p.budgets.rationale
    assert p.calibration is None and not p.calibrated          # spec only: the cost model flags it
    assert p.budgets.batch_size == 16 and p.budgets.latency_ms > 0
    assert 0 < p.budgets.peak_memory_mb <= p.spec.usable_memory_mb < p.spec.memory_mb
    assert p.dtype in p.spec.peak_tflops


def test_key_figures_match_device_specs():
    P = lambda n: DeviceProfile.load(n)                                    # noqa: E731
    assert P("h100_sxm").spec.peak_tflops["fp16"] == 989 and P("h100_sxm").spec.memory_bandwidth_gbs == 3350
    assert P("a100_80gb").spec.peak_tflops == {"fp32": 19.5, "fp16": 312, "bf16": 312}
    assert P("t4").spec.peak_tflops == {"fp32": 8.1, "fp16": 65}                  # no BF16 on Turing
    assert P("rtx3090").spec.peak_tflops["fp16"] == 71
    assert P("l4").spec.power_w == 72
    orin = P("jetson_orin")
    assert orin.spec.peak_tflops["fp32"] == 5.3 and orin.spec.peak_tflops["fp16"] == 42.6
    assert orin.spec.memory_bandwidth_gbs == 204.8 and orin.telemetry == "jetson-ina3221"
    nano = P("jetson_orin_nano")
    assert nano.spec.usable_memory_mb < 8000 and nano.spec.peak_tflops["fp16"] == 10.2
    assert P("jetson_orin_nx").spec.usable_memory_mb == 14486
    assert P("jetson_orin_nano_super").spec.peak_tflops["fp16"] == 16.7
    assert P("jetson_nano").dtype == "fp32" and P("jetson_nano").spec.peak_tflops["fp32"] == 0.236
    assert P("raspberry_pi5").dtype == "fp32" and P("raspberry_pi5").telemetry == "none"
    assert P("cpu_x86_generic").dtype == "fp32" and P("cpu_x86_generic").telemetry == "rapl"
    for n in ("h100_sxm", "a100_80gb", "rtx4090", "l4", "t4"):
        assert P(n).dtype == "fp16" and P(n).telemetry == "nvml"


def test_derived_and_weak_figures_are_labelled():
    assert "[D" in DeviceProfile.load("jetson_orin_nano").description
    assert "[W" in DeviceProfile.load("jetson_orin_nano").description
    assert any("DS-11105-001" in s for s in DeviceProfile.load("jetson_orin_nano").sources)


def test_latency_budgets_scale_with_throughput():
    lat = {n: DeviceProfile.load(n).budgets.latency_ms for n in ("h100_sxm", "a100_80gb", "jetson_orin_nx")}
    assert lat["h100_sxm"] < lat["a100_80gb"] < lat["jetson_orin_nx"]


def test_devices_table_lists_every_shipped_profile(tmp_path):
    user = DeviceProfile.load("t4")
    user.name = "my_t4"
    user.save(tmp_path / "my_t4.yaml")
    (tmp_path / "broken.yaml").write_text("name: x\nkind: toaster\n")
    entries = catalog([tmp_path])
    names = {e.profile.name for e in entries if e.profile}
    assert set(SHIPPED) <= names and "my_t4" in names
    text = render(entries)
    assert "h100_sxm" in text and "989 fp16" in text and "INVALID" in text and "(user)" in text
    row = next(line for line in text.splitlines() if line.startswith("jetson_orin_nano "))
    assert "5200" in row and "no" in row
