"""The objective: plan each asked trial (pre-screened / refused / cached replay / train / wait), and
finish it (record, constraints, tell). Trainings themselves run on an executor (``loop.py``).

One objective value: the true final average accuracy after the last task (a fraction), within
budgets or not (Optuna's pruners work on the per-task reports). Feasibility lives in the
constraints only: latency, memory (and energy when budgeted) are ``<metric>@<device> = cost /
budget - 1`` (<= 0 feasible) for every target device, which the samplers read (TPE ranks
infeasible trials by violation after the feasible ones; see ``record``); the best config per
device is chosen from ``final_acc`` and ``feasible@<device>``, never from the value.

Plans, decided in the driver for each asked trial:

  refused      the space or the deployment mapping rejects the config (``MappingError``): FAIL
               with ``error``, never trained.
  prescreened  the cost model puts it over budget by more than ``margin`` on every target: it is
               never trained; PRUNED (no value, no reports) with its predicted constraints, the
               reason and a note. PRUNED rather than COMPLETE with a made-up value: the dashboard
               shows it apart from trained trials and no plot gets a fake accuracy; TPE still
               learns from it, since it reads PRUNED trials and ranks any trial with a positive
               violation by that violation, whatever its state (FAIL would hide it from TPE). See
               ``record``. Reference points (``role``) are trained anyway, so results state their
               gain over both.
  cached       the config (by ``config_hash``) was trained before, in this process or any process
               sharing the study: its per-task reports and result are replayed (``cached_from``).
  train        this trial trains the config; the executor runs it and the driver finishes it.
  wait         another live trial (any process) is training the same config: this one waits for
               its result and replays it; if that trial dies, this one plans again.

Deciding *train* vs *wait* across processes (no config trained twice): a trial first writes its
claim (``config_hash``), then reads the other live claims of that hash and writes its decision
(``trained``). It waits for a result when another claim decided to train or has a lower trial
number; otherwise it waits (briefly) for the higher-numbered undecided claims to decide, and
trains unless one of them did. Since each trial writes before it reads, of two concurrent claims
at least one sees the other, so at most one trains; the lowest live claim trains when no other
does. Only Optuna's storage API is used, so it holds for any storage several processes share.

Per-task reports: after task t the running average accuracy over the tasks seen so far is
reported at step t (a fraction); every config sees the same class order, so values at one step
compare. Failures: an exception in training is recorded in ``error`` and the trial FAILs; the
search goes on.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from rep_tune.config import RepConfig
from rep_tune.data.registry import known_classes
from rep_tune.data.scenario import Scenario
from rep_tune.figures import METRICS, Cost
from rep_tune.search import record
from rep_tune.search.record import RecordWriter, TrialRecord
from rep_tune.search.space import SearchSpace, config_hash
from rep_tune.search.targets import Target

DECIDE_WAIT_S = 10.0          # longest wait for another claim's decision (they decide within milliseconds)


@dataclass
class Evaluation:
    """What training one config produced (device-independent, except ``measured``). Fractions."""

    config_hash: str
    state: str                                   # complete | pruned
    task_acc: list[float] = field(default_factory=list)   # running average accuracy after each task
    final_acc: float | None = None
    forgetting: float | None = None
    avg_incremental_acc: float | None = None
    measured: Cost | None = None
    seconds: float = 0.0
    iterations: int = 0
    trial_number: int | None = None              # the trial that trained it (None: trained outside a trial)
    pruned_at_task: int | None = None
    stopped: str | None = None

    @classmethod
    def from_record(cls, r: TrialRecord) -> Evaluation:
        """A finished trial's result, for replay in another trial (any process)."""
        complete = r.state == TrialState.COMPLETE
        return cls(r.config_hash or "", "complete" if complete else "pruned", list(r.task_acc), r.final_acc,
                   r.forgetting, r.avg_incremental_acc, r.measured, float(r.train_seconds or 0.0),
                   int(r.iterations or 0), r.cached_from if r.cached_from is not None else r.number,
                   r.pruned_at_task, r.stopped)


def running_accuracy(acc_matrix: Any, task: int) -> float:
    """Average accuracy over tasks 0..task after training task ``task`` (row ``task``), a fraction."""
    row = [float(v) for v in list(acc_matrix[task])[: task + 1]]
    vals = [v for v in row if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else float("nan")


class Trainer:
    """Trains one config on the scenario (``train_fn`` is the seam tests replace); thread-safe.

    ``cache`` holds this process's results by config hash; the study's storage holds everyone's.
    """

    def __init__(self, scenario: Scenario, train_fn: Callable | None = None, *, progress: bool = False):
        self.scenario = scenario
        self._train_fn = train_fn
        self.progress = progress
        self.cache: dict[str, Evaluation] = {}
        self.calls = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        """Picklable for Ray workers: the lock is recreated, the cache stays with the driver."""
        state = dict(self.__dict__)
        state.pop("_lock")
        state["cache"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def train_fn(self) -> Callable:
        if self._train_fn is None:
            from rep_tune.runtime.learner import train
            self._train_fn = train
        return self._train_fn

    def cached(self, cfg_hash: str) -> Evaluation | None:
        with self._lock:
            return self.cache.get(cfg_hash)

    def remember(self, ev: Evaluation) -> None:
        with self._lock:
            self.cache[ev.config_hash] = ev

    def train(self, config: RepConfig, on_task: Callable[[int, float], None] | None = None,
              **train_kw: Any) -> Evaluation:
        """Train ``config``; ``on_task(task, running_acc)`` after each task may raise TrialPruned,
        which is re-raised with the partial Evaluation as its ``evaluation`` attribute.
        ``train_kw`` go to ``train_fn`` as they are (the Ray Tune trainable's ``on_task_end`` /
        ``resume_from``: per-task checkpoints, ``runtime.learner.train``)."""
        h = config_hash(config)
        ev = Evaluation(h, "pruned")
        t0 = time.perf_counter()

        def callback(task_id: int, so_far: Any) -> None:
            acc = running_accuracy(so_far.acc_matrix, task_id)
            ev.task_acc.append(acc)
            ev.measured = getattr(so_far, "cost", None) or ev.measured
            if on_task is not None:
                on_task(task_id, acc)

        with self._lock:
            self.calls += 1
        try:
            from rep_tune.profiler.energy import training_meter   # lazy: planning imports no torch
            train_kw.setdefault("energy", training_meter)       # this machine's meters, handed in
            result = self.train_fn(config, self.scenario, callbacks=(callback,), progress=self.progress, **train_kw)
        except optuna.TrialPruned as e:
            ev.seconds = time.perf_counter() - t0
            e.evaluation = ev
            raise
        final = None if result.final_acc is None else float(result.final_acc)
        if final is None or math.isnan(final):
            raise FloatingPointError("training produced a NaN accuracy (diverged)")
        ev.state, ev.final_acc = "complete", final
        ev.forgetting = None if result.forgetting is None else float(result.forgetting)
        ev.avg_incremental_acc = None if result.avg_incremental_acc is None else float(result.avg_incremental_acc)
        ev.measured = result.cost
        ev.iterations = int(result.iterations)
        ev.seconds = float(result.seconds)
        self.remember(ev)
        return ev


@dataclass
class Screen:
    """Pre-screen outcome of one candidate."""

    train: bool
    reasons: list[str]


def prescreen(predicted: dict[str, Cost], targets: Sequence[Target], margin: float) -> Screen:
    """Train unless the cost model puts the candidate over budget by more than ``margin`` on every target."""
    reasons, any_ok = [], False
    for t in targets:
        over = []
        for m, b in (t.budgets.budgets.items() if t.budgets else []):
            fig = predicted[t.key].get(m)
            if fig is not None and fig.value > b.value * (1.0 + margin):
                over.append(f"{m} {fig.value:.4g} > {b.value:.4g} {METRICS[m].unit} "
                            f"(+{100 * (fig.value / b.value - 1):.0f}%) on {t.key}")
        reasons += over
        any_ok |= not over
    return Screen(any_ok or not targets, [] if any_ok else reasons)


# ---- plans -----------------------------------------------------------------------------------
REFUSED, PRESCREENED, CACHED, TRAIN, WAIT = "refused", "prescreened", "cached", "train", "wait"


@dataclass
class Plan:
    """What the driver decided for one asked trial."""

    kind: str
    trial: optuna.Trial
    config: RepConfig | None = None
    config_hash: str | None = None
    predicted: dict[str, Cost] = field(default_factory=dict)
    source: Evaluation | None = None      # CACHED: the result replayed
    reason: str = ""                      # REFUSED: why

    @property
    def number(self) -> int:
        return self.trial.number


@dataclass
class Outcome:
    """How a training ended (what an executor returns for one job)."""

    evaluation: Evaluation | None
    state: str                 # complete | pruned | failed
    message: str = ""


class Objective:
    """Plans and finishes trials; the trial loop (``loop.run_trials``) drives it."""

    def __init__(self, space: SearchSpace, base: RepConfig, targets: Sequence[Target], trainer: Trainer,
                 *, margin: float = 0.1, prescreen: bool = True):
        self.space, self.base, self.targets, self.trainer = space, base, list(targets), trainer
        self.margin, self.use_prescreen = margin, prescreen
        self.num_classes = known_classes(trainer.scenario.dataset)     # head width priced; None: the model's default
        self.constraint_order: list[str] = []
        self.owner = record.this_process()

    @property
    def n_tasks(self) -> int:
        return int(self.trainer.scenario.n_tasks)

    # ---- planning ------------------------------------------------------------------------
    def plan(self, study: optuna.Study, trial: optuna.Trial) -> Plan:
        """Sample, price and pre-screen ``trial``'s config, then decide how it is evaluated (records attrs)."""
        w = RecordWriter.of(trial)
        w.owner(self.owner)
        try:
            cfg = self.space.sample(trial, self.base)
            cfg.name = f"{self.space.name}-trial{trial.number}"
            h = config_hash(cfg)
            # pricing maps the config onto each deployment once; a config that cannot map raises here
            predicted = {t.key: t.predict(cfg, self.num_classes) for t in self.targets}
        except (ValueError, KeyError) as e:       # MappingError is a ValueError
            w.error(e)
            w.decided(False)
            return Plan(REFUSED, trial, reason=f"{type(e).__name__}: {e}")
        for key, cost in predicted.items():
            w.priced(key, cost)
        screen = prescreen(predicted, self.targets, self.margin) if self.use_prescreen else Screen(True, [])
        role = trial.user_attrs.get(record.ROLE)
        if not screen.train and role:
            w.over_budget_reference(screen.reasons)
            screen = Screen(True, [])
        w.planned(cfg.to_dict(), h)
        if not screen.train:
            w.prescreened(screen.reasons)
            return Plan(PRESCREENED, trial, cfg, h, predicted)
        plan = Plan(TRAIN, trial, cfg, h, predicted)
        return self.decide(study, plan)

    def lookup(self, study: optuna.Study, h: str, me: int) -> Evaluation | None:
        """A finished result for config ``h``: this process's cache, else any finished trial in the study."""
        ev = self.trainer.cached(h)
        if ev is not None:
            return ev
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if t.number == me or t.user_attrs.get(record.CONFIG_HASH) != h:
                continue
            r = TrialRecord.read(t)
            if r.prescreened or r.stopped or (r.final_acc is None and r.state == TrialState.COMPLETE):
                continue
            if r.trained or r.cached_from is not None:
                return Evaluation.from_record(r)
        return None

    def decide(self, study: optuna.Study, plan: Plan) -> Plan:
        """CACHED if a result exists, else the claim protocol (module docstring): TRAIN or WAIT."""
        w = RecordWriter.of(plan.trial)
        me, h = plan.number, plan.config_hash
        src = self.lookup(study, h, me)
        if src is not None:
            if src.trial_number is None:          # trained in this process outside a trial (baseline budgets)
                w.decided(True)
                return Plan(CACHED, plan.trial, plan.config, h, plan.predicted, src)
            w.cached_from(src.trial_number)
            return Plan(CACHED, plan.trial, plan.config, h, plan.predicted, src)
        give_up = time.monotonic() + DECIDE_WAIT_S
        while True:
            others = [r for r in self._claims(study, h) if r.number != me]
            if any(r.trained for r in others) or any(r.number < me for r in others):
                w.decided(False)
                return Plan(WAIT, plan.trial, plan.config, h, plan.predicted)
            if all(r.trained is not None for r in others) or time.monotonic() > give_up:
                w.decided(True)
                return Plan(TRAIN, plan.trial, plan.config, h, plan.predicted)
            time.sleep(0.05)

    def _claims(self, study: optuna.Study, h: str) -> list[TrialRecord]:
        """Live claims of config ``h``: RUNNING trials that carry it, not pre-screened, owner not gone."""
        out = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get(record.CONFIG_HASH) != h:
                continue
            r = TrialRecord.read(t)
            if r.prescreened or record.owner_alive(r.owner) is False:
                continue
            out.append(r)
        return out

    def recheck(self, study: optuna.Study, plan: Plan) -> Plan | None:
        """For a WAIT plan: CACHED once the result exists, a fresh decision when no live trial trains
        the config any more, else None (keep waiting)."""
        src = self.lookup(study, plan.config_hash, plan.number)
        if src is not None and src.trial_number is not None:
            RecordWriter.of(plan.trial).cached_from(src.trial_number)
            return Plan(CACHED, plan.trial, plan.config, plan.config_hash, plan.predicted, src)
        if any(r.trained for r in self._claims(study, plan.config_hash) if r.number != plan.number):
            return None
        return self.decide(study, plan)

    # ---- finishing -----------------------------------------------------------------------
    def record_costs(self, trial: optuna.trial.BaseTrial, predicted: dict[str, Cost], measured: Cost | None) -> bool:
        """Per-device figures (value + source) and constraints; returns feasibility on every device."""
        per_device = {}
        for t in self.targets:
            per_device[t.key] = (t.trial_cost(predicted[t.key], measured), t.budgets.limits() if t.budgets else {})
        return RecordWriter.of(trial).costs(per_device, self.constraint_order)

    def finish_prescreened(self, study: optuna.Study, plan: Plan) -> None:
        """Never trained: the predicted constraints, then PRUNED (see the module docstring), a note."""
        self.record_costs(plan.trial, plan.predicted, None)
        study.tell(plan.trial, state=TrialState.PRUNED, skip_if_finished=True)
        self.note(study, plan)

    def finish_refused(self, study: optuna.Study, plan: Plan) -> None:
        study.tell(plan.trial, state=TrialState.FAIL, skip_if_finished=True)
        self.note(study, plan)

    def note(self, study: optuna.Study, plan: Plan) -> None:
        """The trial's dashboard note (``report.note_trial``: best effort, only with optuna-dashboard)."""
        from rep_tune.search import report
        report.note_trial(study, plan.trial, self.targets, self.trainer.scenario)

    def replay(self, study: optuna.Study, plan: Plan) -> None:
        """Report the cached result's per-task values (the pruner sees them) and finish like a training."""
        src = plan.source
        for task, acc in enumerate(src.task_acc):
            plan.trial.report(acc, task)
        # a result trained in this process outside any trial (the baseline, for relative budgets) is
        # this trial's own training
        self.finish(study, plan, Outcome(src, src.state), replayed=src.trial_number is not None)

    def finish(self, study: optuna.Study, plan: Plan, outcome: Outcome, *, replayed: bool = False) -> None:
        """Record a training's outcome (or a replay) and tell Optuna."""
        trial, w, ev = plan.trial, RecordWriter.of(plan.trial), outcome.evaluation
        if ev is not None:
            if not replayed:
                ev.trial_number = plan.number
                self.trainer.remember(ev)
            w.result(ev.final_acc, ev.forgetting, ev.avg_incremental_acc, None if replayed else ev.seconds,
                     None if replayed else ev.iterations, None if replayed else ev.measured)
        if outcome.state == "failed":
            w.error(outcome.message or "training failed")
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        elif outcome.state == "pruned":
            w.pruned(ev.pruned_at_task if ev else None, ev.stopped if ev else None)
            self.record_costs(trial, plan.predicted, None)
            study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        else:                                # the true accuracy; feasibility is in the constraints
            self.record_costs(trial, plan.predicted, ev.measured)
            study.tell(trial, ev.final_acc, skip_if_finished=True)
        self.note(study, plan)

    def interrupted(self, study: optuna.Study, plan: Plan, why: str) -> None:
        """Fail a trial whose training was cut off (not counted as trained: a resumed run retrains it)."""
        RecordWriter.of(plan.trial).interrupted(why)
        study.tell(plan.trial, state=TrialState.FAIL, skip_if_finished=True)


def restore(trainer: Trainer, trials: Sequence[FrozenTrial]) -> None:
    """Refill a process's cache from a study's finished trained trials (resume): optional, since
    ``Objective.lookup`` also reads the storage; it keeps replays local after a restart."""
    for t in trials:
        r = TrialRecord.read(t)
        if r.config_hash and r.trained and r.state == TrialState.COMPLETE and r.final_acc is not None:
            trainer.cache.setdefault(r.config_hash, Evaluation.from_record(r))
