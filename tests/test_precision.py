"""Mixed precision: autocast bf16/fp16 for the frozen backbone's compute, fp32 prompts/keys/head,
a loss scaler for fp16; bf16 training runs and learns on the CPU."""
import pytest
import torch

from rep_tune.config import EMBEDDED_BACKBONE, EMBEDDED_SURROGATE, preset
from rep_tune.data.scenario import Scenario
from rep_tune.runtime.backbone import embedded_weights
from rep_tune.runtime.learner import train
from rep_tune.runtime.measure import measure_iterations
from rep_tune.runtime.model import RepModel
from rep_tune.runtime.step import class_mask, make_optimizer, make_precision, train_step

RANDOM = {"backbone.pretrained": False, "selection.pretrained": False}


def _fixed_batch(cfg, n=16, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = cfg.backbone.arch.img_size
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, classes, (n,), generator=g)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_runs_the_backbone_in_half_and_keeps_trainables_fp32(precision):
    cfg = preset("paper", **RANDOM, **{"training.precision": precision, "training.lr": 0.3})
    model = RepModel(cfg, 10).train()
    seen = []
    hook = model.backbone.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    opt = make_optimizer(cfg, model.trainable_parameters())
    prec = make_precision(cfg, "cpu")
    assert (prec.scaler is not None) == (precision == "fp16")
    x, y = _fixed_batch(cfg)
    with prec.autocast():
        q = model.query(x)
    losses = [train_step(model, opt, x, y, query=q, iteration=0, task_id=0, mask=class_mask(10, range(4)),
                         clip_grad=1.0, precision=prec)[0] for _ in range(6)]
    hook.remove()
    assert seen and all(d == prec.dtype for d in seen)                    # the frozen block ran in half
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.trainable_parameters())
    assert all(p.dtype == torch.float32 for p in model.backbone.parameters())   # weights untouched
    assert losses[-1] < losses[0]                                         # it learns the batch


def test_fp32_path_has_no_autocast():
    cfg = preset("baseline", **RANDOM, **{"selection.query_model": "shared"})   # query through the hooked backbone
    model = RepModel(cfg, 10).train()
    seen = []
    hook = model.backbone.blocks[0].attn.qkv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x, y = _fixed_batch(cfg)
    prec = make_precision(cfg)
    assert prec.name == "fp32" and prec.scaler is None
    train_step(model, make_optimizer(cfg, model.trainable_parameters()), x, y, query=None, iteration=0, precision=prec)
    hook.remove()
    assert seen == [torch.float32, torch.float32]          # query forward + training forward


def test_measure_iterations_reports_the_precision():
    cfg = preset("paper", **RANDOM, **{"training.precision": "bf16"})
    cost = measure_iterations(cfg, batch_size=4, n=1, warmup=1, memory_iters=1)
    assert "bf16" in cost.latency_ms.detail and cost.peak_memory_mb.value > 0


HAVE_WEIGHTS = all(embedded_weights(n).is_file() for n in (EMBEDDED_BACKBONE, EMBEDDED_SURROGATE))


@pytest.mark.skipif(not HAVE_WEIGHTS, reason="embedded backbone weights not committed yet")
def test_bf16_training_learns():
    cfg = preset("paper", **{"training.precision": "bf16", "training.iters_per_task": 15, "training.lr": 0.3,
                             "training.eval_batch_size": 256})
    res = train(cfg, Scenario(dataset="digits", n_tasks=2, max_per_class=20, test_fraction=0.2), progress=False,
                energy=False)
    assert "bf16" in res.cost.latency_ms.detail
    first = res.per_task[0]
    # task 0 has 5 classes: chance is 0.2 on its test set (all 10 classes compete, untrained ones score low)
    assert res.acc_matrix[0, 0] > 0.5, res.acc_matrix
    assert res.final_acc > 0.2, res.acc_matrix
    assert first.mean_loss == first.mean_loss                              # finite
