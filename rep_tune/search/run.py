"""``search(settings)``: the whole hardware-aware search, from settings to files in a run folder.

Run folder (default ``runs/search-<device>-<timestamp>/``):
  run.yaml            the settings, the study name, and the budgets as resolved (kept on resume)
  study.db            the Optuna study (SQLite; ``optuna-dashboard sqlite:///<run>/study.db``)
  best_<device>.yaml  deployable RepConfig: the deployment's backbone and training schedule, with
                      target, expected (accuracy labelled proxy or direct) and provenance
  pareto_<device>.csv/.png, trials.csv
Resume / join: ``search(SearchSettings.resume(run_dir))`` reloads run.yaml (budgets included),
keeps every finished trial, fails RUNNING trials whose process is gone, and trains until
``n_trials`` trained trials exist in the study. Another process may do this while the first one
runs: both share the study (see ``loop`` and ``objective`` for what makes that safe).

Reference points: the paper's REP config and the no-REP baseline (both expressed as points of
the space) are enqueued once per study, by the process that created it, with ``role`` set; they
are always trained, even when the cost model rules them out, so that every result states its
gain over both on the same budget.

Defaults live here, in ``SearchSettings``, and nowhere else: the CLI passes only the flags a user
gave. The search's reduced fidelity (``SEARCH_FIDELITY``) is for accuracy ranking only; the
deployment is priced and written at the deployment's schedule (``targets``).
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from rep_tune.config import EMBEDDED_BACKBONE, RepConfig, preset
from rep_tune.data.scenario import Scenario
from rep_tune.figures import METRICS
from rep_tune.schema import from_dict, read_mapping, to_dict, write_mapping
from rep_tune.search import optuna_backend, record
from rep_tune.search.budgets import DeviceBudgets, parse_budget, resolve
from rep_tune.search.confirm import CONFIRM_FIDELITY, DEFAULT_SEEDS, DEFAULT_TOP_K
from rep_tune.search.loop import Executor, LoopResult, ThreadExecutor, run_trials
from rep_tune.search.objective import Objective, Trainer, restore
from rep_tune.search.space import SearchSpace, default_space
from rep_tune.search.targets import Target, ald_horizon, load_targets

ROLES = ("paper", "baseline")
SEARCH_FIDELITY = {"training.epochs": 1, "training.iters_per_task": 12}
SEARCH_EVAL_PER_CLASS = 50    # test images per class of the search's scenario (the confirmation reports on more)
SEARCH_VAL_PER_CLASS = 50     # validation images per class held out of the training pool: what candidates are scored on


def search_scenario() -> Scenario:
    """The default scenario of a search: the embedded benchmark, candidates scored on a validation
    split held out of the continual-learning training pool (the test set only reports the answer)."""
    return Scenario(eval_per_class=SEARCH_EVAL_PER_CLASS, val_per_class=SEARCH_VAL_PER_CLASS, eval_split="val")


def with_validation(scenario: Scenario, out=sys.stdout) -> Scenario:
    """``scenario`` scoring on a validation split: a scenario without one gets ``SEARCH_VAL_PER_CLASS``."""
    if scenario.val_per_class is None:
        scenario.val_per_class = SEARCH_VAL_PER_CLASS
        print(f"  note: scenario has no validation split: candidates are scored on {SEARCH_VAL_PER_CLASS} images "
              f"per class held out of its training pool (val_per_class), never on its test set", file=out)
    scenario.eval_split = "val"
    return scenario


BACKENDS = ("optuna", "ray")


@dataclass
class SearchSettings:
    """Everything a search run depends on (saved as run.yaml); the one place of the defaults."""

    devices: list[str] = field(default_factory=lambda: ["jetson_orin"])
    space: str | None = None                 # search space file; default search_spaces/<method>.yaml
    method: str = "l2p"
    backbone: str = EMBEDDED_BACKBONE        # the proxy trained for accuracy
    scenario: Scenario = field(default_factory=search_scenario)
    overrides: dict[str, Any] = field(default_factory=lambda: dict(SEARCH_FIDELITY))   # every candidate (--set)
    deploy_backbone: str | None = None       # None: each profile's workload backbone
    deploy_epochs: int | None = None         # None: each profile's workload schedule
    deploy_iters_per_task: int | None = None
    n_trials: int | None = 16                # trained trials (prescreened and replayed ones do not count)
    timeout: float | None = 600.0            # seconds; None = no limit
    n_workers: int = 1
    sampler: str = "tpe"
    seed: int | None = 0
    pruner: str = "percentile"
    prescreen: bool = True
    margin: float = 0.1                      # prescreen rules out costs above budget * (1 + margin)
    budgets: dict[str, str] = field(default_factory=dict)   # metric -> "0.6x" | "250ms" (flags)
    backend: str = "optuna"                  # optuna (local worker threads) | ray
    address: str | None = None               # ray: HOST:PORT of a cluster's head, "auto"; None: RAY_ADDRESS or local
    cpus_per_trial: float = 1.0              # ray: resources each training asks for
    gpus_per_trial: float = 0.0
    proxy_port: int = 0                      # ray: port of the study's gRPC proxy on the driver (0: a free one)
    run_dir: str | None = None
    study_name: str | None = None
    references: bool = True                  # enqueue paper + baseline first
    confirm_top_k: int = DEFAULT_TOP_K       # confirmation: top configs per device retrained (search.confirm)
    confirm_seeds: int = DEFAULT_SEEDS       # training seeds each, paired; 0 = no confirmation stage
    confirm_iters_per_task: int = CONFIRM_FIDELITY["training.iters_per_task"]   # its fidelity (1 epoch, capped)
    progress: bool = True
    resolved_budgets: dict[str, dict] = field(default_factory=dict)   # filled on first run

    def save(self, path: Path) -> Path:
        return write_mapping(to_dict(self), path)

    @classmethod
    def resume(cls, run_dir: str | Path, **changes: Any) -> SearchSettings:
        path = Path(run_dir) / "run.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"--resume {run_dir}: no run.yaml there (not a rep-tune search run folder)")
        s = from_dict(cls, read_mapping(path), source=str(path))
        return dataclasses.replace(s, run_dir=str(run_dir), **{k: v for k, v in changes.items() if v is not None})


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C: ``message`` is the one line to print (where the trials are, how to resume)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class SearchOutcome:
    run_dir: Path
    study: optuna.Study
    targets: list[Target]
    space: SearchSpace
    trainer: Trainer
    settings: SearchSettings | None = None
    files: dict[str, Path] = field(default_factory=dict)
    bests: dict[str, Any] = field(default_factory=dict)
    loop: LoopResult = field(default_factory=LoopResult)
    confirmation: Any = None                 # search.confirm.Confirmation when the stage ran

    @property
    def stopped_by_cap(self) -> bool:
        return self.loop.stopped_by_cap


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
            t.budgets = DeviceBudgets.from_dict(t.profile.name, stored)
            continue
        cost = t.predict(baseline, objective.num_classes)
        relative = any(r.relative for r in requests.values()) or any(
            spec.default_relative is not None and m not in requests and t.profile.budgets.limits.get(m) is None
            for m, spec in METRICS.items())
        if t.local and relative:
            cost = trainer.train(baseline).measured or cost     # the enqueued baseline reuses this training
        t.budgets = resolve(t.profile, cost, requests)
        settings.resolved_budgets[t.key] = t.budgets.to_dict()


def default_run_dir(targets: list[Target]) -> Path:
    name = targets[0].key if len(targets) == 1 else f"{targets[0].key}+{len(targets) - 1}"
    return Path("runs") / f"search-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_before_work(settings: SearchSettings, targets: list[Target], base: RepConfig) -> None:
    """Stop before any training when the proxy cannot be priced on a deployment (every candidate
    would be refused), or a setting is out of range."""
    if settings.backend not in BACKENDS:
        raise ValueError(f"--backend: expected one of {', '.join(BACKENDS)}, found {settings.backend!r}")
    if settings.n_trials is not None and settings.n_trials < 1:
        raise ValueError(f"--n-trials: expected an int >= 1, found {settings.n_trials}")
    if settings.timeout is not None and not settings.timeout > 0:
        raise ValueError(f"--timeout: expected seconds > 0 (0 on the command line: none), found {settings.timeout}")
    if settings.confirm_top_k < 1 or settings.confirm_seeds < 0 or settings.confirm_iters_per_task < 1:
        raise ValueError(f"--confirm: expected K >= 1 candidates and S >= 0 seeds (0: no confirmation), at >= 1 "
                         f"iteration per task; found {settings.confirm_top_k},{settings.confirm_seeds} at "
                         f"{settings.confirm_iters_per_task}")
    if settings.n_workers < 1:
        raise ValueError(f"--n-workers: expected an int >= 1, found {settings.n_workers}")
    for name, value, low in (("--cpus-per-trial", settings.cpus_per_trial, 0.0), ("--gpus-per-trial", settings.gpus_per_trial, None)):
        if not (value < float("inf") and (value > low if low is not None else value >= 0)):
            raise ValueError(f"{name}: expected a finite number {'> 0' if low is not None else '>= 0'}, found {value}")
    if settings.backend != "ray":
        d = SearchSettings()
        for flag, value, default in (("--address", settings.address, d.address),
                                     ("--cpus-per-trial", settings.cpus_per_trial, d.cpus_per_trial),
                                     ("--gpus-per-trial", settings.gpus_per_trial, d.gpus_per_trial),
                                     ("--proxy-port", settings.proxy_port, d.proxy_port)):
            if value != default:
                raise ValueError(f"{flag}: applies to --backend ray only, found --backend {settings.backend}")
    if not 0 <= settings.proxy_port < 65536:
        raise ValueError(f"--proxy-port: expected a port number (0: a free one), found {settings.proxy_port}")
    if not (settings.margin >= 0 and settings.margin < float("inf")):
        raise ValueError(f"--margin: expected a finite number >= 0, found {settings.margin}")
    for t in targets:
        try:
            t.check(base)
        except ValueError as e:
            hint = ("; train a proxy with the deployment's layout (--backbone) or name a deployment backbone "
                    "with the proxy's layout (--deploy-backbone)")
            raise ValueError(f"--device {t.path or t.key}: {e}{hint}") from None


@dataclass
class Prepared:
    """A search ready for its trials: settings checked, the study created or joined, budgets resolved."""

    settings: SearchSettings
    space: SearchSpace
    targets: list[Target]
    trainer: Trainer
    objective: Objective
    study: optuna.Study
    run_dir: Path
    cluster: Any = None                      # cluster.Cluster for backend ray (connected before any work)

    def outcome(self, loop: LoopResult | None = None) -> SearchOutcome:
        return SearchOutcome(self.run_dir, self.study, self.targets, self.space, self.trainer, self.settings,
                             loop=loop or LoopResult())


def prepare(settings: SearchSettings, *, train_fn=None, out=sys.stdout) -> Prepared:
    """Everything before the first trial: check the settings and data, reach the Ray cluster
    (backend ray: a dead address fails here, in seconds), create or join the study, resolve the
    budgets, enqueue the references. ``search`` runs the loop on it; the Ray Tune searcher
    (``search.tune``) hands its trainings to Tune instead."""
    if settings.run_dir:
        if Path(settings.run_dir).exists() and not Path(settings.run_dir).is_dir():
            raise ValueError(f"--run-dir {settings.run_dir}: expected a folder, found an existing file")
        optuna_backend.check_study_file(settings.run_dir)
    space = SearchSpace.load(settings.space or default_space(settings.method))
    settings.method = space.method
    settings.space = space.source
    base = space.base_config(settings.backbone, **settings.overrides)
    targets = load_targets(settings.devices, base.training.batch_size, deploy_backbone=settings.deploy_backbone,
                           deploy_epochs=settings.deploy_epochs, deploy_iters_per_task=settings.deploy_iters_per_task)
    horizon = ald_horizon(targets, base)
    if horizon and "ald.horizon" not in settings.overrides:
        # ALD/PLD's keep schedule over the deployment's task: the proxy pays the accuracy price of the
        # blocks the deployment drops (run.yaml keeps it with the other overrides; --set ald.horizon=N wins)
        settings.overrides["ald.horizon"] = horizon
        base = space.base_config(settings.backbone, **settings.overrides)
    with_validation(settings.scenario, out)
    settings.scenario.check_reachable()      # data there, enough classes: once, before the first trial
    _check_before_work(settings, targets, base)
    for metric, text in settings.budgets.items():
        parse_budget(text, metric)
    cluster = None
    if settings.backend == "ray":
        from rep_tune.search.cluster import connect
        cluster = connect(settings.address, n_workers=settings.n_workers, cpus_per_trial=settings.cpus_per_trial,
                          gpus_per_trial=settings.gpus_per_trial)
        print(f"ray: {cluster.describe()}; {settings.n_workers} training(s) at once, {settings.cpus_per_trial:g} CPU "
              f"and {settings.gpus_per_trial:g} GPU each", file=out)
        fits = cluster.fits(settings.cpus_per_trial, settings.gpus_per_trial)
        if fits < settings.n_workers:
            print(f"  note: the cluster runs {fits} such training(s) at once; the other submitted ones wait in Ray's "
                  f"queue (--n-workers {fits} avoids it)", file=out)
    try:
        return _prepare_study(settings, space, base, targets, train_fn, cluster, out)
    except BaseException:
        if cluster is not None:
            cluster.shutdown()
        raise


def _prepare_study(settings, space, base, targets, train_fn, cluster, out) -> Prepared:
    trainer = Trainer(settings.scenario, train_fn)
    objective = Objective(space, base, targets, trainer, margin=settings.margin, prescreen=settings.prescreen)
    refs = reference_configs(space, base, settings) if settings.references else {}
    baseline = refs["baseline"][1] if refs else preset("baseline", settings.method, settings.backbone, **settings.overrides)

    run_dir = Path(settings.run_dir) if settings.run_dir else default_run_dir(targets)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--run-dir {run_dir}: expected a folder, found an existing file")
    run_dir.mkdir(parents=True, exist_ok=True)
    settings.run_dir = str(run_dir)
    settings.study_name = settings.study_name or f"rep-{space.name}-{run_dir.name}"
    study, created = optuna_backend.open_study(run_dir, settings.study_name, settings.sampler, settings.seed,
                                               settings.pruner)
    optuna_backend.fail_dead_trials(study)
    restore(trainer, study.get_trials(deepcopy=False))

    _resolve_budgets(targets, baseline, trainer, objective, settings)
    settings.save(run_dir / "run.yaml")
    for t in targets:
        d = t.deployment(base)
        print(f"budgets applied: {t.budgets.describe()} ({t.cost_source} cost on "
              f"{'this machine' if t.local else d.backbone + '@' + str(d.img_size)})", file=out)
        for note in t.budgets.notes:
            print(f"  note: {note}", file=out)
    order = record.constraint_names({t.key: t.budgets.budgets for t in targets})
    objective.constraint_order = record.study_constraint_order(study) or order

    if created:
        study.set_user_attr(record.STUDY_SPACE, space.describe())
        study.set_user_attr(record.STUDY_BUDGETS, settings.resolved_budgets)
        study.set_user_attr(record.STUDY_SCENARIO, settings.scenario.to_dict())
        study.set_user_attr(record.STUDY_CONSTRAINTS, order)
        study.set_user_attr(record.STUDY_DEVICES, {t.key: {"name": t.profile.name, "path": t.path, "local": t.local,
                                                           "checksum": t.profile.checksum(),
                                                           "deployment": t.deployment(base).to_dict()}
                                                   for t in targets})
        for role, (params, _) in refs.items():
            study.enqueue_trial(params, user_attrs={record.ROLE: role})
        study.set_user_attr(record.STUDY_REFERENCES, list(refs))

    return Prepared(settings, space, targets, trainer, objective, study, run_dir, cluster)


def make_executor(p: Prepared) -> Executor:
    """Local worker threads, or Ray tasks on ``p.cluster`` reaching the study through its gRPC proxy."""
    s = p.settings
    if s.backend == "ray":
        from rep_tune.search.ray_backend import RayExecutor
        return RayExecutor(p.study, p.trainer, p.cluster, pruner=s.pruner, n_workers=s.n_workers,
                           cpus_per_trial=s.cpus_per_trial, gpus_per_trial=s.gpus_per_trial, proxy_port=s.proxy_port)
    return ThreadExecutor(p.study, p.trainer, s.n_workers)


def search(settings: SearchSettings, *, train_fn=None, out=sys.stdout) -> SearchOutcome:
    """Run (or resume, or join) a search; write the run folder's files; return what was found."""
    p = prepare(settings, train_fn=train_fn, out=out)
    study, run_dir = p.study, p.run_dir
    from rep_tune.search.report import ProgressBar
    try:
        executor = make_executor(p)
        with ProgressBar(settings.n_trials, p.targets, enabled=settings.progress,
                         done=optuna_backend.count_trained(study)) as bar:
            loop = run_trials(study, p.objective, executor, n_trials=settings.n_trials, timeout=settings.timeout,
                              on_trial=bar.update, lock=optuna_backend.planning_lock(run_dir), out=out)
    except KeyboardInterrupt:
        done = optuna_backend.count_trained(study)
        raise SearchInterrupted(
            f"interrupted: {done} trained trials and every other finished trial are kept in "
            f"{run_dir / 'study.db'}; continue with: rep-tune search --resume {run_dir}") from None
    finally:
        if p.cluster is not None:
            p.cluster.shutdown()
    outcome = p.outcome(loop)
    from rep_tune.search.report import write_outputs
    write_outputs(outcome, settings, out=out)
    if settings.confirm_seeds > 0:
        run_confirmation(outcome, settings, p.trainer, out=out)
    return outcome


def run_confirmation(outcome: SearchOutcome, settings: SearchSettings, trainer: Trainer, *, out=sys.stdout) -> None:
    """The confirmation stage (``search.confirm``): retrain, decide, rewrite best_<device>.yaml, write confirm.csv."""
    from rep_tune.search import confirm, report
    recs = report.records(outcome.study)
    paper = report.role_trial(report.scored(recs), "paper")
    fidelity = {**CONFIRM_FIDELITY, "training.iters_per_task": settings.confirm_iters_per_task}
    print(f"confirming: the top {settings.confirm_top_k} feasible config(s) per device and the paper preset, "
          f"{settings.confirm_seeds} paired training seeds each, 1 epoch of {settings.confirm_iters_per_task} "
          f"iterations per task", file=out)
    try:
        conf = confirm.confirm(recs, outcome.targets, paper, settings.scenario, trainer.train_fn,
                               top_k=settings.confirm_top_k, seeds=settings.confirm_seeds, fidelity=fidelity,
                               progress=settings.progress)
    except KeyboardInterrupt:
        raise SearchInterrupted(f"interrupted during the confirmation: the search's files in {outcome.run_dir} are "
                                f"written (unconfirmed); confirm again with: rep-tune search --resume "
                                f"{outcome.run_dir}") from None
    outcome.confirmation = conf
    outcome.files["confirm"] = confirm.write_csv(conf, Path(outcome.run_dir) / "confirm.csv")
    report.write_confirmed(outcome, settings, conf, recs)
    confirm.print_table(conf, outcome.targets, out=out)
    for name in ("confirm", *[f"best_{t.key}" for t in outcome.targets]):
        if name in outcome.files:
            print(f"  {name}: {outcome.files[name]}", file=out)
