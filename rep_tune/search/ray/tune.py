"""Ray Tune integration: rep-tune's constrained study as a Tune ``Searcher``, and a REP trainable.

For users who sweep with ``tune.Tuner``::

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from rep_tune.search.run import SearchSettings
    from rep_tune.search.ray.tune import ACC, ProtectReferences, RepSearcher

    searcher = RepSearcher(SearchSettings(devices=["jetson_orin"], n_trials=16, run_dir="runs/tune-orin"))
    tuner = tune.Tuner(
        tune.with_resources(searcher.trainable(), {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, metric=ACC, mode="max", num_samples=-1,
                                    scheduler=ProtectReferences(ASHAScheduler(max_t=searcher.n_tasks, grace_period=1))),
        run_config=tune.RunConfig(name="rep-orin", storage_path="/abs/path/ray_results",
                                  failure_config=tune.FailureConfig(max_failures=1),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    results = tuner.fit()
    best = searcher.best_result(results)    # the most accurate trial within the budgets (not results.get_best_result())
    searcher.write_outputs()                # best_<device>.yaml, pareto_<device>.csv/.png, trials.csv
    searcher.confirm()                      # retrain the top configs on paired seeds: the confirmed answer

``RepSearcher`` drives the same Optuna study, through the same per-trial steps, as
``rep-tune search`` (``loop.TrialFlow``): each ``suggest`` asks the study and plans the trial
(sample, price on every device, pre-screen, claim); pre-screened, refused and replayed (cached)
trials are finished in the driver and **never reach Tune**; only configs to train are handed to
Tune. Per-task results come back through ``on_trial_result`` (Optuna's intermediate values) and
``on_trial_complete`` records the result, the constraints (``record.py``) and tells Optuna. A
trial a Tune scheduler stopped early (ASHA) is PRUNED at its last task. The searcher returns
``Searcher.FINISHED`` once ``n_trials`` trainings exist in the study (``num_samples=-1`` lets it
decide). So Tune's schedulers, callbacks, loggers, resources and ``Tuner.restore`` apply, and the
run folder is a rep-tune run folder (``optuna-dashboard``, ``rep-tune search --resume`` to join
with local workers).

References (the ``paper`` and ``baseline`` trials, ``record.ROLE``) are what the results are
measured against, so they train to the last task: ``ProtectReferences(scheduler)`` keeps them
out of the scheduler's reach (it never sees them: no rung of ASHA, no bracket of HyperBand, no
population of PBT records them, and they run first, in order). Overriding the scheduler's
decisions instead would leave a synchronous scheduler (HyperBand, PBT) believing it had paused
or stopped a trial that goes on; training them before Tune starts would serialise them and put
them out of Tune's resources and fault tolerance. A reference that a bare scheduler stopped
anyway is said so in the driver's output (the summary then has no accuracy for it).

The best: Tune ranks by ``ACC`` alone (``results.get_best_result()`` ignores the budgets);
``searcher.best()`` is the most accurate trial that meets every budget of a device
(``report.best_for``, what the summary and ``best_<device>.yaml`` show) and
``searcher.best_result(results)`` is that trial's Tune ``Result`` (the trial it replays, for a
cached one).

The trainable (``rep_trainable``; ``searcher.trainable()`` binds the searcher's scenario and
trainer) runs one REP training and reports after each task ``{TASK, ACC}`` plus the cost model's
figures of the config on every device (``predicted_<metric>@<device>``, the keys of
``record.py``); its last report also holds ``final_acc``, ``forgetting``,
``avg_incremental_acc``, the measured figures of this machine (``measured_<metric>``), seconds
and iterations. Trainables never open the study: the driver alone writes it.

Checkpoints: every report but the last carries a ``tune.Checkpoint`` of the run after that task
(``CHECKPOINT_FILE``: ``torch.save`` of plain tensors and dicts, read back with
``torch.load(..., weights_only=True)``; the learner's ``on_task_end`` state: trained prompts,
keys and head, RNG states, accuracy matrix, iteration counter). A trial Tune restarts from its
checkpoint (``FailureConfig(max_failures=...)`` after a crash, or ``Tuner.restore``) trains from
the task after it, not from task 0; its reports say from where (``RESUMED_KEY``), and the
searcher records only tasks it has not recorded yet. ``Tuner.restore`` resumes from the
checkpoints listed in Tune's last snapshot of the experiment: Ctrl-C writes one on the way out,
but after a killed driver (``kill -9``, a lost head) it is as old as Tune's snapshot interval
(``TUNE_GLOBAL_CHECKPOINT_S``, adaptive by default; ``0`` snapshots after every step), so a
trial may then go on from an earlier task, or from task 0.

``Tuner.restore``: Tune pickles the searcher with its settings (no study object); ``save`` /
``restore`` keep which Tune trial trains which Optuna trial as JSON. A restored searcher rejoins
the study and re-owns the trials Tune resumes, so their results land in the same Optuna trials
(with the per-task values already recorded); trials Tune does not resume are failed as
interrupted (not counted: they train again).
"""
# Private Optuna/Ray members: none in this file (were 4: ``study._storage``, ``trial._trial_id``,
# ``Searcher._metric`` / ``_mode``). Trial ids come from the project's record (``RecordWriter.trial_id``,
# ``TrialRecord.trial_id``: record.py reads them, the one place that knows the trial's fields), held
# trials are found with ``Study.get_trials`` and re-attached with ``optuna.Trial(study, trial_id)``,
# and the searcher and scheduler override Tune's public ``metric`` / ``mode`` /
# ``supports_buffered_results`` properties rather than set the base classes' attributes. Audit:
# ``grep -nE "\._[a-zA-Z]|[(, ]_[a-z_]+=" rep_tune/search/tune.py`` finds only this module's own
# helpers (``self._open``, ``_held``, ``_kept``, ``_live``, ``_state``, ``_reown``).
from __future__ import annotations

import dataclasses
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from rep_tune.progress import STDOUT
from rep_tune.config import RepConfig
from rep_tune.data.scenario import Scenario
from rep_tune.extras import require
from rep_tune.figures import METRICS, Cost, Figure
from rep_tune.schema import atomic_write_text, load_json
from rep_tune.search import optuna_backend, record
from rep_tune.search.loop import TrialFlow
from rep_tune.search.objective import TRAIN, Evaluation, Outcome, Plan, Trainer
from rep_tune.search.record import RecordWriter, TrialRecord
from rep_tune.search.run import Prepared, SearchSettings, prepare
from rep_tune.search.space import config_hash

_search = require("ray", "ray.tune.search")
_schedulers = require("ray", "ray.tune.schedulers")
Searcher = _search.Searcher
TrialScheduler = _schedulers.TrialScheduler

# Tune result keys (what the trainable reports) and config keys (what the searcher suggests)
ACC = "running_acc"              # running average accuracy over the tasks seen (a fraction), as Optuna's reports
TASK = "task"                    # 0-based task just trained
RESUMED_KEY = "resumed_after_task"   # -1: this attempt started at task 0; k: from the checkpoint after task k
CONFIG_KEY = "rep_config"        # the RepConfig to train, as a dict
TRIAL_KEY = "rep_trial"          # the Optuna trial number it belongs to
ROLE_KEY = "rep_role"            # "paper" | "baseline" for a reference trial (ProtectReferences), else absent
PRICED_KEY = "rep_predicted"     # predicted_<metric>@<device> -> value, reported with every result

CHECKPOINT_FILE = "rep_task_state.pt"    # in each Tune checkpoint: torch.save of plain tensors and dicts
CHECKPOINT_FORMAT = 1


# ---- per-task checkpoints -------------------------------------------------------------------
def save_task_state(directory: str | Path, task: int, cfg_hash: str, state: dict) -> Path:
    """Write the run's state after ``task`` (the learner's ``on_task_end`` state) into ``directory``."""
    path = Path(directory) / CHECKPOINT_FILE
    torch.save({"format": CHECKPOINT_FORMAT, "task": int(task), "config_hash": cfg_hash, "state": state}, path)
    return path


def load_task_state(checkpoint: Any, cfg_hash: str) -> dict | None:
    """The saved ``{"task", "config_hash", "state"}`` of a Tune checkpoint (``weights_only`` load), or
    None when there is none; ValueError when it belongs to another config or format."""
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        path = Path(d) / CHECKPOINT_FILE
        if not path.is_file():
            return None
        saved = torch.load(path, map_location="cpu", weights_only=True)
    if saved.get("format") != CHECKPOINT_FORMAT or saved.get("config_hash") != cfg_hash:
        raise ValueError(f"Tune checkpoint {path.name}: format {saved.get('format')!r} of config "
                         f"{saved.get('config_hash')!r}, expected format {CHECKPOINT_FORMAT} of {cfg_hash!r}")
    return saved


def resumable(train_fn: Any) -> bool:
    """Whether ``train_fn`` takes the learner's ``on_task_end`` and ``resume_from`` (or ``**kwargs``)."""
    try:
        params = inspect.signature(train_fn).parameters.values()
    except (TypeError, ValueError):
        return False
    names = {q.name for q in params}
    return any(q.kind is q.VAR_KEYWORD for q in params) or {"on_task_end", "resume_from"} <= names


def rep_trainable(config: dict, trainer: Trainer | None = None, scenario: dict | None = None) -> None:
    """Ray Tune function trainable: train ``config[CONFIG_KEY]`` once, reporting after every task.

    ``trainer`` (bound by ``RepSearcher.trainable``) runs the training; without it a ``Trainer``
    on ``scenario`` (a Scenario dict; default: the embedded benchmark) runs the real learner.
    Every report but the last carries a checkpoint of the run after that task; a trial restarted
    from one (``tune.get_checkpoint()``) trains the remaining tasks only.
    """
    tune = require("ray", "ray.tune")
    cfg = RepConfig.from_dict(config[CONFIG_KEY], source=f"Tune config {CONFIG_KEY}")
    trainer = trainer or Trainer(Scenario(**(scenario or {})))
    h = config_hash(cfg)
    saved = load_task_state(tune.get_checkpoint(), h)
    extra = {**(config.get(PRICED_KEY) or {}), RESUMED_KEY: -1 if saved is None else int(saved["task"])}
    last = trainer.scenario.n_tasks - 1
    states: dict[int, dict] = {}

    def on_task_end(task: int, state: dict) -> None:
        if task < last:                        # the last task ends the trial: nothing to resume
            states[task] = state

    def on_task(task: int, acc: float) -> None:
        if task >= last:                       # the last task is reported with the final result
            return
        metrics = {TASK: task, ACC: acc, **extra}
        state = states.pop(task, None)
        if state is None:                      # a train_fn without on_task_end: no checkpoint
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="rep-tune-task-") as d:
            save_task_state(d, task, h, state)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    if resumable(trainer.train_fn):
        ev = trainer.train(cfg, on_task, on_task_end=on_task_end, resume_from=None if saved is None else saved["state"])
    else:                                      # a train_fn of its own without the learner's resume interface
        extra[RESUMED_KEY] = -1
        ev = trainer.train(cfg, on_task)
    result = {TASK: last, ACC: ev.task_acc[-1] if ev.task_acc else ev.final_acc, **extra,
              record.FINAL_ACC: ev.final_acc, record.FORGETTING: ev.forgetting,
              record.AVG_INCREMENTAL_ACC: ev.avg_incremental_acc, record.TRAIN_SECONDS: ev.seconds,
              record.ITERATIONS: ev.iterations, record.CONFIG_HASH: ev.config_hash}
    for m, fig in (ev.measured.items() if ev.measured is not None else ()):
        result[record.measured_key(m)] = float(fig.value)
        result[record.measured_source_key(m)] = fig.source
    tune.report(result)


def make_trainable(scenario: Scenario | None = None, train_fn=None):
    """``rep_trainable`` with its Trainer bound (``tune.with_parameters``): what ``Tuner`` and
    ``Tuner.restore(path, trainable=make_trainable(settings.scenario))`` take. Opens no study."""
    tune = require("ray", "ray.tune")
    return tune.with_parameters(rep_trainable, trainer=Trainer(scenario or Scenario(), train_fn))


def evaluation_from(result: dict | None, task_acc: list[float], config_hash: str) -> Evaluation:
    """A Tune trial's last result as the Evaluation the objective records (pruned when it stopped early)."""
    result = result or {}
    done = result.get(record.FINAL_ACC) is not None
    measured = {m: Figure(float(result[record.measured_key(m)]), METRICS[m].unit,
                          result.get(record.measured_source_key(m)) or "measured")
                for m in METRICS if result.get(record.measured_key(m)) is not None}
    ev = Evaluation(config_hash, "complete" if done else "pruned", list(task_acc),
                    result.get(record.FINAL_ACC), result.get(record.FORGETTING), result.get(record.AVG_INCREMENTAL_ACC),
                    Cost(measured) if measured else None, float(result.get(record.TRAIN_SECONDS) or 0.0),
                    int(result.get(record.ITERATIONS) or 0))
    if not done and task_acc:
        ev.pruned_at_task = len(task_acc) - 1
    return ev


# ---- references out of the scheduler's reach -------------------------------------------------
class ProtectReferences(TrialScheduler):
    """A Tune scheduler around ``scheduler`` (default FIFO) that never lets it see a reference trial.

    Reference trials (``ROLE_KEY`` in their config: the paper and baseline points ``RepSearcher``
    enqueues) are not added to ``scheduler``, their results never reach it (so ASHA cannot stop
    them, HyperBand cannot pause them, PBT cannot replace their config) and they start first,
    in the order Tune got them. Every other trial is ``scheduler``'s, unchanged.
    """

    def __init__(self, scheduler: Any = None):
        super().__init__()
        self.scheduler = scheduler if scheduler is not None else _schedulers.FIFOScheduler()
        self.references: list[str] = []      # Tune trial ids kept from the scheduler, in order

    @staticmethod
    def is_reference(trial: Any) -> bool:
        return bool((getattr(trial, "config", None) or {}).get(ROLE_KEY))

    def _kept(self, trial: Any) -> bool:
        return trial.trial_id in self.references

    @property
    def metric(self):
        return self.scheduler.metric

    @property
    def supports_buffered_results(self) -> bool:
        return self.scheduler.supports_buffered_results

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return self.scheduler.set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller, trial) -> None:
        if self.is_reference(trial):
            if not self._kept(trial):
                self.references.append(trial.trial_id)
            return
        self.scheduler.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        if not self._kept(trial):
            self.scheduler.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if self._kept(trial):
            return TrialScheduler.CONTINUE
        return self.scheduler.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if not self._kept(trial):
            self.scheduler.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        if not self._kept(trial):
            self.scheduler.on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller):
        for trial in tune_controller.get_trials():
            if self._kept(trial) and trial.status in (trial.PENDING, trial.PAUSED):
                return trial
        return self.scheduler.choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        return (f"{self.scheduler.debug_string()}\n{len(self.references)} reference trial(s) kept from the "
                "scheduler: they train to the last task")

    def save(self, checkpoint_path: str) -> None:
        self.scheduler.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.scheduler.restore(checkpoint_path)


@dataclasses.dataclass
class _Open:
    """What a searcher holds while its study is open (never pickled)."""

    prepared: Prepared
    flow: TrialFlow
    plans: dict[str, Plan] = dataclasses.field(default_factory=dict)      # Tune trial id -> plan in training
    task_acc: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    ready: list[Plan] = dataclasses.field(default_factory=list)            # WAIT plans now to train


class RepSearcher(Searcher):
    """A Tune ``Searcher`` over rep-tune's constrained Optuna study (module docstring).

    ``settings`` are ``rep-tune search``'s (devices, space, budgets, n_trials, run_dir, ...); the
    study opens, the budgets resolve and the references are enqueued when the searcher is made,
    so bad settings fail here, before Tune starts. ``train_fn`` replaces the learner (tests).
    """

    CKPT_FILE_TMPL = "rep-tune-searcher-state-{}.json"

    def __init__(self, settings: SearchSettings, *, train_fn=None, metric: str = ACC, mode: str = "max",
                 out=STDOUT):
        super().__init__(metric=metric, mode=mode)
        self.result_metric = metric           # Tune's ``metric`` / ``mode`` (the properties below)
        self.settings = dataclasses.replace(settings, backend="optuna", timeout=None)  # Tune schedules and times
        self.train_fn = train_fn
        self.out = out
        self._live: dict[str, int] = {}       # Tune trial id -> Optuna trial id (what save/restore keep)
        self._state: _Open | None = None
        self._open()

    @property
    def metric(self) -> str:
        return self.result_metric

    @property
    def mode(self) -> str:
        return "max"

    # ---- the study -----------------------------------------------------------------------
    def _open(self, reown: dict[str, int] | None = None) -> _Open:
        if self._state is not None:
            return self._state
        if reown and self.settings.run_dir and self.settings.study_name:
            self._reown(reown)
        p = prepare(self.settings, train_fn=self.train_fn, out=self.out)
        beat = optuna_backend.Heartbeat(p.study).__enter__()
        flow = TrialFlow(p.study, p.objective, beat, n_trials=self.settings.n_trials,
                         lock=optuna_backend.planning_lock(p.run_dir), out=self.out)
        self._state = _Open(p, flow)
        held = self._held(p, set((reown or {}).values()))
        for tune_id, trial_id in (reown or {}).items():
            if trial_id in held:
                plan, task_acc = held[trial_id]
                beat.add(trial_id)
                self._state.plans[tune_id] = plan
                self._state.task_acc[tune_id] = task_acc        # a trial resumed mid-run goes on from here
        return self._state

    def _reown(self, live: dict[str, int]) -> None:
        """Make this process the owner of the RUNNING trials Tune is about to resume (before the
        study's dead-owner check would fail them)."""
        storage = optuna_backend.open_storage(self.settings.run_dir)
        for trial_id in live.values():
            try:
                if storage.get_trial(trial_id).state == TrialState.RUNNING:
                    RecordWriter(storage, trial_id).owner()
                    storage.record_heartbeat(trial_id)
            except (KeyError, optuna.exceptions.UpdateFinishedTrialError):
                pass

    @staticmethod
    def _held(p: Prepared, trial_ids: set[int]) -> dict[int, tuple[Plan, list[float]]]:
        """The RUNNING trials among ``trial_ids`` with a config: their plan and per-task values so far."""
        out = {}
        for frozen in p.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            r = TrialRecord.read(frozen)
            if r.trial_id in trial_ids and r.config:
                predicted = {d: Cost(dev.predicted) for d, dev in r.devices.items()}
                plan = Plan(TRAIN, optuna.Trial(p.study, r.trial_id), RepConfig.from_dict(r.config), r.config_hash,
                            predicted)
                out[r.trial_id] = (plan, list(r.task_acc))
        return out

    @property
    def study(self) -> optuna.Study:
        return self._open().prepared.study

    @property
    def run_dir(self) -> Path:
        return self._open().prepared.run_dir

    @property
    def n_tasks(self) -> int:
        """Tasks of the scenario: one Tune result each (``ASHAScheduler(max_t=n_tasks)``)."""
        return int(self.settings.scenario.n_tasks)

    def trainable(self):
        """``rep_trainable`` bound to this search's scenario and train_fn (``make_trainable``)."""
        return make_trainable(self.settings.scenario, self.train_fn)

    # ---- Searcher ------------------------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        if mode not in (None, "max"):
            raise ValueError(f"TuneConfig(mode={mode!r}): rep-tune's searcher maximises accuracy within the budgets; "
                             "use mode='max'")
        if metric:
            self.result_metric = metric
        return True                      # param_space constants are merged into each config by Tune

    def suggest(self, trial_id: str) -> dict | str | None:
        st = self._open()
        flow = st.flow
        flow.check_stale()
        st.ready.extend(flow.ready())
        plan = st.ready.pop(0) if st.ready else None
        while plan is None:
            more, plan = flow.step()
            flow.asked.clear()
            if not more:
                return None if flow.waiting or st.ready else Searcher.FINISHED
        st.plans[trial_id] = plan
        st.task_acc[trial_id] = []
        self._live[trial_id] = RecordWriter.of(plan.trial).trial_id
        priced = {record.predicted_key(m, d): float(f.value) for d, cost in plan.predicted.items() for m, f in cost.items()}
        role = plan.trial.user_attrs.get(record.ROLE)
        return {CONFIG_KEY: plan.config.to_dict(), TRIAL_KEY: plan.number, PRICED_KEY: priced,
                **({ROLE_KEY: role} if role else {}), **{k: v for k, v in plan.trial.params.items()}}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        st = self._open()
        plan = st.plans.get(trial_id)
        if plan is None or result.get(TASK) is None or result.get(ACC) is None:
            return
        task, acc = int(result[TASK]), float(result[ACC])
        accs = st.task_acc.setdefault(trial_id, [])
        if task == len(accs):            # a task a restarted attempt trains again is not reported twice
            accs.append(acc)
            st.flow.guarded(plan, lambda: plan.trial.report(acc, task))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        st = self._open()
        if result and not error:
            self.on_trial_result(trial_id, result)          # the last result, if Tune did not pass it on yet
        plan = st.plans.pop(trial_id, None)
        self._live.pop(trial_id, None)
        accs = st.task_acc.pop(trial_id, [])
        if plan is None:
            return
        if error:
            outcome = Outcome(None, "failed", f"Tune trial {trial_id} errored (see its error file in the Tune results)")
        else:
            ev = evaluation_from(result, accs, plan.config_hash)
            outcome = Outcome(ev, ev.state)
            role = plan.trial.user_attrs.get(record.ROLE)
            if role and ev.state == "pruned":
                print(f"rep-tune: the {role} reference (trial {plan.number}) was stopped by the Tune scheduler after "
                      f"task {ev.pruned_at_task}; the results have no {role} accuracy to compare with. Wrap the "
                      "scheduler: TuneConfig(scheduler=rep_tune.search.ray.tune.ProtectReferences(ASHAScheduler(...)))",
                      file=self.out)
        st.flow.finish(plan, outcome)
        st.ready.extend(st.flow.ready())

    # ---- Tune checkpoints (JSON: no pickle of ours) --------------------------------------------
    def get_state(self) -> dict:
        return {"live": dict(self._live), "run_dir": self.settings.run_dir, "study_name": self.settings.study_name}

    def set_state(self, state: dict) -> None:
        live = {str(k): int(v) for k, v in (state.get("live") or {}).items()}
        if self._state is None:
            self._open(reown=live)
        self._live.update(live)

    def save(self, checkpoint_path: str) -> None:
        atomic_write_text(checkpoint_path, json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(load_json(Path(checkpoint_path).read_text()))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_state"] = None               # the study, its heartbeat thread: reopened after unpickling
        state["out"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.out = sys.stdout

    # ---- after Tuner.fit -----------------------------------------------------------------
    def device_key(self, device: str | None = None) -> str:
        """The target key of ``device`` (a key or a profile name); the only target when None."""
        targets = self._open().prepared.targets
        if device is None and len(targets) == 1:
            return targets[0].key
        for t in targets:
            if device in (t.key, t.profile.name, t.path):
                return t.key
        raise ValueError(f"device {device!r}: expected one of this search's targets "
                         f"({', '.join(t.key for t in targets)})")

    def best(self, device: str | None = None) -> TrialRecord | None:
        """The most accurate trial within every budget of ``device`` (``report.best_for``: what the
        summary and ``best_<device>.yaml`` show); None when no trained trial fits."""
        from rep_tune.search.report import best_for, records

        return best_for(records(self.study), self.device_key(device))

    def best_result(self, results: Any, device: str | None = None) -> Any:
        """The Tune ``Result`` of ``best(device)`` in ``results`` (a ``ResultGrid``): for a trial that
        replayed another's training, that training's. None when no trial fits the budgets (or its
        training is not in ``results``). ``results.get_best_result()`` ranks by accuracy alone."""
        best = self.best(device)
        if best is None:
            return None
        number = best.cached_from if best.cached_from is not None else best.number
        return next((r for r in results if (r.config or {}).get(TRIAL_KEY) == number), None)

    def write_outputs(self, out=None) -> Any:
        """The run folder's files and summary (as ``rep-tune search`` writes them); the SearchOutcome."""
        from rep_tune.search.report import write_outputs

        st = self._open()
        outcome = st.prepared.outcome(st.flow.result)
        write_outputs(outcome, st.prepared.settings, out=out or self.out)
        return outcome

    def confirm(self, outcome: Any = None, *, time_limit: float | None = None, out=None) -> Any:
        """The confirmation stage on this search's trials, as ``rep-tune search`` runs it after its own
        (``search.confirm``; ``confirm_top_k`` / ``confirm_seeds`` / ``confirm_report_seeds`` of the
        settings, default 2,3,6): the top feasible configs per device and the paper preset retrained
        on paired selection seeds, the choice and the preset on fresh report seeds with intervals;
        confirm.csv written and best_<device>.yaml rewritten with the confirmed answer. Without it the
        answer is the best of noisy trials at the search's fidelity (the winner's curse).

        Runs in this process (the driver), ``confirm_workers`` retrainings at a time, after
        ``tuner.fit()``. ``time_limit``: seconds from now the stage ends within as far as its floors
        allow (the selection's third seed and the report's seeds are planned on the clock, as under
        ``--time-limit``); None: no limit (Tune's ``time_budget_s`` bounds the trials, not this).
        ``outcome``: a ``write_outputs()`` result (None: written now). Returns the SearchOutcome, its
        ``confirmation`` set. ValueError before any work when the settings ask for no confirmation."""
        from rep_tune.search.run import run_confirmation

        st = self._open()
        settings = st.prepared.settings
        if settings.confirm_seeds <= 0:
            raise ValueError(f"SearchSettings.confirm_seeds: expected >= 1 to confirm, found {settings.confirm_seeds}")
        if time_limit is not None and not 0 < time_limit < float("inf"):
            raise ValueError(f"time_limit: expected seconds > 0 or None, found {time_limit}")
        deadline = None if time_limit is None else time.time() + time_limit
        outcome = outcome if outcome is not None else self.write_outputs(out=out)
        run_confirmation(outcome, dataclasses.replace(settings, time_limit=time_limit), st.prepared.trainer,
                         out=out or self.out, deadline=deadline)
        optuna_backend.checkpoint(outcome.study._storage, truncate=True)
        return outcome

    def close(self) -> None:
        """Stop recording heartbeats (trials still held are failed by the next process's check)."""
        if self._state is not None:
            self._state.flow.beat.__exit__(None, None, None)
            self._state = None
