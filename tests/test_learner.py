"""The continual-learning loop: accuracy matrix, callbacks, reproducibility, failures, the CLI, learning."""
import math

import numpy as np
import pytest
import yaml

from rep_tune.config import EMBEDDED_BACKBONE, EMBEDDED_SURROGATE, preset
from rep_tune.data.scenario import Scenario
from rep_tune.runtime.backbone import embedded_weights
from rep_tune.runtime.learner import NonFiniteLoss, train

RANDOM = {"backbone.pretrained": False, "selection.pretrained": False}
TINY = Scenario(dataset="digits", n_tasks=3, max_per_class=8, test_fraction=0.05)


def tiny_config(name="paper", **over):
    return preset(name, **RANDOM, **{"training.iters_per_task": 2, "training.eval_batch_size": 256, **over})


def test_matrix_shape_and_callbacks_once_per_task_with_growing_results():
    seen = []
    res = train(tiny_config(), TINY, progress=False,
                callbacks=[lambda i, r: seen.append((i, r.tasks_done, r.acc_matrix.copy(), r.iterations))])
    assert [s[0] for s in seen] == [0, 1, 2] and [s[1] for s in seen] == [1, 2, 3]
    assert [s[3] for s in seen] == [2, 4, 6] and res.iterations == 6
    a = res.acc_matrix
    assert a.shape == (3, 3)
    assert np.isnan(a[np.triu_indices(3, 1)]).all() and not np.isnan(a[np.tril_indices(3)]).any()
    assert ((a[np.tril_indices(3)] >= 0) & (a[np.tril_indices(3)] <= 1)).all()
    assert np.isnan(seen[0][2][1:]).all()                          # rows of tasks not yet trained
    assert res.final_acc == pytest.approx(float(np.mean(a[-1])))
    assert [r.classes for r in res.per_task] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert res.cost.latency_ms.source == "measured" and res.cost.latency_ms.value > 0
    assert res.cost.peak_memory_mb.source == "measured" and res.cost.peak_memory_mb.value > 1
    d = res.to_dict()
    assert d["acc_matrix"][0][1] is None and d["cost"]["latency_ms"]["source"] == "measured"


def test_callback_exception_stops_the_run():
    class Stop(Exception):
        pass

    done = []

    def cb(i, r):
        done.append(i)
        if i == 0:
            raise Stop

    with pytest.raises(Stop):
        train(tiny_config(), TINY, progress=False, callbacks=[cb])
    assert done == [0]


def test_reproducible_and_query_cache_reported():
    cfg = tiny_config(**{"training.epochs": 2, "training.iters_per_task": None})
    s = Scenario(dataset="digits", n_tasks=2, max_per_class=4, test_fraction=0.05)
    a = train(cfg, s, progress=False)
    b = train(cfg, s, progress=False)
    np.testing.assert_allclose(a.acc_matrix, b.acc_matrix, equal_nan=True)
    # equal up to float rounding: a cached query may have been computed inside a batch of another size
    assert [r.mean_loss for r in a.per_task] == pytest.approx([r.mean_loss for r in b.per_task], abs=1e-4)
    assert a.query_cache["used"] and b.query_cache["misses"] == 0 and b.query_cache["hits"] > 0
    off = train(cfg.replace(**{"selection.cache": False}), s, progress=False)
    assert not off.query_cache["used"] and "selection.cache is false" in off.query_cache["reason"]
    assert [r.mean_loss for r in off.per_task] == pytest.approx([r.mean_loss for r in a.per_task], abs=1e-4)


def test_resume_from_a_task_state_goes_on_as_the_uninterrupted_run():
    """``on_task_end``'s state, through torch.save and ``torch.load(weights_only=True)``, resumes the
    run after that task: the remaining tasks only, with the same accuracies, losses and iterations."""
    import io

    import torch

    cfg = preset("paper", "dualprompt", **RANDOM, **{"training.iters_per_task": 2, "training.eval_batch_size": 256})
    states = {}
    full = train(cfg, TINY, progress=False, energy=False, on_task_end=lambda t, s: states.__setitem__(t, s))
    buf = io.BytesIO()
    torch.save(states[0], buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert list(states) == [0, 1, 2] and state["task"] == 0
    assert state["model"] and not any(k.startswith(("backbone.", "surrogate.")) for k in state["model"])
    trained, ended = [], []
    resumed = train(cfg, TINY, progress=False, energy=False, resume_from=state,
                    callbacks=[lambda i, r: trained.append(i)], on_task_end=lambda t, s: ended.append(t))
    assert trained == ended == [1, 2]                                   # not from task 0
    np.testing.assert_array_equal(resumed.acc_matrix, full.acc_matrix)
    assert [r.mean_loss for r in resumed.per_task] == [r.mean_loss for r in full.per_task]
    assert resumed.iterations == full.iterations and resumed.tasks_done == 3
    with pytest.raises(ValueError, match="nothing is left to train"):
        train(cfg, TINY, progress=False, energy=False, resume_from=states[2])
    with pytest.raises(ValueError, match="2 tasks"):
        train(cfg, Scenario(dataset="digits", n_tasks=2, max_per_class=8, test_fraction=0.05), progress=False,
              energy=False, resume_from=state)


def test_nan_loss_is_a_clear_error():
    cfg = tiny_config("baseline", **{"training.optimizer": "sgd", "training.lr": 1e38, "training.clip_grad": None,
                                     "training.iters_per_task": 20})
    with pytest.raises(NonFiniteLoss, match="loss is"):
        train(cfg, Scenario(dataset="digits", n_tasks=2, max_per_class=8, test_fraction=0.05), progress=False)


def test_cli_train_writes_results(tmp_path, capsys):
    from rep_tune.cli import main
    out = tmp_path / "run"
    # the default scenario but 20 test images per class (its default 200 costs ~40 s of evaluation here)
    scen = tmp_path / "scenario.yaml"
    scen.write_text("n_tasks: 2\neval_per_class: 20\n")
    assert Scenario().eval_per_class == 200 and Scenario().dataset == "fashion-mnist"
    rc = main(["train", "--scenario", str(scen), "--set", "backbone.pretrained=false", "--set",
               "selection.pretrained=false", "--set", "training.iters_per_task=1", "--out", str(out), "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "final average accuracy" in text and "measured" in text and str(out / "results.yaml") in text
    res = yaml.safe_load((out / "results.yaml").read_text())
    assert len(res["acc_matrix"]) == 2 and res["scenario"]["dataset"] == "fashion-mnist"   # the default
    assert res["eval_size"] == 200 and "on 200 test images, sampling error" in text         # 20 per class
    assert yaml.safe_load((out / "config.yaml").read_text())["training"]["iters_per_task"] == 1


HAVE_WEIGHTS = all(embedded_weights(n).is_file() for n in (EMBEDDED_BACKBONE, EMBEDDED_SURROGATE))


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_WEIGHTS, reason="embedded backbone weights not committed yet")
def test_end_to_end_split_fashion_mnist_learns():
    cfg = preset("paper", **{"training.iters_per_task": 12})
    res = train(cfg, Scenario(dataset="fashion-mnist", n_tasks=5, eval_per_class=40), progress=False)
    assert res.acc_matrix.shape == (5, 5) and res.eval_size == 400
    # chance is 0.1 (argmax over all 10 classes). Measured with the committed weights and 20
    # iterations per task on 500 test images: final 0.77, average incremental 0.85, first task 0.97;
    # the bars leave room for 12 iterations, 400 images (sampling error ~2 points) and numeric drift.
    assert res.final_acc > 0.6, res.acc_matrix
    assert res.avg_incremental_acc > 0.7, res.acc_matrix
    assert res.acc_matrix[0, 0] > 0.85, res.acc_matrix    # the first task is learnt
    assert 0.0 <= res.forgetting < 0.4


def test_an_evaluate_handed_in_replaces_the_accuracy_function():
    """Benchmarks record per-sample correctness through ``train(evaluate=...)``, not a monkeypatch."""
    calls = []

    def evaluate(model, split, ts, batch_size, device, cache) -> float:
        calls.append(len(split))
        return 0.42

    s = Scenario(dataset="digits", n_tasks=2, max_per_class=4, test_fraction=0.05)
    res = train(tiny_config(), s, progress=False, evaluate=evaluate)
    assert len(calls) == 3 and all(n > 0 for n in calls)               # rows: 1 + 2 seen tasks
    assert res.acc_matrix[1, 0] == 0.42 and res.final_acc == 0.42
