"""Fakes at the Trainer seam for the Ray tests (importable by Ray workers: the driver's sys.path travels).

``NodeTrain`` is ``search_fakes.FakeTrain`` that also records, per training, the Ray node it ran
on and whether its process had the study's SQLite file open; with ``kill_first`` the first
training that starts (across all workers) SIGKILLs its own process after task 0. ``TaskTrain``
resumes from a task-boundary state as the learner does (Ray Tune checkpoints), logs each task it
trains, and can fail once or give chosen trials scripted per-task accuracies.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from search_fakes import FakeTrain, fake_accuracy  # noqa: E402


class NodeTrain(FakeTrain):
    def __init__(self, task_s: float, log_dir: str, kill_first: bool = False):
        super().__init__(task_s, None)
        self.node_log, self.kill_first = log_dir, kill_first

    def __call__(self, config, scenario, *, callbacks=(), progress=False, **kw):
        import psutil
        import ray

        from rep_tune.search.space import config_hash

        log = Path(self.node_log)
        log.mkdir(parents=True, exist_ok=True)
        h = config_hash(config)
        files = [f.path for f in psutil.Process().open_files()]
        entry = {"hash": h, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                 "sqlite_open": [f for f in files if f.endswith(("study.db", "study.db-wal"))]}
        (log / f"{h}.{os.getpid()}.json").write_text(json.dumps(entry))
        if self.kill_first:
            try:
                fd = os.open(log / "killed", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                fd = None
            if fd is not None:
                os.write(fd, h.encode())
                os.close(fd)

                def die(task, so_far):
                    os.kill(os.getpid(), signal.SIGKILL)
                callbacks = (*callbacks, die)
        return super().__call__(config, scenario, callbacks=callbacks, progress=progress, **kw)


class TaskTrain:
    """A fake ``train_fn`` with the learner's resume interface (``on_task_end`` / ``resume_from``).

    Each attempt (one call) logs ``<log_dir>/<config_hash>.<pid>.<ns>.json``: the config's name,
    the task it resumed after (-1: none), the tasks it trained, and ``steps`` (tasks trained so
    far, carried in the state: a resumed attempt counts on). ``scripted`` maps a config-name
    suffix (``"-trial1"``, the baseline) to (accuracy at every task but the last, at the last);
    others get ``search_fakes.fake_accuracy`` at every task. With ``fail_after=k`` the first
    attempt (across processes) that finishes task k raises after reporting it.
    """

    def __init__(self, task_s: float, log_dir: str, *, fail_after: int | None = None,
                 scripted: dict[str, tuple[float, float]] | None = None):
        self.task_s, self.log_dir, self.fail_after, self.scripted = task_s, log_dir, fail_after, dict(scripted or {})

    def value(self, config, task: int, n: int) -> float:
        for suffix, (early, last) in self.scripted.items():
            if config.name.endswith(suffix):
                return last if task == n - 1 else early
        return fake_accuracy(config)

    def __call__(self, config, scenario, *, callbacks=(), progress=False, on_task_end=None, resume_from=None, **_):
        import time

        import numpy as np
        import torch

        from rep_tune.search.space import config_hash
        from search_fakes import FakeResult, _SoFar

        log = Path(self.log_dir)
        log.mkdir(parents=True, exist_ok=True)
        n, h = scenario.n_tasks, config_hash(config)
        first = 0 if resume_from is None else int(resume_from["task"]) + 1
        acc = np.full((n, n), np.nan) if resume_from is None else resume_from["acc_matrix"].numpy().copy()
        steps = 0 if resume_from is None else int(resume_from["model"]["steps"])
        entry = {"config": config.name, "hash": h, "pid": os.getpid(), "resumed_after": first - 1, "tasks": [],
                 "steps": steps}
        path = log / f"{h}.{os.getpid()}.{time.time_ns()}.json"
        t0 = time.perf_counter()
        for task in range(first, n):
            time.sleep(self.task_s)
            steps += 1
            acc[task, :task + 1] = self.value(config, task, n)
            entry["tasks"].append(task)
            entry["steps"] = steps
            path.write_text(json.dumps(entry))
            if on_task_end is not None:
                on_task_end(task, {"task": task, "acc_matrix": torch.from_numpy(acc.copy()),
                                   "model": {"steps": torch.tensor(steps)}})
            for cb in callbacks:
                cb(task, _SoFar(acc.copy()))
            if task == self.fail_after and _first(log / "failed"):
                raise RuntimeError(f"injected failure after task {task}")
        final = float(np.nanmean(acc[n - 1]))
        return FakeResult(acc, final, final, 0.0, None, 2 * (n - first), time.perf_counter() - t0)


def _first(marker: Path) -> bool:
    """True for the first caller (any process) that creates ``marker``."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False
