"""RepModel: trainable set, shared backbone, prompt selection and pull loss of L2P and DualPrompt."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from rep_tune.config import preset
from rep_tune.runtime.model import RepModel
from rep_tune.runtime.prompts import batchwise_vote

OFFLINE = {"backbone.pretrained": False, "selection.pretrained": False, "ald.enabled": False}




def _x(seed: int = 0, b: int = 4) -> torch.Tensor:
    return torch.randn(b, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_trainable_parameters_and_shared_frozen_backbone():
    a = RepModel(preset("paper", "l2p", **OFFLINE), 10)
    b = RepModel(preset("paper", "dualprompt", **OFFLINE), 7)
    assert a.backbone is b.backbone and a.surrogate is b.surrogate
    trainable = {id(p) for p in a.trainable_parameters()}
    expected = {id(a.prompt.prompts), id(a.prompt.keys), id(a.head.weight), id(a.head.bias)}
    assert trainable == expected
    assert not any(p.requires_grad for p in a.backbone.parameters())
    a.train()
    assert a.training and not a.backbone.training and not a.surrogate.training
    assert b.head.out_features == 7


def test_batchwise_vote_picks_most_frequent_ids():
    idx = torch.tensor([[3, 1], [3, 2], [2, 3], [0, 2]])
    assert batchwise_vote(idx, 2).tolist() == [[2, 3]] * 4        # 3 and 2 twice or more; ties -> smaller id


def test_l2p_selection_pull_loss_and_head_on_prompts():
    cfg = preset("paper", "l2p", **OFFLINE, **{"prompt.batchwise": False, "atom.enabled": False})
    model = RepModel(cfg, 10).eval()
    x = _x(1)
    q = model.query(x)
    out = model(x, q)
    sim = F.normalize(q, dim=1) @ F.normalize(model.prompt.keys, dim=1).t()
    top = sim.topk(5, dim=1)
    assert torch.equal(out.prompt_idx, top.indices)
    assert torch.allclose(out.pull_loss, -0.1 * top.values.sum() / 4, atol=1e-6)
    # head over the mean of the prompt-token outputs: changing a non-selected prompt changes nothing
    unused = sorted(set(range(10)) - set(out.prompt_idx.flatten().tolist()))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.prompt.prompts[unused] += torch.randn(len(unused), 5, 96, generator=g)
        assert torch.allclose(model(x, q).logits, out.logits)
        model.prompt.prompts[out.prompt_idx[0, 0]] += torch.randn(5, 96, generator=g)
        assert not torch.allclose(model(x, q).logits, out.logits)


def test_l2p_batchwise_gives_one_prompt_set():
    model = RepModel(preset("paper", "l2p", **OFFLINE), 10).train()
    out = model(_x(2))
    assert (out.prompt_idx == out.prompt_idx[0]).all() and len(set(out.prompt_idx[0].tolist())) == 5


def test_dualprompt_task_prompt_in_training_query_match_in_eval():
    model = RepModel(preset("paper", "dualprompt", **OFFLINE), 10)
    x = _x(3)
    q = model.query(x)
    out = model.train()(x, q, task_id=3)
    assert out.prompt_idx.flatten().tolist() == [3] * 4
    key = F.normalize(model.prompt.keys[3], dim=0)
    coeff = model.config.prompt.pull_coeff       # 1.0: REP's DualPrompt flags (was 0.1 before the preset fix)
    assert coeff == 1.0
    assert torch.allclose(out.pull_loss, -coeff * (F.normalize(q, dim=1) @ key).sum() / 4, atol=1e-6)
    evaluated = model.eval()(x, q)
    best = (F.normalize(q, dim=1) @ F.normalize(model.prompt.keys, dim=1).t()).argmax(dim=1)
    assert evaluated.prompt_idx[:, 0].tolist() == best.tolist()
    assert evaluated.logits.shape == (4, 10) and evaluated.tokens[0] == 197     # 196 patches + CLS
