"""``search(settings)``: the whole hardware-aware search, from settings to files in a run folder.

Run folder (default ``runs/search-<device>-<timestamp>/``):
  run.yaml            the settings, the study name, and the budgets as resolved (kept on resume)
  study.db            the Optuna study (SQLite; ``optuna-dashboard sqlite:///<run>/study.db``)
  best_<device>.yaml  deployable RepConfig with target, expected and provenance
  pareto_<device>.csv/.png, trials.csv
Resume: ``search(SearchSettings.resume(run_dir))`` reloads run.yaml (budgets included), keeps
every finished trial, refills the accuracy cache from them, and trains until ``n_trials``
trained trials exist in the study.

Reference points: the paper's REP config and the no-REP baseline (both expressed as points of
the space) are enqueued first with ``role`` set, and are always trained, even when the cost
model rules them out, so that every result states its gain over both on the same budget.
"""
from __future__ import annotations

import dataclasses
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from rep_tune.config import EMBEDDED_BACKBONE, RepConfig, preset
from rep_tune.data.scenario import Scenario
from rep_tune.schema import from_dict, read_mapping, to_dict, write_mapping
from rep_tune.search import optuna_backend
from rep_tune.search.budgets import METRICS, DeviceBudgets, ResolvedBudget, parse_budget, resolve
from rep_tune.search.objective import Objective, Trainer
from rep_tune.search.space import SearchSpace, default_space
from rep_tune.search.targets import Target, load_targets

ROLES = ("paper", "baseline")


@dataclass
class SearchSettings:
    """Everything a search run depends on (saved as run.yaml)."""

    devices: list[str] = field(default_factory=lambda: ["jetson_orin"])
    space: str | None = None                 # search space file; default search_spaces/<method>.yaml
    method: str = "l2p"
    backbone: str = EMBEDDED_BACKBONE
    scenario: Scenario = field(default_factory=Scenario)
    overrides: dict[str, Any] = field(default_factory=lambda: {"training.epochs": 1, "training.iters_per_task": 12})
    n_trials: int | None = 30                # trained trials (prescreened ones do not count)
    timeout: float | None = None             # seconds
    n_workers: int = 1
    sampler: str = "tpe"
    seed: int | None = 0
    pruner: str = "percentile"
    prescreen: bool = True
    margin: float = 0.1                      # prescreen rules out costs above budget * (1 + margin)
    budgets: dict[str, str] = field(default_factory=dict)   # metric -> "0.6x" | "250ms" (flags)
    backend: str = "optuna"                  # optuna | ray
    run_dir: str | None = None
    study_name: str | None = None
    references: bool = True                  # enqueue paper + baseline first
    progress: bool = True
    resolved_budgets: dict[str, dict] = field(default_factory=dict)   # filled on first run

    def save(self, path: Path) -> Path:
        return write_mapping(to_dict(self), path)

    @classmethod
    def resume(cls, run_dir: str | Path, **changes: Any) -> SearchSettings:
        path = Path(run_dir) / "run.yaml"
        s = from_dict(cls, read_mapping(path), source=str(path))
        return dataclasses.replace(s, run_dir=str(run_dir), **{k: v for k, v in changes.items() if v is not None})


@dataclass
class SearchOutcome:
    run_dir: Path
    study: optuna.Study
    targets: list[Target]
    space: SearchSpace
    trainer: Trainer
    files: dict[str, Path] = field(default_factory=dict)
    bests: dict[str, Any] = field(default_factory=dict)
    stopped_by_cap: bool = False


def reference_configs(space: SearchSpace, base: RepConfig, settings: SearchSettings) -> dict[str, tuple[dict, RepConfig]]:
    """role -> (params for enqueue_trial, the config they sample to)."""
    out = {}
    for role in ROLES:
        cfg = preset(role, settings.method, settings.backbone)
        params = space.params_of(cfg)
        out[role] = (params, space.sample(optuna.trial.FixedTrial(params), base))
    return out


def _resolve_budgets(targets: list[Target], baseline: RepConfig, trainer: Trainer, objective: Objective,
                     settings: SearchSettings) -> None:
    requests = {m: parse_budget(v, m) for m, v in settings.budgets.items()}
    for t in targets:
        stored = settings.resolved_budgets.get(t.key)
        if stored:
            t.budgets = DeviceBudgets(t.profile.name, stored["batch_size"], {
                m: ResolvedBudget(m, v["value"], v["basis"], v.get("relative"), v.get("baseline"))
                for m, v in stored.items() if m in METRICS}, list(stored.get("notes", [])))
            continue
        cost = t.predict(baseline, objective.num_classes)
        if t.local and any(r.relative for r in requests.values()) or t.local and not requests:
            cost = trainer.train(baseline).measured or cost     # cached: the enqueued baseline reuses it
        t.budgets = resolve(t.profile, cost, requests)
        settings.resolved_budgets[t.key] = t.budgets.to_dict()


def default_run_dir(targets: list[Target]) -> Path:
    name = targets[0].key if len(targets) == 1 else f"{targets[0].key}+{len(targets) - 1}"
    return Path("runs") / f"search-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def search(settings: SearchSettings, *, train_fn=None, out=sys.stdout) -> SearchOutcome:
    """Run (or resume) a search; write the run folder's files; return what was found."""
    space = SearchSpace.load(settings.space or default_space(settings.method))
    settings.method = space.method
    settings.space = space.source
    base = space.base_config(settings.backbone, **settings.overrides)
    targets = load_targets(settings.devices, base.training.batch_size)
    trainer = Trainer(settings.scenario, train_fn)
    objective = Objective(space, base, targets, trainer, margin=settings.margin, prescreen=settings.prescreen)
    refs = reference_configs(space, base, settings) if settings.references else {}
    baseline = refs["baseline"][1] if refs else preset("baseline", settings.method, settings.backbone, **settings.overrides)

    run_dir = Path(settings.run_dir) if settings.run_dir else default_run_dir(targets)
    run_dir.mkdir(parents=True, exist_ok=True)
    settings.run_dir = str(run_dir)
    settings.study_name = settings.study_name or f"rep-{space.name}-{run_dir.name}"
    fresh = not (run_dir / "study.db").exists()
    study = optuna_backend.open_study(run_dir, settings.study_name, settings.sampler, settings.seed, settings.pruner)
    trainer.restore(study.get_trials(deepcopy=False))

    _resolve_budgets(targets, baseline, trainer, objective, settings)
    settings.save(run_dir / "run.yaml")
    for t in targets:
        print(f"budgets applied: {t.budgets.describe()} ({t.cost_source} cost)", file=out)
        for note in t.budgets.notes:
            print(f"  note: {note}", file=out)

    if fresh:
        study.set_user_attr("space", space.describe())
        study.set_user_attr("budgets", settings.resolved_budgets)
        study.set_user_attr("scenario", settings.scenario.to_dict())
        study.set_user_attr("devices", {t.key: {"name": t.profile.name, "path": t.path, "local": t.local,
                                                "checksum": t.profile.checksum()} for t in targets})
        for role, (params, _) in refs.items():
            study.enqueue_trial(params, user_attrs={"role": role})
    if settings.timeout:
        objective.deadline = time.monotonic() + settings.timeout   # a training in flight stops at its next task
    try:
        if settings.backend == "ray":
            from rep_tune.search.ray_backend import optimize_ray
            budget = optimize_ray(study, objective, run_dir, n_trials=settings.n_trials, timeout=settings.timeout,
                                  n_workers=settings.n_workers, pruner=settings.pruner)
        else:
            from rep_tune.search.report import ProgressBar
            with ProgressBar(settings.n_trials, targets, enabled=settings.progress,
                             done=optuna_backend.count_trained(study)) as bar:
                budget = optuna_backend.optimize(study, objective, n_trials=settings.n_trials,
                                                 timeout=settings.timeout, n_workers=settings.n_workers,
                                                 on_trial=bar.update)
    except KeyboardInterrupt:
        print(f"interrupted: every finished trial is kept in {run_dir / 'study.db'}; "
              f"continue with: rep-tune search --resume {run_dir}", file=out)
        raise
    outcome = SearchOutcome(run_dir, study, targets, space, trainer, stopped_by_cap=budget.stopped_by_cap)
    from rep_tune.search.report import write_outputs
    write_outputs(outcome, settings, out=out)
    return outcome


def host() -> str:
    return socket.gethostname()
