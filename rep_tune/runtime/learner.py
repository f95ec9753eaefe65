"""The class-incremental training loop: train prompts/keys/head task by task, evaluate, report.

``train(config, scenario)`` is the runtime's one entry point for the search and the CLI. It
knows nothing of search or devices: callbacks (e.g. an optuna pruner) see the result after
every task and may raise to stop the run. What does not depend on the config is built once
per process: the task data (rep_tune.data.tasks caches it), the frozen backbones
(backbone.load_backbone caches them) and the per-sample selection queries (selection.process_cache).

Cost of the run (``TrainResult.cost``, per training iteration): latency and peak memory from
``rep_tune.runtime.measure``; energy from measurement windows the caller hands in (``energy``:
``rep_tune.profiler.energy.training_meter`` is this machine's NVML, Jetson rails or RAPL, else
estimated and said so once), which span each task's timed training iterations (warm-up,
evaluation and the memory-probed iteration excluded: ``measure.IterationPhases``, the same phases
as the profiler's probes). The counters are device-wide: runs training at the same time
on one device (search workers in threads or processes) each see the others' energy too. The
runtime never imports the profiler (the profiler's probes use ``runtime.measure``: imports point
one way).

Resuming mid-run (``on_task_end`` / ``resume_from``): after each task ``train`` can hand out the
run's state at that task boundary as plain data (tensors, numbers, lists, dicts; no pickled
objects, so ``torch.load(..., weights_only=True)`` reads it back); ``resume_from=state`` then
trains the remaining tasks as the uninterrupted run would have (same RNG streams, same schedule
position), e.g. in a Ray Tune trial restored from its last checkpoint. The state holds what
changes during a run: the trained parameters and buffers (prompts, keys, head; not the frozen
backbone and surrogate, rebuilt from their weights), the RNG states (torch's, the data order's,
ALD's block draws), the accuracy matrix, the iteration counter and the timing figures so far.
The optimiser is re-created at the start of every task, so a task boundary has no optimiser
state to carry. Energy and query-cache counters cover the resumed part of the run only.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from rep_tune.config import RepConfig
from rep_tune.data.scenario import Scenario
from rep_tune.data.tasks import TaskSet, build_tasks
from rep_tune.runtime.backbone import backbone_normalization
from rep_tune.figures import Cost
from rep_tune.runtime import metrics
from rep_tune.runtime.measure import IterationPhases, make_cost, resident_bytes
from rep_tune.runtime.step import NonFiniteLoss, class_mask, make_optimizer, make_precision, train_step
from rep_tune.schedule import horizon_scale, iterations_per_task, schedule_time

WARMUP_ITERS = 3     # first iterations of the run left out of the time per iteration
PROBE_AT = 3         # iteration (within each task) whose peak memory is probed; not timed
RESUME_FORMAT = 1    # version of the task-boundary state (``on_task_end`` / ``resume_from``)
FROZEN_MODULES = ("backbone", "surrogate")   # rebuilt from their weights, never trained: not in the state

__all__ = ["train", "TrainResult", "TaskRecord", "NonFiniteLoss", "load_tasks"]


@dataclass
class TaskRecord:
    """What happened in one task: iterations, time, mean training loss, accuracy on seen tasks."""

    task_id: int
    classes: list[int]
    iterations: int
    train_seconds: float
    eval_seconds: float
    mean_loss: float
    accuracy: list[float]          # accuracy on tasks 0..task_id after this task
    blocks_run: float              # mean blocks computed per training iteration (ALD)


@dataclass
class TrainResult:
    """Accuracy matrix, metrics and measured cost of a (possibly partial) run."""

    acc_matrix: np.ndarray         # (n_tasks, n_tasks): row i after task i, col j; NaN where not evaluated
    final_acc: float               # metrics over the tasks done so far (all of them when finished)
    avg_incremental_acc: float
    forgetting: float
    cost: Cost
    iterations: int
    seconds: float
    per_task: list[TaskRecord] = field(default_factory=list)
    query_cache: dict[str, Any] = field(default_factory=dict)   # used, reason, hits, misses
    device: str = "cpu"
    config_name: str = ""
    eval_size: int = 0             # images the final accuracy is measured on (its sampling error's n)
    eval_split: str = "test"       # the split final_acc is measured on: test, or the validation split
    test_acc: float | None = None  # final average accuracy on the test split (train(report_test=True)), a fraction
    test_size: int = 0             # test images test_acc is measured on

    @property
    def sampling_error(self) -> float:
        """Binomial standard error of ``final_acc`` from the choice of test images (a fraction)."""
        from rep_tune.data.tasks import sampling_error
        return sampling_error(self.final_acc, self.eval_size) if self.eval_size else float("nan")

    @property
    def tasks_done(self) -> int:
        return len(self.per_task)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for YAML/JSON (NaN entries of the matrix become null)."""
        return {
            "config": self.config_name,
            "eval_split": self.eval_split,
            "eval_size": self.eval_size,
            "test_acc": self.test_acc,
            "test_size": self.test_size,
            "sampling_error": None if not self.eval_size else round(self.sampling_error, 6),
            "device": self.device,
            "tasks_done": self.tasks_done,
            "final_acc": self.final_acc,
            "avg_incremental_acc": self.avg_incremental_acc,
            "forgetting": self.forgetting,
            "acc_matrix": [[None if math.isnan(v) else round(float(v), 6) for v in row] for row in self.acc_matrix],
            "iterations": self.iterations,
            "seconds": round(self.seconds, 3),
            "cost": self.cost.to_dict(),
            "query_cache": dict(self.query_cache),
            "per_task": [{"task_id": r.task_id, "classes": list(r.classes), "iterations": r.iterations,
                          "train_seconds": round(r.train_seconds, 3), "eval_seconds": round(r.eval_seconds, 3),
                          "mean_loss": round(r.mean_loss, 6), "accuracy": [round(a, 6) for a in r.accuracy],
                          "blocks_run": round(r.blocks_run, 3)} for r in self.per_task],
        }


# callback(task_id, result_so_far) after each task's evaluation; it may raise (e.g. optuna.TrialPruned)
# to stop the run, and the exception propagates to the caller of ``train``.
Callback = Callable[[int, TrainResult], None]
# on_task_end(task_id, state) after each task's evaluation, before the callbacks: the state to resume from
TaskEnd = Callable[[int, dict], None]


def _trained_state(model) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers outside the frozen backbone/surrogate, on the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            if k.split(".", 1)[0] not in FROZEN_MODULES}


def _record_data(r: TaskRecord) -> dict[str, Any]:
    """A TaskRecord as Python numbers and lists only (``weights_only`` loads no numpy scalar)."""
    return {"task_id": int(r.task_id), "classes": [int(c) for c in r.classes], "iterations": int(r.iterations),
            "train_seconds": float(r.train_seconds), "eval_seconds": float(r.eval_seconds),
            "mean_loss": float(r.mean_loss), "accuracy": [float(a) for a in r.accuracy],
            "blocks_run": float(r.blocks_run)}


def _check_resume(state: Mapping, n_tasks: int, seed: int) -> int:
    """The first task to train from ``state``; ValueError when it is not a state of this run."""
    found = state.get("format") if isinstance(state, Mapping) else type(state).__name__
    if found != RESUME_FORMAT:
        raise ValueError(f"resume_from: expected a state written by train(on_task_end=...) (format "
                         f"{RESUME_FORMAT}), found {found!r}")
    task = int(state["task"])
    if int(state["n_tasks"]) != n_tasks or int(state["seed"]) != seed:
        raise ValueError(f"resume_from: the state is of a run with {state['n_tasks']} tasks and seed {state['seed']}, "
                         f"this one has {n_tasks} tasks and seed {seed}")
    if not 0 <= task < n_tasks - 1:
        raise ValueError(f"resume_from: the state is after task {task}; nothing is left to train of {n_tasks} tasks")
    return task + 1


class _NoEnergy:
    """Energy windows turned off (``train(energy=False)``)."""

    def begin(self) -> None: ...

    def end(self, iterations: int) -> None: ...

    def per_iteration(self):
        return None

    def close(self) -> None: ...


def _energy_meter(energy: Any, dev: torch.device):
    """(meter, owned): none (None/False), the caller's EnergyWindows object (``begin``/``end``/
    ``per_iteration``; the caller closes it), or one built by the caller's factory for the device
    (``energy(str(device))``, e.g. ``rep_tune.profiler.energy.training_meter``; closed here)."""
    if energy is None or energy is False:
        return _NoEnergy(), False
    if hasattr(energy, "begin"):
        return energy, False
    try:
        return energy(str(dev)), True
    except Exception as e:                                  # a meter never fails a run
        import sys
        print(f"rep-tune: energy not measured ({type(e).__name__}: {e})", file=sys.stderr)
        return _NoEnergy(), False


def load_tasks(config: RepConfig, scenario: Scenario) -> TaskSet:
    """The scenario rendered for the config's backbone (cached per process)."""
    arch = config.backbone.arch
    mean, std = backbone_normalization(config.backbone.name)
    return build_tasks(scenario, config.backbone.img_size or arch.img_size, arch.in_chans, mean=mean, std=std)


def _resolve_device(device: torch.device | str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _query_cache_plan(config: RepConfig, use_query_cache: bool | None) -> tuple[bool, str]:
    """Whether to cache queries, and why (said in the result)."""
    if use_query_cache is False:
        return False, "bypassed: turned off by the caller"
    if use_query_cache is True:
        return True, "on: requested by the caller (input pipeline is deterministic)"
    if not config.selection.cache:
        return False, "bypassed: selection.cache is false"
    # the input pipeline (rep_tune.data) is deterministic: no random augmentation
    return True, "on: deterministic input pipeline (no augmentation)"


Evaluate = Callable[..., float]     # (model, split, ts, batch_size, device, cache) -> accuracy


@torch.no_grad()
def _evaluate(model, split, ts: TaskSet, batch_size: int, device: torch.device, cache) -> float:
    """Top-1 accuracy on a test split, all classes competing (class-incremental), all blocks run.
    The default ``evaluate`` of ``train``; a benchmark hands in its own (same signature) to record
    which samples were right."""
    model.eval()
    correct = 0
    for start in range(0, len(split), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(split)))
        x, y, ids = split.batch(idx)
        x, y = x.to(device, non_blocking=True), y.to(device)
        q = model.query(x, ids=ids, dataset_key=ts.key, cache=cache) if cache is not None else model.query(x)
        correct += int((model(x, q).logits.argmax(-1) == y).sum())
    return correct / max(1, len(split))


def train(config: RepConfig, scenario: Scenario, *, callbacks: Sequence[Callback] = (),
          device: torch.device | str | None = None, progress: bool = True,
          use_query_cache: bool | None = None, energy: Any = None, eval_every_task: bool = True,
          report_test: bool = False, on_task_end: TaskEnd | None = None,
          resume_from: Mapping[str, Any] | None = None, evaluate: Evaluate | None = None) -> TrainResult:
    """Train ``config`` on ``scenario`` task by task; evaluate on all seen tasks after each.

    Accuracy is measured on ``scenario.eval_split`` (the test subset, or the validation split held
    out of the training pool). ``eval_every_task`` False evaluates only after the last task (the
    final accuracy; forgetting is then NaN). ``report_test`` also measures the finished run's final
    accuracy on the test split (``TrainResult.test_acc``): the search's confirmation reports it.

    Per task: ``training.epochs`` passes over the task's training set (capped at
    ``training.iters_per_task`` iterations), loss = CE (logits outside the task masked when
    ``training.train_mask``) + pull loss, optimiser re-created per task. ALD's t counts
    iterations within the task when ``ald.reset_per_task``, else over the run; with ``ald.horizon``
    each iteration stands for ``horizon / iterations-per-task`` iterations of the keep schedule
    (``rep_tune.schedule.schedule_time``), so a short run drops blocks as a ``horizon``-long one does.
    Callbacks run after each task's evaluation and may raise to stop the run.
    Raises NonFiniteLoss when the loss becomes NaN/inf.

    Precision: ``training.precision`` (fp32, or autocast bf16/fp16 with a loss scaler for fp16;
    see ``rep_tune.runtime.step``). At the start of each task, ``model.begin_task(task_id,
    n_tasks)`` runs when the model has it (E-prompt carry-over, component freezing).
    ``energy``: None/False = none; an object with ``begin()``, ``end(iterations)``,
    ``per_iteration()`` (``measure.EnergyWindows``); or a factory ``energy(device) -> EnergyWindows``
    (``rep_tune.profiler.energy.training_meter``: this machine's meters, estimated where none is
    readable). The caller hands it in: the runtime does not reach into the profiler.

    ``on_task_end(task_id, state)`` runs after each task's evaluation, before the callbacks (so a
    callback that stops the run leaves the finished task's state behind); ``state`` is plain data
    (module docstring) and ``resume_from=state`` continues the run with task ``task_id + 1``: the
    returned result then covers the whole run (accuracy matrix, records, iterations, seconds),
    and callbacks and ``on_task_end`` run for the resumed tasks only.
    ``evaluate`` replaces the accuracy function (``_evaluate``'s signature and semantics).
    """
    from rep_tune.progress import ProgressBar

    config.validate()
    run = _Run(config, scenario, _resolve_device(device), use_query_cache, evaluate or _evaluate)
    if resume_from is not None:
        run.restore(resume_from)
    bar = ProgressBar(sum(run.plan), "train", unit="it", enabled=progress, initial=sum(run.plan[:run.first_task]))
    meter, own_meter = _energy_meter(energy, run.dev)
    run.phases.energy = meter
    result: TrainResult | None = None
    try:
        for task, n_iter in zip(run.ts, run.plan):
            if task.task_id < run.first_task:
                continue
            trained = run.train_task(task, n_iter, bar)
            t1 = time.perf_counter()
            run.evaluate_task(task.task_id, every=eval_every_task)
            run.records.append(dataclasses.replace(
                trained, eval_seconds=time.perf_counter() - t1,
                accuracy=[float(a) for a in run.acc[task.task_id, :task.task_id + 1]]))
            bar.set_postfix(acc=f"{np.mean(run.acc[task.task_id, :task.task_id + 1]):.3f}")
            result = run.result(task.task_id, meter.per_iteration(), eval_every_task, report_test)
            if on_task_end is not None:
                on_task_end(task.task_id, run.state(task.task_id, result.seconds))
            for cb in callbacks:
                cb(task.task_id, result)
    finally:
        bar.close()
        if own_meter:
            meter.close()
    return result


class _Run:
    """One training run's setup and its state that changes (what ``resume_from`` restores); the
    steps of ``train``: a task's iterations, its evaluation, the result so far."""

    def __init__(self, config: RepConfig, scenario: Scenario, dev: torch.device, use_query_cache: bool | None,
                 evaluate: Evaluate) -> None:
        from rep_tune.runtime.model import RepModel
        from rep_tune.runtime.selection import process_cache
        self.config, self.dev, self.evaluate = config, dev, evaluate
        self.t_start = time.perf_counter()
        self.ts = load_tasks(config, scenario)
        tc = self.tc = config.training
        torch.manual_seed(tc.seed)
        self.gen = torch.Generator().manual_seed(tc.seed)
        self.model = RepModel(config, self.ts.num_classes).to(dev)
        self.precision = make_precision(config, dev)
        self.use_cache, self.cache_reason = _query_cache_plan(config, use_query_cache)
        self.cache = process_cache() if self.use_cache else None
        self.hits0, self.misses0 = (self.cache.hits, self.cache.misses) if self.cache else (0, 0)
        self.n = self.ts.n_tasks
        self.acc = np.full((self.n, self.n), np.nan)
        self.plan = [iterations_per_task(len(task.train), tc.batch_size, tc.epochs, tc.iters_per_task)
                     for task in self.ts]
        self.phases = IterationPhases(dev)
        self.timed_blocks: list[int] = []
        self.records: list[TaskRecord] = []
        self.global_t = 0
        self.first_task = 0
        self.dropper_gen = getattr(getattr(self.model, "dropper", None), "generator", None)

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from a task-boundary ``state`` (``state()``): weights, RNGs, figures so far."""
        self.first_task = _check_resume(state, self.n, self.tc.seed)
        loaded = self.model.load_state_dict(dict(state["model"]), strict=False)
        missing = [k for k in loaded.missing_keys if k.split(".", 1)[0] not in FROZEN_MODULES]
        if missing or loaded.unexpected_keys:
            raise ValueError(f"resume_from: the state does not fit {self.config.name}'s model (missing {missing}, "
                             f"unexpected {list(loaded.unexpected_keys)})")
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if self.dev.type == "cuda" and rng.get("cuda"):
            torch.cuda.set_rng_state_all(list(rng["cuda"]))
        self.gen.set_state(rng["data"])
        if self.dropper_gen is not None and rng.get("ald") is not None:
            self.dropper_gen.set_state(rng["ald"])
        self.acc[:] = state["acc_matrix"].numpy()
        self.global_t = int(state["iterations"])
        self.phases.timer.times = [float(x) for x in state["timer"].tolist()]
        self.timed_blocks = [int(x) for x in state["timed_blocks"]]
        self.phases.peak_bytes = int(state["peak_bytes"])
        self.records = [TaskRecord(**r) for r in state["records"]]
        self.t_start -= float(state["seconds"])

    def state(self, task_id: int, seconds: float) -> dict:
        """The run's state at the end of task ``task_id``, as plain data (module docstring)."""
        return {"format": RESUME_FORMAT, "task": task_id, "n_tasks": self.n, "seed": self.tc.seed,
                "config": self.config.name, "model": _trained_state(self.model),
                "rng": {"torch": torch.get_rng_state(), "data": self.gen.get_state(),
                        "cuda": torch.cuda.get_rng_state_all() if self.dev.type == "cuda" else [],
                        "ald": None if self.dropper_gen is None else self.dropper_gen.get_state()},
                "acc_matrix": torch.from_numpy(self.acc.copy()), "iterations": int(self.global_t),
                "seconds": float(seconds), "timer": torch.tensor(self.phases.timer.times, dtype=torch.float64),
                "timed_blocks": [int(b) for b in self.timed_blocks], "peak_bytes": int(self.phases.peak_bytes),
                "records": [_record_data(r) for r in self.records]}

    def train_task(self, task, n_iter: int, bar) -> TaskRecord:
        """``n_iter`` iterations of ``task`` (phases: ``IterationPhases``): its record, without the
        evaluation's accuracy and seconds."""
        model, tc, config = self.model, self.tc, self.config
        model.begin_task(task.task_id, self.n)
        model.set_seen_classes([c for t in self.ts if t.task_id <= task.task_id for c in t.classes])
        model.train()
        opt = make_optimizer(config, model.param_groups())
        mask = class_mask(self.ts.num_classes, task.classes, self.dev) if tc.train_mask else None
        bar.set_description(f"task {task.task_id + 1}/{self.n}")
        t0 = time.perf_counter()
        losses, blocks, k = [], [], 0
        probe_at = min(PROBE_AT, n_iter - 1)
        scale = horizon_scale(config.ald.horizon, n_iter)
        resident = lambda: resident_bytes([model], [opt])   # noqa: E731
        while k < n_iter:
            order = torch.randperm(len(task.train), generator=self.gen)
            for start in range(0, len(order), tc.batch_size):
                if k >= n_iter:
                    break
                t = schedule_time(k if config.ald.reset_per_task else self.global_t, scale)
                # the memory-probed iteration (profiled on CPU) is neither timed nor in the energy
                phase = "memory" if k == probe_at else "timed" if self.global_t >= WARMUP_ITERS else "warmup"
                with self.phases.iteration(phase, resident):
                    x, y, ids = task.train.batch(order[start:start + tc.batch_size])
                    x, y = x.to(self.dev, non_blocking=True), y.to(self.dev)
                    with self.precision.autocast():
                        q = model.query(x, ids=ids, dataset_key=self.ts.key, cache=self.cache) \
                            if self.cache is not None else model.query(x)
                    try:
                        loss, out = train_step(model, opt, x, y, query=q, iteration=t, task_id=task.task_id,
                                               mask=mask, clip_grad=tc.clip_grad, precision=self.precision)
                    except NonFiniteLoss as e:
                        raise NonFiniteLoss(f"{config.name}: {e}") from None
                if phase == "timed":
                    self.timed_blocks.append(sum(out.ran))
                losses.append(loss)
                blocks.append(sum(out.ran))
                k += 1
                self.global_t += 1
                bar.update(1)
                if k % 10 == 0:
                    bar.set_postfix(loss=f"{loss:.3f}")
        self.phases.end_window()
        return TaskRecord(task.task_id, list(task.classes), n_iter, time.perf_counter() - t0, 0.0,
                          float(np.mean(losses)) if losses else float("nan"), [],
                          float(np.mean(blocks)) if blocks else 0.0)

    def evaluate_task(self, task_id: int, every: bool) -> None:
        """Accuracy on every task seen so far, after task ``task_id`` (only after the last unless ``every``)."""
        if every or task_id == self.n - 1:
            for j in range(task_id + 1):
                self.acc[task_id, j] = self.evaluate(self.model, self.ts.eval_of(j), self.ts,
                                                     self.tc.eval_batch_size, self.dev, self.cache)

    def result(self, task_id: int, energy_j, every: bool, report_test: bool) -> TrainResult:
        """The run's TrainResult after task ``task_id`` (the test-split figure after the last, when asked)."""
        ts, phases = self.ts, self.phases
        res = _result(self.config, self.acc, self.records, phases.timer, self.timed_blocks, phases.peak_bytes,
                      self.dev, self.global_t, time.perf_counter() - self.t_start, self.use_cache, self.cache_reason,
                      self.cache, self.hits0, self.misses0, energy_j, self.precision.name)
        res.eval_size = ts.size_of(ts.eval_split, task_id + 1)
        res.eval_split = ts.eval_split
        if not every:
            res.forgetting = res.avg_incremental_acc = float("nan")
        if task_id == self.n - 1 and report_test:
            if ts.eval_split == "test":
                res.test_acc = res.final_acc
            else:
                res.test_acc = float(np.mean([self.evaluate(self.model, t.test, ts, self.tc.eval_batch_size,
                                                            self.dev, self.cache) for t in ts]))
            res.test_size = ts.size_of("test")
        return res


def _result(config, acc, records, timer, timed_blocks, peak_bytes, dev, iterations, seconds,
            use_cache, reason, cache, hits0, misses0, energy_j=None, precision="fp32") -> TrainResult:
    done = len(records)
    sub = acc[:done, :done]
    m = metrics.summarize(sub)
    lat = timer.summary_ms(0, "median")
    extras = {"timed_iterations": len(timer.times), "warmup_iterations": WARMUP_ITERS,
              "blocks_run": float(np.mean(timed_blocks)) if timed_blocks else float("nan"),
              "batch_size": config.training.batch_size}
    cost = make_cost(lat, peak_bytes or None, dev,
                     f"median over the run's iterations after {WARMUP_ITERS} warm-up, batch {config.training.batch_size}, "
                     f"{precision}", extras, energy_j)
    qc = {"used": use_cache, "reason": reason}
    if cache is not None:
        qc.update(hits=cache.hits - hits0, misses=cache.misses - misses0)
    return TrainResult(acc.copy(), m["final_acc"], m["avg_incremental_acc"], m["forgetting"], cost, iterations,
                       seconds, list(records), qc, str(dev), config.name)
