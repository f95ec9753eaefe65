"""The trial record: every attribute a search writes on an Optuna trial, how it is written, how it is read.

This module is the only place that knows attribute keys (as Optuna's ``_CONSTRAINTS_KEY`` is the
only place that knows where constraints live). Writers go through ``RecordWriter``; readers go
through ``TrialRecord.read(frozen_trial)`` or the key functions below. Per-metric keys iterate
``rep_tune.figures.METRICS``, so a registered metric is recorded, constrained and reported with
no change here.

Scale: **accuracy is a fraction in [0, 1] everywhere it is stored** (trial values, intermediate
values, ``final_acc``, ``forgetting``, ``avg_incremental_acc``, ``best_<device>.yaml``). Only
display code (summary table, progress bar, plot labels) multiplies by 100.

Trial user attributes (what the dashboard lists as columns):

    role                   "paper" | "baseline" for the enqueued reference points, else absent
    config, config_hash    the proxy RepConfig as trained (dict) and its identity (``space.config_hash``)
    owner                  "host:pid:start" of the process that ran the trial (its start time
                           tells a recycled pid apart); a RUNNING trial whose owner is gone is failed
    prescreened            True: ruled out by the cost model, never trained (state PRUNED, no
                           value, no reports; constraints = predicted violations; see below)
    prescreen_reason       which budgets it exceeded, by how much, on which device
    over_budget_reference  a reference point trained although the cost model rules it out
    trained                the planner's decision: True = this trial trains its config (it paid
                           for a training once finished); False = pre-screened, replayed or waiting
    cached_from            number of the trial whose training this one replays (same config_hash)
    final_acc              final average accuracy after the last task (fraction)
    forgetting, avg_incremental_acc   (fractions)
    train_seconds, iterations
    pruned_at_task         task after which the pruner stopped it
    stopped                why a training stopped early without the pruner ("search timeout")
    error                  exception of a failed training / a refused config (the search goes on)
    interrupted            why a trial was failed without an error (Ctrl-C, a killed owner):
                           not counted as trained, so a resumed run trains it again
    measured_<metric>, measured_<metric>_source      what the runtime measured here
    predicted_<metric>@<device>, predicted_<metric>_source@<device>   the cost model's figure
    <metric>@<device>, <metric>_source@<device>      the figure the constraint uses (measured on
                           a local target, else the deployment prediction)
    feasible@<device>      every budget of that device met

Trial system attributes:

    constraints:<metric>@<device>   ``cost / budget - 1`` (<= 0 feasible): Optuna 5's own form,
                                    written with ``trial.set_constraint``
    constraints                     the same values as one list, in ``Study.user_attrs["constraints"]``
                                    order: the legacy form that optuna-dashboard 0.21 shows. Optuna
                                    reads both forms, so ``FrozenTrial.constraints`` holds each value
                                    twice (named and "0", "1", ...); TPE and NSGA-II rank by the sum of
                                    violations (same order), GP multiplies the feasibility probability
                                    of each (a stricter weight on uncertain feasibility).

Objective value: the true final accuracy (a fraction) of every COMPLETE trial, within budgets
or not; feasibility lives in the constraints alone, never in the value, so every plot of the
value (history, slice, importance) shows accuracies. Samplers read the constraints from the
system attributes above (Optuna 5: no ``constraints_func``, which is deprecated): TPE puts every
trial with a positive violation in its own "infeasible" group, ranked by the sum of violations
after the feasible COMPLETE and the PRUNED ones, so it still prefers feasible configs;
``study.best_trial`` is the most accurate *feasible* trial. Whatever picks a best here
(``report.best_for``, the confirmation) reads ``final_acc`` and ``feasible@<device>``, never the
value. optuna-dashboard 0.21's "Best Trial" card ranks by value alone (its storage query has no
constraints), so it may show an over-budget trial: the study note names the best within
budgets per device, and the dashboard marks infeasible trials in its plots. The study names the
value with ``study.set_metric_names([OBJECTIVE_NAME])``.

Pre-screened trials are told as PRUNED (``prescreened`` True, constraints = the predicted
violations, no value and no intermediate values), not COMPLETE with a made-up value: the
dashboard shows them as pruned, apart from trained ones. TPE reads PRUNED trials, and a pruned
trial with a positive violation lands in the same infeasible group as a COMPLETE one, ranked by
the same violations, so TPE learns exactly as much from them as before. (FAIL would hide them
from TPE altogether. GPSampler and NSGA-II read COMPLETE trials only and ignore them: a
pre-screened config costs no training, so resampling near one costs a cost-model call.)
Percentile/median pruners compare COMPLETE trials' reports only, and pre-screened trials report
nothing, so they never enter the comparison.

Notes (optuna-dashboard, when installed): each finished trial gets a Markdown note (its verdict
per budget and device, the cost source of each figure, the search's fidelity: ``report.trial_note``);
the study gets one naming the best trial within budgets per device.

Study user attributes: ``space``, ``scenario``, ``devices`` (profile, deployment backbone,
accuracy label), ``budgets``, ``constraints`` (the constraint names, in list order),
``references`` (the reference roles enqueued, set once by the process that created the study).
"""
from __future__ import annotations

import math
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.study._constrained_optimization import _CONSTRAINTS_KEY as OPTUNA_CONSTRAINTS_KEY
from optuna.trial import FrozenTrial, TrialState

from rep_tune.figures import METRICS, Cost, Figure
from rep_tune.search.budgets import violation

# ---- keys ------------------------------------------------------------------------------------
ROLE = "role"
CONFIG = "config"
CONFIG_HASH = "config_hash"
OWNER = "owner"
PRESCREENED = "prescreened"
PRESCREEN_REASON = "prescreen_reason"
OVER_BUDGET_REFERENCE = "over_budget_reference"
TRAINED = "trained"
CACHED_FROM = "cached_from"
FINAL_ACC = "final_acc"
FORGETTING = "forgetting"
AVG_INCREMENTAL_ACC = "avg_incremental_acc"
TRAIN_SECONDS = "train_seconds"
ITERATIONS = "iterations"
PRUNED_AT_TASK = "pruned_at_task"
STOPPED = "stopped"
ERROR = "error"
INTERRUPTED = "interrupted"
LEGACY_CONSTRAINTS = "constraints"          # optuna-dashboard 0.21 reads this system attribute (a list)

# study user attributes
STUDY_SPACE = "space"
STUDY_SCENARIO = "scenario"
STUDY_DEVICES = "devices"
STUDY_BUDGETS = "budgets"
STUDY_CONSTRAINTS = "constraints"
STUDY_REFERENCES = "references"

OBJECTIVE_NAME = "final_acc"                # the true accuracy; feasibility is in the constraints
ERROR_CHARS = 300


def value_key(metric: str, device: str) -> str:
    """The figure a constraint uses on ``device``: ``latency_ms@jetson_orin``."""
    return f"{metric}@{device}"


def source_key(metric: str, device: str) -> str:
    return f"{metric}_source@{device}"


def predicted_key(metric: str, device: str) -> str:
    return f"predicted_{metric}@{device}"


def predicted_source_key(metric: str, device: str) -> str:
    return f"predicted_{metric}_source@{device}"


def measured_key(metric: str) -> str:
    return f"measured_{metric}"


def measured_source_key(metric: str) -> str:
    return f"measured_{metric}_source"


def feasible_key(device: str) -> str:
    return f"feasible@{device}"


def constraint_name(metric: str, device: str) -> str:
    """Name of a constraint (Optuna stores it as ``constraints:<name>``)."""
    return value_key(metric, device)


def constraint_names(budgets: Mapping[str, Iterable[str]]) -> list[str]:
    """Every constraint of a search, in the order of the legacy list: device by device, metric by
    metric in registry order. ``budgets`` maps a device key to its budgeted metric names."""
    return [constraint_name(m, d) for d, ms in budgets.items() for m in METRICS if m in set(ms)]


# ---- owner -----------------------------------------------------------------------------------
def this_process() -> str:
    """``host:pid:start``: who owns a RUNNING trial (start time tells a recycled pid apart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> int:
    try:
        import psutil
        return int(psutil.Process(pid).create_time())
    except Exception:
        return 0


def owner_alive(owner: str | None) -> bool | None:
    """True/False for an owner on this host (pid exists with the same start time); None elsewhere
    or unknown (another host's trial is judged by its heartbeat instead)."""
    if not owner:
        return None
    parts = owner.rsplit(":", 2)
    if len(parts) != 3:
        return None
    host, pid_s, start_s = parts
    if host != socket.gethostname():
        return None
    try:
        pid, start = int(pid_s), int(start_s)
    except ValueError:
        return None
    if pid == os.getpid():
        return True
    try:
        import psutil
        if not psutil.pid_exists(pid):
            return False
        return start == 0 or abs(int(psutil.Process(pid).create_time()) - start) <= 1
    except Exception:
        return False


# ---- the typed view --------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceRecord:
    """What a trial records for one target device."""

    device: str
    figures: dict[str, Figure] = field(default_factory=dict)     # the figures the constraints use
    predicted: dict[str, Figure] = field(default_factory=dict)   # the cost model's (always present once planned)
    feasible: bool | None = None
    constraints: dict[str, float] = field(default_factory=dict)  # metric -> cost / budget - 1

    def value(self, metric: str) -> float | None:
        f = self.figures.get(metric)
        return None if f is None else f.value

    def source(self, metric: str) -> str | None:
        f = self.figures.get(metric)
        return None if f is None else f.source


@dataclass(frozen=True)
class TrialRecord:
    """A read-only, typed view of one trial's record: ``TrialRecord.read(frozen_trial)``."""

    number: int
    trial_id: int
    state: TrialState
    value: float | None                       # the value told to Optuna: final_acc when COMPLETE, else None
    params: dict[str, Any]
    role: str | None
    config: dict | None
    config_hash: str | None
    owner: str | None
    prescreened: bool
    prescreen_reason: str | None
    over_budget_reference: str | None
    trained: bool | None                      # None: not decided yet
    cached_from: int | None
    final_acc: float | None
    forgetting: float | None
    avg_incremental_acc: float | None
    task_acc: list[float]                     # running average accuracy after each task (fractions)
    train_seconds: float | None
    iterations: int | None
    pruned_at_task: int | None
    stopped: str | None
    error: str | None
    interrupted: str | None
    measured: Cost | None
    devices: dict[str, DeviceRecord]

    @classmethod
    def read(cls, trial: FrozenTrial) -> TrialRecord:
        ua, sa = trial.user_attrs, trial.system_attrs
        devices: dict[str, DeviceRecord] = {}
        for key in ua:
            if key.startswith("feasible@"):
                d = key.partition("@")[2]
                devices[d] = _device(ua, sa, d)
        for key in ua:                         # devices priced but not (yet) constrained
            if key.startswith("predicted_") and "@" in key:
                d = key.partition("@")[2]
                if d not in devices:
                    devices[d] = _device(ua, sa, d)
        measured = {m: Figure(float(ua[measured_key(m)]), METRICS[m].unit, ua.get(measured_source_key(m)) or "measured")
                    for m in METRICS if ua.get(measured_key(m)) is not None}
        return cls(
            number=trial.number, trial_id=trial._trial_id, state=trial.state, value=trial.value,
            params=dict(trial.params), role=ua.get(ROLE), config=ua.get(CONFIG), config_hash=ua.get(CONFIG_HASH),
            owner=ua.get(OWNER), prescreened=bool(ua.get(PRESCREENED)), prescreen_reason=ua.get(PRESCREEN_REASON),
            over_budget_reference=ua.get(OVER_BUDGET_REFERENCE), trained=ua.get(TRAINED),
            cached_from=ua.get(CACHED_FROM), final_acc=ua.get(FINAL_ACC), forgetting=ua.get(FORGETTING),
            avg_incremental_acc=ua.get(AVG_INCREMENTAL_ACC),
            task_acc=[trial.intermediate_values[k] for k in sorted(trial.intermediate_values)],
            train_seconds=ua.get(TRAIN_SECONDS), iterations=ua.get(ITERATIONS), pruned_at_task=ua.get(PRUNED_AT_TASK),
            stopped=ua.get(STOPPED), error=ua.get(ERROR), interrupted=ua.get(INTERRUPTED),
            measured=Cost(measured) if measured else None, devices=devices)

    # ---- derived -------------------------------------------------------------------------
    @property
    def scored(self) -> bool:
        """Has a real accuracy (trained or replayed, finished): a candidate of the reports."""
        return self.state == TrialState.COMPLETE and not self.prescreened and self.final_acc is not None

    @property
    def paid(self) -> bool:
        """Counts against ``n_trials``: a finished training (crashed ones too: their cost was paid).

        A trial failed without an ``error`` (Ctrl-C, a killed process) does not count, so a
        resumed run trains it again.
        """
        if not self.trained or not self.state.is_finished():
            return False
        return self.state != TrialState.FAIL or self.error is not None

    def feasible(self, device: str) -> bool:
        d = self.devices.get(device)
        return bool(d and d.feasible)

    def figure(self, metric: str, device: str) -> Figure | None:
        d = self.devices.get(device)
        return None if d is None else d.figures.get(metric)

    def value_of(self, metric: str, device: str) -> float | None:
        f = self.figure(metric, device)
        return None if f is None else f.value

    @property
    def kind(self) -> str:
        """prescreened | cached | trained | refused | waiting (for display)."""
        if self.prescreened:
            return "prescreened"
        if self.cached_from is not None:
            return "cached"
        if self.trained:
            return "trained"
        if self.error is not None:
            return "refused"
        return "waiting" if self.state == TrialState.RUNNING else "-"


def _device(ua: dict, sa: dict, d: str) -> DeviceRecord:
    figs, pred, cons = {}, {}, {}
    for m, spec in METRICS.items():
        if ua.get(value_key(m, d)) is not None:
            figs[m] = Figure(float(ua[value_key(m, d)]), spec.unit, ua.get(source_key(m, d)) or "predicted")
        if ua.get(predicted_key(m, d)) is not None:
            pred[m] = Figure(float(ua[predicted_key(m, d)]), spec.unit, ua.get(predicted_source_key(m, d)) or "predicted")
        c = sa.get(f"{OPTUNA_CONSTRAINTS_KEY}:{constraint_name(m, d)}")
        if c is not None:
            cons[m] = float(c)
    return DeviceRecord(d, figs, pred, ua.get(feasible_key(d)), cons)


def read_all(trials: Iterable[FrozenTrial]) -> list[TrialRecord]:
    return [TrialRecord.read(t) for t in trials]


# ---- writing ---------------------------------------------------------------------------------
class RecordWriter:
    """Writes one trial's record to the study storage (any Optuna storage, any process)."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int):
        self.storage, self.trial_id = storage, trial_id

    @classmethod
    def of(cls, trial: optuna.trial.BaseTrial) -> RecordWriter:
        return cls(trial.storage, trial._trial_id)

    def _set(self, key: str, value: Any) -> None:
        if isinstance(value, float):
            value = round(value, 6) if math.isfinite(value) else None
        self.storage.set_trial_user_attr(self.trial_id, key, value)

    def owner(self, owner: str | None = None) -> None:
        self._set(OWNER, owner or this_process())

    def role(self, role: str) -> None:
        self._set(ROLE, role)

    def planned(self, config: dict, cfg_hash: str) -> None:
        """The candidate's config and identity (the claim other workers read before training it)."""
        self._set(CONFIG, config)
        self._set(CONFIG_HASH, cfg_hash)

    def priced(self, device: str, cost: Cost) -> None:
        """The cost model's figures on ``device``, each with its own source."""
        for m, fig in cost.items():
            self._set(predicted_key(m, device), float(fig.value))
            self._set(predicted_source_key(m, device), fig.source)

    def prescreened(self, reasons: list[str]) -> None:
        self._set(PRESCREENED, True)
        self._set(PRESCREEN_REASON, "; ".join(reasons))
        self._set(TRAINED, False)

    def over_budget_reference(self, reasons: list[str]) -> None:
        self._set(OVER_BUDGET_REFERENCE, "; ".join(reasons))

    def decided(self, train: bool) -> None:
        """The planner's decision: this trial trains its config (True) or not (False)."""
        self._set(PRESCREENED, False)
        self._set(TRAINED, bool(train))

    def cached_from(self, number: int) -> None:
        self._set(CACHED_FROM, int(number))
        self._set(TRAINED, False)

    def result(self, final_acc: float | None, forgetting: float | None, avg_incremental_acc: float | None,
               seconds: float | None = None, iterations: int | None = None, measured: Cost | None = None) -> None:
        """What a training produced (device-independent, except the measured figures)."""
        if final_acc is not None:
            self._set(FINAL_ACC, float(final_acc))
        self._set(FORGETTING, None if forgetting is None else float(forgetting))
        self._set(AVG_INCREMENTAL_ACC, None if avg_incremental_acc is None else float(avg_incremental_acc))
        if seconds is not None:
            self._set(TRAIN_SECONDS, round(float(seconds), 3))
        if iterations:
            self._set(ITERATIONS, int(iterations))
        if measured is not None:
            for m, fig in measured.items():
                self._set(measured_key(m), float(fig.value))
                self._set(measured_source_key(m), fig.source)

    def pruned(self, task: int | None = None, stopped: str | None = None) -> None:
        if task is not None:
            self._set(PRUNED_AT_TASK, int(task))
        if stopped:
            self._set(STOPPED, stopped)

    def error(self, exc: BaseException | str) -> None:
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self._set(ERROR, text[:ERROR_CHARS])

    def interrupted(self, why: str) -> None:
        self._set(INTERRUPTED, why)

    def costs(self, per_device: Mapping[str, tuple[Cost, Mapping[str, float]]], order: list[str]) -> bool:
        """Per device: the figures the constraints use, ``feasible@<device>``, and the constraints in
        both forms (``constraints:<name>`` and the legacy list in ``order``). Returns feasibility on
        every device (Optuna's sense)."""
        values: dict[str, float] = {}
        all_ok = True
        for d, (cost, budgets) in per_device.items():
            ok = True
            for m, fig in cost.items():
                self._set(value_key(m, d), float(fig.value))
                self._set(source_key(m, d), fig.source)
                if m in budgets:
                    v = violation(fig.value, budgets[m])
                    values[constraint_name(m, d)] = v
                    ok &= v <= 0
            self._set(feasible_key(d), ok)
            all_ok &= ok
        prefix = f"{OPTUNA_CONSTRAINTS_KEY}:"
        for name, v in values.items():
            self.storage.set_trial_system_attr(self.trial_id, prefix + name, v)
        if order:
            self.storage.set_trial_system_attr(self.trial_id, LEGACY_CONSTRAINTS, [values.get(n, 0.0) for n in order])
        return all_ok


# ---- study-level -----------------------------------------------------------------------------
def study_constraint_order(study: optuna.Study) -> list[str]:
    return list(study.user_attrs.get(STUDY_CONSTRAINTS) or [])
