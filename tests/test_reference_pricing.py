"""Memory as the CUDA allocator sees it, the base method's separate query model, and eager attention:
what the cost model needs to price the REP reference runtime (benchmarks/bench_published.py) and a
GPU's ``torch.cuda.max_memory_allocated``. Each checks the model against the arithmetic it claims and
the real runtime (embedded timm ViTs) on the CPU; the CUDA measurement is the gpu-marked test at the end."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rep_tune.config import preset
from rep_tune.cost import predict
from rep_tune.cost.memory import ALLOCATOR_OVERHEAD_MB, MiB, allocator_overhead_mb
from rep_tune.device import DeviceProfile

RANDOM = {"backbone.pretrained": False, "selection.pretrained": False}
H200_PROFILE = Path(__file__).resolve().parents[1] / "benchmarks/results/gpu-nvidia-h200/profile.yaml"


def _mem(cfg, profile) -> float:
    return predict(cfg, profile, batch=8, iters_per_task=1).peak_memory_mb.value


def test_allocator_overhead_is_cublas_workspace_by_gpu_family():
    cfg = preset("paper", "l2p", "vit_tiny_patch16_224", **RANDOM)
    cpu = _mem(cfg, DeviceProfile.load("cpu_x86_generic"))
    assert _mem(cfg, DeviceProfile.load("h100_sxm")) - cpu == pytest.approx(65.0)        # Hopper: 2 x 32 + 1
    assert _mem(cfg, DeviceProfile.load("rtx3090")) - cpu == pytest.approx(17.25)        # 2 x 8.125 + 1
    assert _mem(cfg, DeviceProfile.load("jetson_orin")) - cpu == pytest.approx(ALLOCATOR_OVERHEAD_MB["cuda"])
    assert allocator_overhead_mb(DeviceProfile.load("raspberry_pi5")) == 0.0
    # a calibrated profile measured its own overhead: the fitted one is used, not the family default
    h200 = DeviceProfile.load(H200_PROFILE)
    assert h200.calibrated
    assert _mem(cfg, h200) - cpu == pytest.approx(h200.calibration.memory_overhead_mb, abs=1e-6)


def test_separate_query_model_holds_the_backbone_weights_twice():
    from rep_tune.archs import arch_of
    from rep_tune.runtime.measure import resident_bytes
    from rep_tune.runtime.model import RepModel

    sep = preset("baseline", "l2p", **RANDOM)
    assert sep.selection.query_model == "separate"          # the reference code's original_model
    shared = sep.replace(**{"selection.query_model": "shared"})
    prof = DeviceProfile.load("cpu_x86_generic")
    ps, pd = (predict(c, prof, batch=8, iters_per_task=1) for c in (shared, sep))
    params = arch_of(sep.backbone.name).params
    assert (pd.extras["resident_mb"] - ps.extras["resident_mb"]) * MiB == pytest.approx(4 * params)
    assert pd.latency_ms.value == pytest.approx(ps.latency_ms.value)    # the same work
    # the runtime holds exactly that much more, and computes the same query
    torch.manual_seed(0)
    m_shared = RepModel(shared, 10)
    torch.manual_seed(0)
    m_sep = RepModel(sep, 10)
    weights = sum(p.numel() * p.element_size() for p in m_shared.backbone.parameters())
    assert resident_bytes([m_sep]) - resident_bytes([m_shared]) == pytest.approx(weights, rel=0.01)
    assert m_sep.surrogate is not m_shared.backbone and not any(p.requires_grad for p in m_sep.surrogate.parameters())
    x = torch.randn(4, 1, 28, 28).expand(-1, 3, -1, -1)
    assert torch.allclose(m_sep.query(x), m_shared.query(x), atol=1e-6)
    with pytest.raises(ValueError, match="selection.query_model"):
        sep.replace(**{"selection.query_model": "twice"}).validate()


def test_eager_attention_computes_what_fused_does():
    from rep_tune.runtime.model import RepModel

    cfg = preset("paper", "l2p", **RANDOM, **{"ald.enabled": False, "atom.prop_attn": True})
    out = {}
    for att in ("fused", "eager"):
        torch.manual_seed(0)
        m = RepModel(cfg.replace(**{"backbone.attention": att}), 10).eval()
        torch.manual_seed(1)
        x = torch.randn(4, 3, 28, 28)
        with torch.no_grad():
            out[att] = m(x, query=m.query(x)).logits
    assert torch.allclose(out["fused"], out["eager"], atol=1e-4)
    with pytest.raises(ValueError, match="backbone.attention"):
        cfg.replace(**{"backbone.attention": "flash"}).validate()


def test_eager_attention_memory_is_priced():
    """The probabilities eager attention keeps for backward: predicted vs measured (CPU runtime)."""
    from rep_tune.runtime.measure import measure_iterations

    prof = DeviceProfile.load("cpu_x86_generic")
    measured, predicted = {}, {}
    for att in ("fused", "eager"):
        cfg = preset("paper", "l2p", **RANDOM, **{"ald.enabled": False, "backbone.attention": att})
        measured[att] = measure_iterations(cfg, batch_size=8, n=1, warmup=1, memory_iters=1).peak_memory_mb.value
        predicted[att] = _mem(cfg, prof)
    d_meas, d_pred = measured["eager"] - measured["fused"], predicted["eager"] - predicted["fused"]
    assert d_meas > 10                                          # eager keeps ~B*H*N^2 per block
    assert d_pred == pytest.approx(d_meas, rel=0.3)
    assert predicted["eager"] == pytest.approx(measured["eager"], rel=0.15)


@pytest.mark.gpu
def test_cuda_peak_counts_cublas_workspaces_as_the_model_does():
    from rep_tune.runtime.measure import measure_iterations

    cfg = preset("paper", "l2p", "vit_tiny_patch16_224", **RANDOM, **{"ald.enabled": False})
    hopper = any(h in torch.cuda.get_device_name().lower() for h in ("h100", "h200", "h800"))
    prof = DeviceProfile.load("h100_sxm" if hopper else "rtx3090")
    cost = measure_iterations(cfg, batch_size=8, n=1, warmup=1, memory_iters=1, device="cuda", num_classes=100)
    pred = predict(cfg, prof, batch=8, num_classes=100, iters_per_task=1).peak_memory_mb.value
    assert cost.peak_memory_mb.value == pytest.approx(pred, rel=0.1)
    assert cost.peak_memory_mb.value >= allocator_overhead_mb(prof) + 50
