"""The class-incremental training loop: train prompts/keys/head task by task, evaluate, report.

``train(config, scenario)`` is the runtime's one entry point for the search and the CLI. It
knows nothing of search or devices: callbacks (e.g. an optuna pruner) see the result after
every task and may raise to stop the run. What does not depend on the config is built once
per process: the task data (rep_tune.data.tasks caches it), the frozen backbones
(backbone.load_backbone caches them) and the per-sample selection queries (selection.process_cache).

Cost of the run (``TrainResult.cost``, per training iteration): latency and peak memory from
``rep_tune.runtime.measure``; energy from measurement windows the caller hands in (``energy``:
``rep_tune.profiler.energy.training_meter`` is this machine's NVML, Jetson rails or RAPL, else
estimated and said so once), which span each task's training iterations (evaluation and the
memory-probed iteration excluded). The counters are device-wide: runs training at the same time
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

import contextlib
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
from rep_tune.runtime.measure import IterationTimer, PeakMemory, make_cost, resident_bytes
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

    from rep_tune.runtime.model import RepModel
    from rep_tune.runtime.selection import process_cache

    config.validate()
    evaluate = evaluate or _evaluate
    dev = _resolve_device(device)
    t_start = time.perf_counter()
    ts = load_tasks(config, scenario)
    tc = config.training
    torch.manual_seed(tc.seed)
    gen = torch.Generator().manual_seed(tc.seed)
    model = RepModel(config, ts.num_classes).to(dev)
    precision = make_precision(config, dev)
    use_cache, reason = _query_cache_plan(config, use_query_cache)
    cache = process_cache() if use_cache else None
    hits0, misses0 = (cache.hits, cache.misses) if cache else (0, 0)

    n = ts.n_tasks
    acc = np.full((n, n), np.nan)
    plan = []
    for task in ts:
        plan.append(iterations_per_task(len(task.train), tc.batch_size, tc.epochs, tc.iters_per_task))
    timer = IterationTimer(dev)
    timed_blocks: list[int] = []
    peak_bytes = 0
    records: list[TaskRecord] = []
    global_t = 0
    dropper_gen = getattr(getattr(model, "dropper", None), "generator", None)
    first_task = 0
    if resume_from is not None:
        first_task = _check_resume(resume_from, n, tc.seed)
        loaded = model.load_state_dict(dict(resume_from["model"]), strict=False)
        missing = [k for k in loaded.missing_keys if k.split(".", 1)[0] not in FROZEN_MODULES]
        if missing or loaded.unexpected_keys:
            raise ValueError(f"resume_from: the state does not fit {config.name}'s model (missing {missing}, "
                             f"unexpected {list(loaded.unexpected_keys)})")
        rng = resume_from["rng"]
        torch.set_rng_state(rng["torch"])
        if dev.type == "cuda" and rng.get("cuda"):
            torch.cuda.set_rng_state_all(list(rng["cuda"]))
        gen.set_state(rng["data"])
        if dropper_gen is not None and rng.get("ald") is not None:
            dropper_gen.set_state(rng["ald"])
        acc[:] = resume_from["acc_matrix"].numpy()
        global_t = int(resume_from["iterations"])
        timer.times = [float(x) for x in resume_from["timer"].tolist()]
        timed_blocks = [int(x) for x in resume_from["timed_blocks"]]
        peak_bytes = int(resume_from["peak_bytes"])
        records = [TaskRecord(**r) for r in resume_from["records"]]
        t_start -= float(resume_from["seconds"])

    def task_end_state(task_id: int, seconds: float) -> dict:
        return {"format": RESUME_FORMAT, "task": task_id, "n_tasks": n, "seed": tc.seed, "config": config.name,
                "model": _trained_state(model),
                "rng": {"torch": torch.get_rng_state(), "data": gen.get_state(),
                        "cuda": torch.cuda.get_rng_state_all() if dev.type == "cuda" else [],
                        "ald": None if dropper_gen is None else dropper_gen.get_state()},
                "acc_matrix": torch.from_numpy(acc.copy()), "iterations": int(global_t), "seconds": float(seconds),
                "timer": torch.tensor(timer.times, dtype=torch.float64),
                "timed_blocks": [int(b) for b in timed_blocks], "peak_bytes": int(peak_bytes),
                "records": [_record_data(r) for r in records]}

    bar = ProgressBar(sum(plan), "train", unit="it", enabled=progress, initial=sum(plan[:first_task]))
    result: TrainResult | None = None
    meter, own_meter = _energy_meter(energy, dev)
    begin_task = getattr(model, "begin_task", None)
    try:
        for task, n_iter in zip(ts, plan):
            if task.task_id < first_task:
                continue
            if begin_task is not None:
                begin_task(task.task_id, n)
                model.set_seen_classes([c for t in ts if t.task_id <= task.task_id for c in t.classes])
            model.train()
            opt = make_optimizer(config, model.param_groups())
            mask = class_mask(ts.num_classes, task.classes, dev) if tc.train_mask else None
            bar.set_description(f"task {task.task_id + 1}/{n}")
            t0 = time.perf_counter()
            losses, blocks, k = [], [], 0
            probe_at = min(PROBE_AT, n_iter - 1)
            scale = horizon_scale(config.ald.horizon, n_iter)
            meter.begin()
            in_window = 0                             # iterations of the open energy window
            while k < n_iter:
                order = torch.randperm(len(task.train), generator=gen)
                for start in range(0, len(order), tc.batch_size):
                    if k >= n_iter:
                        break
                    t = schedule_time(k if config.ald.reset_per_task else global_t, scale)
                    probe = k == probe_at             # memory-probed (profiled on CPU): not timed
                    timed = not probe and global_t >= WARMUP_ITERS
                    base = resident_bytes([model], [opt]) if probe else 0
                    if probe:                          # the profiled iteration is left out of the energy
                        meter.end(in_window)
                    with PeakMemory(dev) if probe else contextlib.nullcontext() as pm:
                        if timed:
                            timer.start()
                        x, y, ids = task.train.batch(order[start:start + tc.batch_size])
                        x, y = x.to(dev, non_blocking=True), y.to(dev)
                        with precision.autocast():
                            q = model.query(x, ids=ids, dataset_key=ts.key, cache=cache) if cache is not None \
                                else model.query(x)
                        try:
                            loss, out = train_step(model, opt, x, y, query=q, iteration=t, task_id=task.task_id,
                                                   mask=mask, clip_grad=tc.clip_grad, precision=precision)
                        except NonFiniteLoss as e:
                            raise NonFiniteLoss(f"{config.name}: {e}") from None
                        if timed:
                            timer.stop()
                            timed_blocks.append(sum(out.ran))
                    if probe:
                        peak_bytes = max(peak_bytes, base + pm.transient_bytes)
                        meter.begin()
                        in_window = 0
                    else:
                        in_window += 1
                    losses.append(loss)
                    blocks.append(sum(out.ran))
                    k += 1
                    global_t += 1
                    bar.update(1)
                    if k % 10 == 0:
                        bar.set_postfix(loss=f"{loss:.3f}")
            meter.end(in_window)
            train_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            last = task.task_id == n - 1
            if eval_every_task or last:
                for j in range(task.task_id + 1):
                    acc[task.task_id, j] = evaluate(model, ts.eval_of(j), ts, tc.eval_batch_size, dev, cache)
            records.append(TaskRecord(task.task_id, list(task.classes), n_iter, train_s, time.perf_counter() - t1,
                                      float(np.mean(losses)) if losses else float("nan"),
                                      [float(a) for a in acc[task.task_id, :task.task_id + 1]],
                                      float(np.mean(blocks)) if blocks else 0.0))
            bar.set_postfix(acc=f"{np.mean(acc[task.task_id, :task.task_id + 1]):.3f}")
            result = _result(config, acc, records, timer, timed_blocks, peak_bytes, dev, global_t,
                             time.perf_counter() - t_start, use_cache, reason, cache, hits0, misses0,
                             meter.per_iteration(), precision.name)
            result.eval_size = ts.size_of(ts.eval_split, task.task_id + 1)
            result.eval_split = ts.eval_split
            if not eval_every_task:
                result.forgetting = result.avg_incremental_acc = float("nan")
            if last and report_test:
                if ts.eval_split == "test":
                    result.test_acc = result.final_acc
                else:
                    result.test_acc = float(np.mean([evaluate(model, t.test, ts, tc.eval_batch_size, dev, cache)
                                                     for t in ts]))
                result.test_size = ts.size_of("test")
            if on_task_end is not None:
                on_task_end(task.task_id, task_end_state(task.task_id, result.seconds))
            for cb in callbacks:
                cb(task.task_id, result)
    finally:
        bar.close()
        if own_meter:
            meter.close()
    return result


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
