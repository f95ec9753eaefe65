"""Independent trainings side by side on local worker threads, each on its share of torch's CPU threads.

The confirmation's retrainings (``search.confirm``) are independent: no run's result decides what
another run trains, so running them at once changes no answer, only how soon it comes. On CPU they
are small (a 196-token ViT, batch 16), and torch's intra-op parallelism over 2 cores leaves part of
the second core idle: two runs side by side at 1 torch thread each did the same 4 runs 1.21-1.29x
sooner than one at a time at 2 threads, with the same accuracies as two processes at 1 thread each
(``benchmarks/bench_parallel_runs.py``, ``benchmarks/results/parallel_runs_vm.txt``).

A run's result does not depend on which thread runs it or on what runs beside it: every random draw
of a training comes from its own seeded ``torch.Generator`` (``tests/test_parallel.py`` trains real
models both ways). Its floating-point result does depend on its torch thread count (the order of
reductions), so every run of one stage runs at the same count, and paired runs stay paired.

Worker threads are named ``loop.THREAD_PREFIX`` + a label: ``loop.trainings_alive`` counts them, so
Ctrl-C leaves as promptly as it does during the search's trials (``cli.search``).

The search's own trials keep ``--n-workers`` (default 1): their results feed the sampler, and
parallel trials make it propose with less information (constant liar); that trade-off is the
sampler's, measured nowhere yet, and not this module's.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from rep_tune.search.loop import THREAD_PREFIX

J = TypeVar("J")
# auto: at most this many runs at once (memory: each run holds its model, optimiser and task data);
# measured at 2 on a 2-core host (module docstring), untested above
MAX_AUTO_WORKERS = 4


def auto_workers(device: str | None = None) -> int:
    """Runs at once when the user does not say: one per torch CPU thread (``torch.get_num_threads``,
    as ``--threads`` set it), at most ``MAX_AUTO_WORKERS``; 1 when trainings run on a GPU (they
    share one device; untested side by side)."""
    import torch
    if device == "cuda" or (device is None and torch.cuda.is_available()):
        return 1
    return max(1, min(MAX_AUTO_WORKERS, torch.get_num_threads()))


def threads_per_run(workers: int, threads: int | None = None) -> int:
    """torch CPU threads each of ``workers`` side-by-side runs gets: an equal share of ``threads``
    (default: torch's current count), at least 1."""
    import torch
    total = torch.get_num_threads() if threads is None else int(threads)
    return max(1, total // max(1, int(workers)))


def describe(workers: int) -> str:
    """How runs go side by side, for output ("2 runs at a time, 1 torch thread(s) each"; "" for one)."""
    return f"{workers} runs at a time, {threads_per_run(workers)} torch thread(s) each" if workers > 1 else ""


@contextlib.contextmanager
def shared_threads(workers: int) -> Iterator[int]:
    """While in force, torch runs ``threads_per_run(workers)`` intra-op threads (process-wide: every
    thread's parallel regions); restored on exit. Yields the per-run count."""
    import torch
    before = torch.get_num_threads()
    each = threads_per_run(workers, before)
    torch.set_num_threads(each)
    try:
        yield each
    finally:
        torch.set_num_threads(before)


def run_all(jobs: Sequence[J], fn: Callable[[J], Any], workers: int = 1, *, label: str = "run"
            ) -> Iterator[tuple[J, Any]]:
    """Run ``fn(job)`` for every job, at most ``workers`` at once, in the order given (the first
    ``workers`` start first); yield ``(job, result)`` in the calling thread as each finishes.

    ``workers`` 1 runs every job in the calling thread, one after another (nothing else changes).
    With more, the jobs run on daemon threads named ``THREAD_PREFIX + label-<worker>``, at
    ``shared_threads(workers)`` torch threads each. ``fn`` should catch what a failed job raises
    (a failed run is a result): an exception that escapes it stops the jobs not yet started and is
    re-raised here once the running ones end. KeyboardInterrupt in the calling thread propagates
    at once (the threads in flight are daemons; no new job starts)."""
    jobs = list(jobs)
    workers = max(1, min(int(workers), len(jobs) or 1))
    if workers == 1:
        for job in jobs:
            yield job, fn(job)
        return
    todo: queue.Queue = queue.Queue()
    for job in jobs:
        todo.put(job)
    done: queue.Queue = queue.Queue()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((job, fn(job), None))
            except BaseException as e:                  # noqa: BLE001 - handed to the calling thread
                stop.set()
                done.put((job, None, e))

    with shared_threads(workers):
        threads = [threading.Thread(target=work, name=f"{THREAD_PREFIX}{label}-{w}", daemon=True)
                   for w in range(workers)]
        for t in threads:
            t.start()
        error: BaseException | None = None
        try:
            left = len(jobs)
            while left:
                try:
                    job, result, e = done.get(timeout=0.5)
                except queue.Empty:
                    if not any(t.is_alive() for t in threads) and done.empty():
                        break                           # stopped by an error: nothing more will finish
                    continue
                left -= 1
                if e is not None:
                    error = error or e
                elif error is None:
                    yield job, result
        finally:
            stop.set()
        if error is not None:
            raise error
