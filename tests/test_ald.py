"""ALD: keep rates match the schedule, eval and prompt blocks always run, seeded, real skipping."""
from __future__ import annotations

import math

import pytest
import torch

from rep_tune.config import AldConfig, preset
from rep_tune.runtime.ald import LayerDropper
from rep_tune.runtime.model import RepModel
from rep_tune.schedule import keep_probability, merged_before

MERGE = [0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 16]     # REP ramp r=8 on 12 blocks
OFFLINE = {"backbone.pretrained": False, "selection.pretrained": False}




def test_empirical_keep_rate_matches_keep_probability():
    cfg = AldConfig(theta_min=0.3, gamma=0.01, tau=16, alpha=0.8)
    drop = LayerDropper(cfg, MERGE, 64, seed=7)
    t, n = 100, 3000
    counts = torch.zeros(12)
    for _ in range(n):
        counts += torch.tensor(drop.sample(t), dtype=torch.float32)
    before = merged_before(MERGE, 64)
    for l in range(12):
        p = keep_probability(t, before[l], cfg.theta_min, cfg.gamma, cfg.tau, cfg.alpha)
        assert abs(counts[l].item() / n - p) < 3 * math.sqrt(p * (1 - p) / n) + 1e-9, l
    assert 0.5 < keep_probability(t, 0, 0.3, 0.01, 16, 0.8) < 0.6      # the t term matters here


def test_same_seed_same_pattern_other_seed_differs():
    cfg = AldConfig(theta_min=0.5, gamma=0.0)
    a, b, c = (LayerDropper(cfg, MERGE, 64, seed=s) for s in (3, 3, 4))
    pa = [a.sample(t) for t in range(20)]
    assert pa == [b.sample(t) for t in range(20)]
    assert pa != [c.sample(t) for t in range(20)]


def test_disabled_runs_everything():
    drop = LayerDropper(AldConfig(enabled=False, theta_min=0.1, gamma=1.0), MERGE, 64)
    assert all(all(drop.sample(t)) for t in range(50))


def test_prompt_blocks_always_run_and_eval_runs_all():
    cfg = preset("paper", "dualprompt", **OFFLINE, **{"ald.theta_min": 0.1, "ald.gamma": 1.0})
    model = RepModel(cfg, 5).train()
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        runs = [model(x, task_id=0, iteration=50).ran for _ in range(8)]
    assert all(r[:5] == [True] * 5 for r in runs)                  # G layers 0-1, E layers 2-4
    assert sum(not b for r in runs for b in r[5:]) > 30            # others mostly dropped (theta ~0.1 of 56)
    model.eval()
    with torch.no_grad():
        assert model(x, iteration=50).ran == [True] * 12


def test_dropped_block_is_not_computed():
    cfg = preset("paper", "l2p", **OFFLINE, **{"ald.theta_min": 0.2, "ald.gamma": 1.0})
    model = RepModel(cfg, 5).train()
    calls = [0] * 12
    hooks = [blk.attn.qkv.register_forward_hook(lambda *_, l=l: calls.__setitem__(l, calls[l] + 1))
             for l, blk in enumerate(model.backbone.blocks)]
    try:
        out = model(torch.randn(2, 3, 28, 28), iteration=100)
    finally:
        for h in hooks:
            h.remove()
    # the baseline-free query uses the surrogate, so backbone blocks run only inside the REP loop
    assert calls == [int(r) for r in out.ran]
    assert not all(out.ran)


# ---- the keep schedule laid over the deployment's task length (ald.horizon) --------------------
def test_pld_matches_deepspeeds_formula():
    """DeepSpeed PLD (progressive_layer_drop.py + its BERT example; shared/ANCHORS.md): theta(t) =
    (1 - theta_bar) exp(-gamma t) + theta_bar, block i = 1..L keeps with 1 - i / L (1 - theta(t))."""
    from rep_tune.schedule import keep_probabilities
    theta_bar, gamma, L = 0.5, 0.001, 12
    for t in (0, 1, 500, 5000):
        theta_t = (1.0 - theta_bar) * math.exp(-gamma * t) + theta_bar
        want = [1.0 - i / L * (1.0 - theta_t) for i in range(1, L + 1)]
        got = keep_probabilities(t, MERGE, 196, theta_bar, gamma, 16, 0.9, kind="pld")
        assert got == [pytest.approx(w, abs=1e-12) for w in want]
    assert keep_probabilities(3000, MERGE, 196, 0.5, 0.001, 16, 0.9, kind="pld")[0] < 1.0   # the first block drops too
    assert keep_probabilities(10 ** 6, MERGE, 196, 0.5, 0.001, 16, 0.9, kind="pld")[-1] == pytest.approx(0.5)


def _jetson_proxy():
    from rep_tune.search.targets import ald_horizon, load_targets
    target = load_targets(["jetson_orin"])[0]
    proxy = preset("paper", "l2p", "vit_micro_patch2_28.fmnist", **{"training.epochs": 1, "training.iters_per_task": 12})
    return target, proxy, ald_horizon([target], proxy)


def _deployed_blocks(target, proxy) -> float:
    from rep_tune.cost import counts
    deployed = target.deployed_config(proxy)
    assert deployed.ald.horizon is None                     # the deployment runs its own schedule
    return sum(counts.keep_probs(deployed, iters=target.deployment(proxy).iterations_per_task))


@pytest.mark.parametrize("schedule", ["ald", "pld"])
def test_proxy_keep_schedule_spans_the_deployments_task(schedule):
    """A 12-iteration proxy with ald.horizon = the deployment's task length expects the blocks the
    cost model prices for the deployment (8.58 of 12 for the paper preset on jetson_orin); without
    the horizon it would run 11.37, the search's old mismatch."""
    from rep_tune.cost import counts
    target, proxy, horizon = _jetson_proxy()
    proxy = proxy.replace(**{"ald.schedule": schedule})
    assert horizon == target.deployment(proxy).iterations_per_task == 1565
    deployed = _deployed_blocks(target, proxy)
    scaled = sum(counts.keep_probs(proxy.replace(**{"ald.horizon": horizon}), iters=12))
    unscaled = sum(counts.keep_probs(proxy, iters=12))
    assert scaled == pytest.approx(deployed, abs=0.02)
    assert unscaled - deployed > (1.5 if schedule == "pld" else 2.5)
    # the runtime's draws: the dropper at the learner's schedule times, over 40 seeds of 5 tasks
    from rep_tune.schedule import horizon_scale, schedule_time
    lay = proxy.layout()
    runs = []
    for seed in range(40):
        d = LayerDropper(proxy.ald, proxy.atom.schedule(lay.depth), lay.mergeable, lay.prompt_blocks, seed=seed)
        s = horizon_scale(horizon, 12)
        runs += [sum(d.sample(schedule_time(k, s))) for _ in range(5) for k in range(12)]
    assert sum(runs) / len(runs) == pytest.approx(deployed, abs=0.1)


@pytest.mark.slow
def test_learner_at_search_fidelity_runs_the_deployments_blocks():
    """The real learner on the search's proxy (12 it/task, 5 tasks): measured blocks run per
    iteration within 0.2 of what the cost model prices for the jetson_orin deployment."""
    from rep_tune.data.scenario import Scenario
    from rep_tune.runtime.learner import train
    target, proxy, horizon = _jetson_proxy()
    res = train(proxy.replace(**{"ald.horizon": horizon}), Scenario(eval_per_class=2), progress=False, energy=False)
    measured = sum(r.blocks_run * r.iterations for r in res.per_task) / sum(r.iterations for r in res.per_task)
    assert abs(measured - _deployed_blocks(target, proxy)) < 0.2, measured


def test_a_fixed_drop_pattern_replaces_the_draws():
    """LayerDropper.fix: the pattern runs at every t (what predict(..., keep=pattern) prices); None draws again."""
    cfg = preset("paper", "l2p")
    d = LayerDropper(cfg.ald, cfg.atom.schedule(12), 196, seed=0)
    pattern = [True, False] * 6
    d.fix(pattern)
    assert all(d.sample(t) == pattern for t in (0, 500, 10 ** 6))
    state = d.generator.get_state()
    d.sample(3)
    assert torch.equal(d.generator.get_state(), state)            # no draw consumed
    d.fix(None)
    draws = [d.sample(10 ** 6) for _ in range(50)]
    assert any(x != pattern for x in draws) and not all(all(x) for x in draws)
    with pytest.raises(ValueError, match="12 entries"):
        d.fix([True] * 11)
