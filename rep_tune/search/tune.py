"""Ray Tune integration: rep-tune's constrained study as a Tune ``Searcher``, and a REP trainable.

For users who sweep with ``tune.Tuner``::

    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from rep_tune.search.run import SearchSettings
    from rep_tune.search.tune import ACC, RepSearcher

    searcher = RepSearcher(SearchSettings(devices=["jetson_orin"], n_trials=16, run_dir="runs/tune-orin"))
    tuner = tune.Tuner(
        tune.with_resources(searcher.trainable(), {"cpu": 1}),
        tune_config=tune.TuneConfig(search_alg=searcher, metric=ACC, mode="max", num_samples=-1,
                                    scheduler=ASHAScheduler(max_t=searcher.n_tasks, grace_period=1)),
        run_config=tune.RunConfig(name="rep-orin", storage_path="/abs/path/ray_results"))
    results = tuner.fit()
    searcher.write_outputs()        # best_<device>.yaml, pareto_<device>.csv/.png, trials.csv

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

The trainable (``rep_trainable``; ``searcher.trainable()`` binds the searcher's scenario and
trainer) runs one REP training and reports after each task ``{TASK, ACC}`` plus the cost model's
figures of the config on every device (``predicted_<metric>@<device>``, the keys of
``record.py``); its last report also holds ``final_acc``, ``forgetting``,
``avg_incremental_acc``, the measured figures of this machine (``measured_<metric>``), seconds
and iterations. Trainables never open the study: the driver alone writes it.

``Tuner.restore``: Tune pickles the searcher with its settings (no study object); ``save`` /
``restore`` keep which Tune trial trains which Optuna trial as JSON. A restored searcher rejoins
the study and re-owns the trials Tune resumes, so their results land in the same Optuna trials;
trials Tune does not resume are failed as interrupted (not counted: they train again).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from rep_tune.config import RepConfig
from rep_tune.data.scenario import Scenario
from rep_tune.extras import require
from rep_tune.figures import METRICS, Cost, Figure
from rep_tune.search import optuna_backend, record
from rep_tune.search.loop import TrialFlow
from rep_tune.search.objective import TRAIN, Evaluation, Outcome, Plan, Trainer
from rep_tune.search.record import RecordWriter, TrialRecord
from rep_tune.search.run import Prepared, SearchSettings, prepare

_search = require("ray", "ray.tune.search")
Searcher = _search.Searcher

# Tune result keys (what the trainable reports) and config keys (what the searcher suggests)
ACC = "running_acc"              # running average accuracy over the tasks seen (a fraction), as Optuna's reports
TASK = "task"                    # 0-based task just trained
CONFIG_KEY = "rep_config"        # the RepConfig to train, as a dict
TRIAL_KEY = "rep_trial"          # the Optuna trial number it belongs to
PRICED_KEY = "rep_predicted"     # predicted_<metric>@<device> -> value, reported with every result


def rep_trainable(config: dict, trainer: Trainer | None = None, scenario: dict | None = None) -> None:
    """Ray Tune function trainable: train ``config[CONFIG_KEY]`` once, reporting after every task.

    ``trainer`` (bound by ``RepSearcher.trainable``) runs the training; without it a ``Trainer``
    on ``scenario`` (a Scenario dict; default: the embedded benchmark) runs the real learner.
    """
    tune = require("ray", "ray.tune")
    cfg = RepConfig.from_dict(config[CONFIG_KEY], source=f"Tune config {CONFIG_KEY}")
    trainer = trainer or Trainer(Scenario(**(scenario or {})))
    extra = dict(config.get(PRICED_KEY) or {})
    last = trainer.scenario.n_tasks - 1

    def on_task(task: int, acc: float) -> None:
        if task < last:                        # the last task is reported with the final result
            tune.report({TASK: task, ACC: acc, **extra})

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
                 out=sys.stdout):
        super().__init__(metric=metric, mode=mode)
        self.settings = dataclasses.replace(settings, backend="optuna", timeout=None)  # Tune schedules and times
        self.train_fn = train_fn
        self.out = out
        self._live: dict[str, int] = {}       # Tune trial id -> Optuna trial id (what save/restore keep)
        self._state: _Open | None = None
        self._open()

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
        for tune_id, trial_id in (reown or {}).items():
            plan = self._plan_of(p, trial_id)
            if plan is not None:
                beat.add(trial_id)
                self._state.plans[tune_id] = plan
                self._state.task_acc[tune_id] = []
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
    def _plan_of(p: Prepared, trial_id: int) -> Plan | None:
        frozen = p.study._storage.get_trial(trial_id)
        r = TrialRecord.read(frozen)
        if frozen.state != TrialState.RUNNING or not r.config:
            return None
        predicted = {d: Cost(dev.predicted) for d, dev in r.devices.items()}
        return Plan(TRAIN, optuna.Trial(p.study, trial_id), RepConfig.from_dict(r.config), r.config_hash, predicted)

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
            self._metric = metric
        self._mode = "max"
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
        self._live[trial_id] = plan.trial._trial_id
        priced = {record.predicted_key(m, d): float(f.value) for d, cost in plan.predicted.items() for m, f in cost.items()}
        return {CONFIG_KEY: plan.config.to_dict(), TRIAL_KEY: plan.number, PRICED_KEY: priced,
                **{k: v for k, v in plan.trial.params.items()}}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        st = self._open()
        plan = st.plans.get(trial_id)
        if plan is None or result.get(TASK) is None or result.get(ACC) is None:
            return
        task, acc = int(result[TASK]), float(result[ACC])
        accs = st.task_acc.setdefault(trial_id, [])
        if task == len(accs):
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
        Path(checkpoint_path).write_text(json.dumps(self.get_state()))

    def restore(self, checkpoint_path: str) -> None:
        self.set_state(json.loads(Path(checkpoint_path).read_text()))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_state"] = None               # the study, its heartbeat thread: reopened after unpickling
        state["out"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.out = sys.stdout

    # ---- after Tuner.fit -----------------------------------------------------------------
    def write_outputs(self, out=None) -> Any:
        """The run folder's files and summary (as ``rep-tune search`` writes them); the SearchOutcome."""
        from rep_tune.search.report import write_outputs

        st = self._open()
        outcome = st.prepared.outcome(st.flow.result)
        write_outputs(outcome, st.prepared.settings, out=out or self.out)
        return outcome

    def close(self) -> None:
        """Stop recording heartbeats (trials still held are failed by the next process's check)."""
        if self._state is not None:
            self._state.flow.beat.__exit__(None, None, None)
            self._state = None
