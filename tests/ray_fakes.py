"""Fakes at the Trainer seam for the Ray tests (importable by Ray workers: the driver's sys.path travels).

``NodeTrain`` is ``search_fakes.FakeTrain`` that also records, per training, the Ray node it ran
on and whether its process had the study's SQLite file open; with ``kill_first`` the first
training that starts (across all workers) SIGKILLs its own process after task 0.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from search_fakes import FakeTrain  # noqa: E402


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
