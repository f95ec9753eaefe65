"""Ray executor (``--backend ray``): the search's one trial loop, with trainings run as Ray tasks.

The driver keeps Optuna and the loop (``loop.run_trials``: ask, plan, pre-screen, replay, tell);
Ray only executes trainings. ``submit`` starts a ``ray.remote`` task that opens the study through
``job.study`` (a ``storage_proxy.ProxyStudyRef``: the driver's gRPC storage proxy, so workers on
other nodes need no shared file system and never open the SQLite file), runs ``loop.run_job``
(per-task reports through a real ``optuna.Trial``, so the pruner works) and returns an
``Outcome``; the driver records it and tells. A task is never retried: a worker process that dies
(killed, out of memory, its node lost) gives a failed trial (``error``: "Ray worker lost: ..."),
and the search goes on.

Where it runs (``cluster.connect``): a new local Ray instance, or an existing cluster named by
``--address`` / ``RAY_ADDRESS``, probed first so that a dead address fails within seconds. Each
training asks for ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs (Ray sets
``CUDA_VISIBLE_DEVICES`` for the task); ``n_workers`` trainings are in flight at once, anywhere in
the cluster. Trainings that share a machine contaminate each other's *measured* latency; predicted
costs are unaffected.

Why not Ray Tune's ``OptunaSearch``: it passes no constraints to Optuna and cannot skip a
candidate before it is scheduled. ``rep_tune.search.ray.tune`` gives Tune users a searcher that keeps
both (the same planning, through the same loop steps).
"""
# Private Optuna/Ray members used here: 1, ``study._storage`` (served to the workers). Optuna has
# no public accessor of a Study's storage, and the proxy must serve the very object the driver
# writes through: ``study.db`` is SQLite, with this process as its one writer in a Ray run, and a
# second storage object on the file would be a second writer with its own cache. The Ray side is
# public: ``ray.remote``, ``put``, ``wait``, ``get``, ``cancel``.
from __future__ import annotations

from collections.abc import Hashable

import optuna

from rep_tune.search.ray.cluster import Cluster
from rep_tune.search.loop import TrainJob, run_job
from rep_tune.search.objective import Outcome, Trainer
from rep_tune.search.ray.storage_proxy import StorageProxy

LOST = "Ray worker lost"


def _remote_job(job: TrainJob, trainer: Trainer) -> Outcome:
    """Runs in a Ray worker: the study through the driver's storage proxy."""
    return run_job(job, trainer, job.study.open())


class RayExecutor:
    """Executes ``TrainJob``s as Ray tasks on ``cluster``; ``slots`` of them at once.

    Serves ``study``'s storage to the workers for as long as it lives; ``close()`` stops the proxy
    and lets go of a Ray this executor's cluster started.
    """

    def __init__(self, study: optuna.Study, trainer: Trainer, cluster: Cluster, *, pruner: str,
                 n_workers: int = 1, cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
                 proxy_port: int = 0):
        import ray

        self.cluster = cluster
        self.slots = max(1, int(n_workers))
        self.proxy = StorageProxy(study._storage, cluster.node_ip, proxy_port)
        self.study_ref = self.proxy.ref(study.study_name, pruner)
        self._remote = ray.remote(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial, max_retries=0)(_remote_job)
        self._trainer = ray.put(trainer)
        self._refs: dict = {}

    def submit(self, job: TrainJob) -> Hashable:
        ref = self._remote.remote(job, self._trainer)
        self._refs[ref] = job
        return ref

    def wait(self, timeout: float) -> list[tuple[Hashable, Outcome]]:
        import ray

        if not self._refs:
            return []
        ready, _ = ray.wait(list(self._refs), num_returns=1, timeout=timeout)
        if ready:
            more, _ = ray.wait(list(self._refs), num_returns=len(self._refs), timeout=0)
            ready = list(dict.fromkeys([*ready, *more]))
        out = []
        for ref in ready:
            self._refs.pop(ref, None)
            try:
                out.append((ref, ray.get(ref)))
            except Exception as e:           # the worker process died (WorkerCrashedError, NodeDiedError, ...)
                cause = getattr(e, "cause", None) or e
                first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
                out.append((ref, Outcome(None, "failed", f"{LOST}: {type(cause).__name__}: {first}")))
        return out

    def cancel(self) -> None:
        import ray

        for ref in list(self._refs):
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass

    def close(self) -> None:
        self._refs.clear()
        self.proxy.stop()


def make_executor(p) -> RayExecutor:
    """The ``ray`` backend's executor (``search.backends``) for a prepared search ``p``: Ray tasks on
    ``p.cluster``, reaching the study through its gRPC proxy."""
    s = p.settings
    return RayExecutor(p.study, p.trainer, p.cluster, pruner=s.pruner, n_workers=s.n_workers,
                       cpus_per_trial=s.cpus_per_trial, gpus_per_trial=s.gpus_per_trial, proxy_port=s.proxy_port)
