"""Trainings side by side (``rep_tune.search.parallel``) and the confirmation on several workers.

The runner against threads that must meet (a barrier: runs that did not overlap time out), torch's
thread count inside and after, errors; real trainings of the runtime run side by side against the
same trainings one at a time (every random draw on its own generator: equal, bit for bit); the
confirmation's stages on 2 workers against 1 (same scores, same choice) and its report in rounds.
"""
from __future__ import annotations

import threading

import pytest
import torch

from rep_tune.config import preset
from rep_tune.data.scenario import Scenario
from rep_tune.search import confirm
from rep_tune.search.confirm import Candidate
from rep_tune.search.loop import THREAD_PREFIX, trainings_alive
from rep_tune.search.parallel import auto_workers, run_all, shared_threads, threads_per_run

RANDOM = {"backbone.pretrained": False, "selection.pretrained": False}
TINY = Scenario(dataset="digits", n_tasks=3, max_per_class=8, test_fraction=0.05)


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_threads_per_run_share_torchs_threads(two_threads):
    assert threads_per_run(2) == 1 and threads_per_run(1) == 2 and threads_per_run(3) == 1
    assert threads_per_run(2, 8) == 4 and threads_per_run(3, 8) == 2
    with shared_threads(2) as each:
        assert each == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    assert auto_workers("cuda") == 1 and auto_workers("cpu") == 2


def test_runs_overlap_on_named_threads_at_their_share_of_threads_and_restore_it(two_threads):
    meet = threading.Barrier(2, timeout=20)          # two runs that never overlap break it
    seen = []

    def run(job: int) -> int:
        seen.append((threading.current_thread().name, torch.get_num_threads(), trainings_alive()))
        if job < 2:
            meet.wait()
        return job * job

    got = dict(run_all(range(5), run, workers=2, label="t"))
    assert got == {j: j * j for j in range(5)}
    assert {name for name, _, _ in seen} == {f"{THREAD_PREFIX}t-0", f"{THREAD_PREFIX}t-1"}
    assert all(n == 1 for _, n, _ in seen) and max(a for _, _, a in seen) == 2   # Ctrl-C's count sees them
    assert torch.get_num_threads() == 2
    # one worker: in the calling thread, one after another, torch's threads untouched
    names = []
    assert dict(run_all([3], lambda j: names.append((threading.current_thread().name, torch.get_num_threads())) or j,
                        workers=1)) == {3: 3}
    assert names == [(threading.main_thread().name, 2)]


def test_an_escaping_error_stops_the_runs_not_started_and_is_raised(two_threads):
    started = []

    def run(job: int) -> int:
        started.append(job)
        if job == 0:
            raise RuntimeError("boom")
        return job

    with pytest.raises(RuntimeError, match="boom"):
        list(run_all(range(8), run, workers=2))
    assert len(started) < 8 and torch.get_num_threads() == 2


def _fingerprint(res) -> tuple:
    """Everything a run's random draws reach: accuracies, per-task mean loss, blocks ALD ran."""
    acc = [[None if v != v else round(float(v), 12) for v in row] for row in res.acc_matrix]   # NaN: not evaluated
    return (acc, res.test_acc, [r.mean_loss for r in res.per_task],
            [r.blocks_run for r in res.per_task])


def test_real_trainings_side_by_side_equal_the_same_trainings_one_at_a_time(two_threads):
    """The paper preset (ALD's Bernoulli draws, prompt init, batch order) and CODA-Prompt, at two seeds:
    run on 2 worker threads they give the results they give one after another at 1 thread each."""
    from rep_tune.runtime.learner import train
    base = {**RANDOM, "training.iters_per_task": 4, "training.eval_batch_size": 256}
    jobs = [preset("paper", **base, **{"training.seed": s}) for s in (0, 1)]
    jobs += [preset("paper", "coda", **base, **{"training.seed": 2})]

    def run(cfg):
        return _fingerprint(train(cfg, TINY, progress=False, energy=False, eval_every_task=True, report_test=True))

    torch.set_num_threads(1)
    alone = [run(cfg) for cfg in jobs]
    torch.set_num_threads(2)
    side = dict((id(c), r) for c, r in run_all(jobs, run, workers=2))
    assert [side[id(c)] for c in jobs] == alone
    assert alone[0] != alone[1]                      # the seeds differ: the fingerprint can tell runs apart


class Seeded:
    """A thread-safe fake trainer: accuracy from (prompt length, seed) alone, whoever runs it."""

    def __init__(self):
        self.lock, self.runs = threading.Lock(), []

    def __call__(self, config, scenario, *, report_test=False, **_):
        from types import SimpleNamespace
        n, seed = config.prompt.length, config.training.seed
        with self.lock:
            self.runs.append((n, seed, report_test, threading.current_thread().name))
        acc = 0.75 + 0.01 * n + 0.003 * ((seed * 7 + n) % 5)
        return SimpleNamespace(final_acc=acc, test_acc=acc - 0.02 if report_test else None, eval_size=500,
                               test_size=1000 if report_test else 0, seconds=1.0)


def _cands():
    from search_fakes import PROXY
    base = preset("paper", "l2p", PROXY)
    return [Candidate(f"c{n}", n, base.replace(**{"prompt.length": n}), 0.8, hash=f"h{n}",
                      role="paper" if n == 5 else None) for n in (5, 6, 7)]


def test_the_confirmation_on_two_workers_scores_and_chooses_as_on_one(two_threads):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    feasible = {"dev": {"h5", "h6", "h7"}}
    answers = []
    for workers in (1, 2):
        cands, train = _cands(), Seeded()
        conf = confirm.run_stages(cands, feasible, Scenario(n_tasks=2), train, seeds=3, report_seeds=4,
                                  fidelity=confirm.CONFIRM_FIDELITY, progress=False, workers=workers)
        answers.append(([(c.label, c.val, c.test) for c in cands], conf.answers["dev"].best.label,
                        conf.answers["dev"].vs_paper, conf.report_seeds))
        on_workers = {name for *_, name in train.runs if name.startswith(THREAD_PREFIX)}
        assert (len(on_workers) == 2) == (workers == 2) and len(train.runs) == 3 * 3 + 2 * 4
        assert conf.workers == workers and conf.to_dict()["runs_at_once"] == workers
        assert ("2 runs at a time, 1 torch thread(s) each" in conf.describe_fidelity()) == (workers == 2)
    assert answers[0] == answers[1]


def test_a_timed_report_runs_in_rounds_that_keep_every_worker_busy(two_threads):
    """The paper preset alone is reported (nothing else fits): 2 workers run 2 seeds a round, and
    ``another`` is asked between rounds with the seeds run so far."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    asked = []
    paper = _cands()[0]
    _, _, ran = confirm.retrain([paper], Scenario(n_tasks=2), range(3, 9), confirm.CONFIRM_FIDELITY, Seeded(),
                                progress=False, another=lambda done: asked.append(list(done)) or len(done) < 4,
                                workers=2)
    assert asked == [[3, 4], [3, 4, 5, 6]] and ran == [3, 4, 5, 6] and sorted(paper.test) == ran
    assert confirm.seeds_per_round(2, 2) == 1 and confirm.seeds_per_round(2, 1) == 2 and confirm.seeds_per_round(1, 1) == 1


def test_the_searchs_worker_threads_share_torchs_threads_until_closed(two_threads):
    """``--n-workers 2`` on 2 threads: each trial on 1 thread while the executor lives, 2 again after
    (closing twice, as an interrupted loop does, restores once); 1 worker leaves torch alone."""
    from rep_tune.search.loop import ThreadExecutor
    ex = ThreadExecutor(None, None, n_workers=2)
    assert torch.get_num_threads() == 1
    ex.close()
    torch.set_num_threads(2)          # what the next stage set: a second close must not undo it
    ex.close()
    assert torch.get_num_threads() == 2
    one = ThreadExecutor(None, None, n_workers=1)
    assert torch.get_num_threads() == 2
    one.close()
    assert torch.get_num_threads() == 2
