"""Prompt methods behind one registry: the runtime and the cost model agree on the layout of every
registered method; method-specific behaviour (carry-over, CODA's per-task components, L2P's vote)."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import yaml

from rep_tune.config import RepConfig, preset
from rep_tune.cost.counts import count
from rep_tune.data.scenario import Scenario
from rep_tune.methods import METHODS, PromptGeometry, get_method
from rep_tune.runtime import atom
from rep_tune.runtime.learner import train
from rep_tune.runtime.metrics import forgetting
from rep_tune.runtime.model import RepModel
from rep_tune.runtime.prompts import PROMPT_MODULES, grouped_vote
from rep_tune.runtime.selection import process_cache
from rep_tune.schema import SchemaError

OFFLINE = {"backbone.pretrained": False, "selection.pretrained": False}


def _x(b: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def _record_prefixes(monkeypatch) -> dict[int, int]:
    """Patch block_forward to record each block's prefix length (keys/values added in attention)."""
    seen: dict[int, int] = {}
    original = atom.block_forward
    calls = {"i": 0}

    def spy(blk, h, *, prefix=None, **kw):
        seen[calls["i"]] = 0 if prefix is None else prefix[0].shape[2]
        calls["i"] += 1
        return original(blk, h, prefix=prefix, **kw)

    monkeypatch.setattr("rep_tune.runtime.model.block_forward", spy)
    return seen


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("protect", [True, False])
def test_runtime_layout_equals_the_layout_function(method, protect, monkeypatch):
    cfg = preset("paper", method, **OFFLINE, **{"ald.enabled": False, "atom.protect_prompts": protect})
    lay = cfg.layout()
    model = RepModel(cfg, 10).train()
    model.begin_task(0, 5)
    seen = _record_prefixes(monkeypatch)
    out = model(_x(), model.query(_x()), task_id=0)
    assert out.tokens[0] == lay.n_tokens == lay.n_prefix + lay.n_prompt + lay.n_patches
    assert (model.n_protected, model.mergeable) == (lay.n_protected, lay.mergeable)
    assert tuple(seen[i] for i in range(lay.depth)) == lay.prefix
    assert tuple(model.dropper.protected) == lay.prompt_blocks
    method_params = sum(p.numel() for p in model.prompt.parameters())
    assert method_params == lay.geometry.trainable
    assert sum(p.numel() for p in model.trainable_parameters()) == lay.trainable(10)
    # the cost model counts the same tokens, prefixes and trainable elements
    c = count(cfg, num_classes=10)
    assert c.blocks[0].tokens == lay.n_tokens
    assert [b.kv_len - b.tokens for b in c.blocks] == list(lay.prefix)
    assert c.trainable == lay.trainable(10)
    assert [b.grad for b in c.blocks] == [i >= lay.first_grad for i in range(lay.depth)]


def test_every_registered_method_has_a_runtime_module_a_section_and_presets():
    assert list(METHODS) == ["l2p", "dualprompt", "coda"]
    assert set(PROMPT_MODULES) == set(METHODS)
    for name, m in METHODS.items():
        assert m.section().method == name
        for p in ("baseline", "paper"):
            cfg = preset(p, name)
            assert cfg.prompt.method == name and RepConfig.from_dict(cfg.to_dict()) == cfg
        assert isinstance(m.geometry(m.section(), 12, 96), PromptGeometry)


def test_paper_presets_follow_the_published_settings():
    dp = preset("paper", "dualprompt").prompt
    assert (dp.length, dp.top_k, dp.pull_coeff, dp.g_length, dp.g_layers, dp.e_layers, dp.carry_over) == \
        (20, 1, 1.0, 5, [0, 1], [2, 3, 4], True)
    coda = preset("paper", "coda", backbone="vit_base_patch16_224")
    assert (coda.prompt.pool_size, coda.prompt.length, coda.prompt.ortho_mu, coda.prompt.layers) == (100, 8, 0.0, [0, 1, 2, 3, 4])
    # width 96: at most 96 keys can be mutually orthogonal, so the preset sizes the pool to 90
    assert preset("paper", "coda").prompt.pool_size == 90
    coda = preset("paper", "coda")
    assert coda.layout().prompt_blocks == (0, 1, 2, 3, 4) and coda.layout().prefix[:6] == (4, 4, 4, 4, 4, 0)
    assert max(preset("paper", "l2p").merge_schedule) == 2 * get_method("l2p").paper_r


def test_a_section_holds_only_its_methods_fields(tmp_path):
    data = preset("paper", "dualprompt").to_dict()
    data["prompt"]["batchwise"] = True                     # an L2P field in a DualPrompt section
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SchemaError) as e:
        RepConfig.load(path)
    assert e.value.field == "prompt.batchwise" and "carry_over" in e.value.expected
    data = preset("paper", "coda").to_dict()
    data["prompt"]["length"] = 7
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SchemaError, match="prompt.length"):
        RepConfig.load(path)


def test_version_1_files_migrate():
    v1 = preset("paper", "dualprompt").to_dict()
    v1["version"] = 1
    v1["prompt"].update(batchwise=False, length=5, pull_coeff=0.1)     # v1 wrote every method's fields
    cfg = RepConfig.from_dict(v1)
    assert cfg.version == 2 and cfg.prompt.method == "dualprompt"
    assert (cfg.prompt.length, cfg.prompt.pull_coeff) == (5, 0.1)      # explicit values are kept
    assert not hasattr(cfg.prompt, "batchwise")


def test_non_finite_numbers_are_refused():
    data = preset("paper").to_dict()
    data["training"]["lr"] = float("inf")
    with pytest.raises(SchemaError, match="training.lr"):
        RepConfig.from_dict(data, source="c.yaml")
    data = preset("paper").to_dict()
    data["ald"]["gamma"] = float("nan")
    with pytest.raises(SchemaError, match="ald.gamma"):
        RepConfig.from_dict(data, source="c.yaml")


def test_dualprompt_carry_over_copies_the_previous_task_prompt():
    model = RepModel(preset("paper", "dualprompt", **OFFLINE), 10)
    e = model.prompt.e_prompts
    before = e.detach().clone()
    model.begin_task(0, 5)
    assert torch.equal(e, before)                          # task 0: nothing to carry
    model.begin_task(1, 5)
    assert torch.equal(e[:, :, 1], before[:, :, 0]) and torch.equal(e[:, :, 2:], before[:, :, 2:])
    off = RepModel(preset("paper", "dualprompt", **OFFLINE, **{"prompt.carry_over": False}), 10)
    b2 = off.prompt.e_prompts.detach().clone()
    off.begin_task(1, 5)
    assert torch.equal(off.prompt.e_prompts, b2)


def test_coda_trains_only_the_current_tasks_components():
    model = RepModel(preset("paper", "coda", **OFFLINE, **{"ald.enabled": False}), 10).train()
    model.begin_task(1, 5)                                 # 90 components / 5 tasks: task 1 owns 18..35
    out = model(_x(), model.query(_x()), task_id=1)
    (out.logits.sum() + out.pull_loss).backward()
    for grads in (model.prompt.p[0].grad, model.prompt.k[0].grad, model.prompt.a[0].grad):
        norms = grads.flatten(1).norm(dim=1)
        assert torch.all(norms[:18] == 0) and torch.all(norms[36:] == 0) and torch.all(norms[18:36] > 0)
    model.eval()
    weights = model.prompt.select(model.query(_x()), None).weights
    assert weights[0].shape == (4, 36)                     # evaluation uses tasks 0..1's components


def test_coda_begins_each_task_orthogonal_to_the_earlier_tasks_components():
    model = RepModel(preset("paper", "coda", **OFFLINE), 10)
    pr = model.prompt
    with torch.no_grad():                                  # as if task 0 had trained: its rows moved
        for t in (pr.p[0], pr.k[0], pr.a[0]):
            t[:18] += 0.3 * torch.randn_like(t[:18])
    before = [t.detach().clone() for t in (pr.p[0], pr.k[0], pr.a[0])]
    model.begin_task(1, 5)
    for t, old in zip((pr.p[0], pr.k[0], pr.a[0]), before):
        flat, old = t.detach().flatten(1), old.flatten(1)
        assert torch.equal(flat[:18], old[:18])            # task 0's learned rows are kept
        new = flat[18:36]
        assert torch.allclose(new @ old[:18].t(), torch.zeros(18, 18), atol=1e-5)   # orthogonal to task 0's
        assert torch.allclose(new @ new.t(), torch.eye(18), atol=1e-5)             # orthonormal among themselves
    # the same seed and task draw the same rows (a resumed run re-initialises task 1 identically)
    twin = RepModel(preset("paper", "coda", **OFFLINE), 10)
    with torch.no_grad():
        for t, old in zip((twin.prompt.p[0], twin.prompt.k[0], twin.prompt.a[0]), before):
            t.copy_(old.view_as(t))
    twin.begin_task(1, 5)
    assert torch.equal(twin.prompt.k[0], pr.k[0]) and torch.equal(twin.prompt.p[0], pr.p[0])


def test_gram_schmidt_rows_beyond_the_width_are_unit_rows():
    from rep_tune.runtime.prompts import gram_schmidt
    g = torch.Generator().manual_seed(0)
    earlier = gram_schmidt(torch.zeros(0, 8), 6, g)
    new = gram_schmidt(earlier, 4, g)                      # room for 2 orthogonal rows in width 8
    assert torch.allclose(new[:2] @ earlier.t(), torch.zeros(2, 6), atol=1e-6)
    assert torch.allclose(new.norm(dim=1), torch.ones(4), atol=1e-6)


def test_coda_frozen_components_do_not_decay_under_adamw():
    from rep_tune.runtime.step import make_optimizer, train_step
    cfg = preset("paper", "coda", **OFFLINE, **{"ald.enabled": False, "training.optimizer": "adamw"})
    model = RepModel(cfg, 10).train()
    model.begin_task(1, 5)
    frozen = model.prompt.k[0][:18].detach().clone()
    head = model.head.weight.detach().clone()
    opt = make_optimizer(cfg, model.param_groups())
    for i in range(3):
        train_step(model, opt, _x(), torch.tensor([2, 3, 2, 3]), query=None, iteration=i, task_id=1)
    assert torch.equal(model.prompt.k[0][:18], frozen)     # AdamW's decay would shrink them by lr * 0.01
    assert not torch.equal(model.prompt.k[0][18:36], frozen[:18])
    assert not torch.equal(model.head.weight, head)


@pytest.mark.parametrize("method, masked", [("coda", True), ("l2p", False)])
def test_evaluation_scores_the_seen_classes_where_the_method_does(method, masked):
    model = RepModel(preset("paper", method, **OFFLINE), 10)
    with torch.no_grad():
        model.head.bias[5:] = 100.0                        # unseen classes would win every argmax
    model.set_seen_classes([0, 1, 2, 3])
    pred = model.eval()(_x(8), model.query(_x(8))).logits.argmax(-1)
    assert bool((pred < 4).all()) is masked
    assert bool((model.train()(_x(8), model.query(_x(8))).logits.argmax(-1) >= 5).all())   # training: no mask


def test_l2p_vote_runs_over_training_batch_sized_groups():
    idx = torch.tensor([[0, 1]] * 16 + [[2, 3]] * 16)
    assert grouped_vote(idx, 2, 16).tolist() == [[0, 1]] * 16 + [[2, 3]] * 16
    assert grouped_vote(idx, 2, 32).tolist() == [[0, 1]] * 32           # one group: ties -> smaller ids
    model = RepModel(preset("paper", "l2p", **OFFLINE, **{"training.batch_size": 4}), 10).eval()
    assert model.prompt.vote_size == 4


def test_forgetting_is_l2p_definition_best_over_all_evaluations():
    nan = float("nan")
    acc = np.array([[0.5, nan, nan], [0.4, 0.9, nan], [0.6, 0.7, 0.8]])   # task 0 improves at the end
    # L2P: max over every row (final included) minus final: task 0: 0.6-0.6 = 0, task 1: 0.9-0.7 = 0.2
    assert forgetting(acc) == pytest.approx(0.1)


def test_query_cache_key_changes_when_the_checkpoint_is_rewritten(tmp_path):
    from safetensors.torch import save_file

    from rep_tune.runtime.backbone import clear_backbone_cache, load_backbone
    ckpt = tmp_path / "pico.safetensors"
    base = load_backbone("vit_pico_patch2_28", pretrained=False)
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(ckpt))
    cfg = preset("paper", "l2p", **OFFLINE, **{"selection.checkpoint": str(ckpt)})
    key1 = RepModel(cfg, 10).surrogate_key
    state = {k: v + 1.0 if v.is_floating_point() else v for k, v in base.state_dict().items()}
    save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt))
    os.utime(ckpt, ns=(1, 1))                              # even with an old mtime the size/mtime pair moves
    clear_backbone_cache()
    key2 = RepModel(cfg, 10).surrogate_key
    assert key1 != key2


@pytest.mark.slow
def test_coda_learns_on_a_tiny_stream():
    scen = Scenario(dataset="digits", n_tasks=2, max_per_class=20, test_fraction=0.2)
    cfg = preset("paper", "coda", **{"training.iters_per_task": 12, "training.eval_batch_size": 256})
    process_cache().clear()
    res = train(cfg, scen, progress=False)
    assert res.final_acc > 0.3                             # chance is 0.1 over 10 classes
    # task 0 is still known after task 1 (measured: 0.33 -> 0.24; chance 0.1): a model that forgot it
    # (a_10 ~ 0, everything predicted as task 1's classes) passes the line above on task 1 alone
    assert res.acc_matrix[1, 0] > 0.15 and res.acc_matrix[1, 1] > 0.3, res.acc_matrix
