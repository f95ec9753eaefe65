"""``search(settings)``: the whole hardware-aware search, from settings to files in a run folder.

Run folder (default ``runs/search-<device>-<timestamp>/``):
  run.yaml            the settings, the study name, and the budgets as resolved (kept on resume);
                      the space by its shipped name (``l2p``) or as given, never an absolute path
                      of this machine
  study.db            the Optuna study (SQLite; ``optuna-dashboard sqlite:///<run>/study.db
                      --artifact-dir <run>/artifacts``)
  best_<device>.yaml  deployable RepConfig: the deployment's backbone and training schedule, with
                      target, expected (accuracy labelled proxy or direct) and provenance
  pareto_<device>.csv/.png, trials.csv, confirm.csv (the confirmation)
  artifacts/          with optuna-dashboard installed: the Pareto plots, best_<device>.yaml and
                      confirm.csv as the study's artifacts (``report.publish``), for the dashboard
Resume / join: ``search(SearchSettings.resume(run_dir))`` reloads run.yaml (budgets included),
refuses a folder whose study was deleted, emptied or renamed (``optuna_backend.check_resumable``),
keeps every finished trial, fails RUNNING trials whose process is gone (``fail_dead_trials``: on
this host by pid, on another by heartbeat), and trains until ``n_trials`` trained trials exist in
the study. Another process may do this while the first one runs: both share the study (see
``loop`` and ``objective`` for what makes that safe).

Reference points: the paper's REP config and the no-REP baseline (both expressed as points of
the space) are part of the study's contract: its creator records the roles (``references``), and
every process that opens the study (creating, resuming or joining it) enqueues, under the run
folder's study lock, each role that has neither a verdict (COMPLETE, pruned by the pruner, or
failed with an error) nor a trial waiting or running in a live process: so a reference cut off by
Ctrl-C, SIGTERM, a kill or a full disk is trained again, exactly once however many processes
resume. They are always trained, even when the cost model rules them out or the budget is spent,
so that every result states its gain over both on the same budget.

Stopping (``search``): Ctrl-C and SIGTERM raise ``SearchInterrupted`` (``SearchTerminated`` for a
signal; ``exit_code`` 130 / 143) with the one line to print, after failing the trials in flight:
``--resume`` continues. A full disk raises ``DiskFull`` (``exit_code`` 75, EX_TEMPFAIL) naming the
run folder and the space to free; a run folder with less than ``MIN_FREE_MIB`` free is refused
before any work. Every finished trial stays in the study either way.

Defaults live here, in ``SearchSettings``, and nowhere else: the CLI passes only the flags a user
gave. The search's reduced fidelity (``SEARCH_FIDELITY``) is for accuracy ranking only; the
deployment is priced and written at the deployment's schedule (``targets``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from rep_tune.progress import STDOUT
from rep_tune.config import EMBEDDED_BACKBONE, RepConfig, preset
from rep_tune.data.scenario import Scenario
from rep_tune.figures import METRICS
from rep_tune.schema import atomic_write_text, dump_mapping, from_dict, read_mapping, to_dict
from rep_tune.search import optuna_backend, record
from rep_tune.search.backends import check_flags, get_backend
from rep_tune.search.budgets import BudgetRequest, DeviceBudgets, parse_budget, resolve
from rep_tune.search.confirm import (CONFIRM_FIDELITY, DEFAULT_REPORT_SEEDS, DEFAULT_SEEDS, DEFAULT_TOP_K,
                                    valid_report_seeds)
from rep_tune.search.loop import (Executor, LoopResult, Terminated, check_interrupts, run_trials,
                                  sigterm_interrupts)
from rep_tune.search.objective import Objective, Trainer, restore
from rep_tune.search.space import SearchSpace, default_space
from rep_tune.search.targets import Target, ald_horizon, load_targets
from rep_tune.shipped import SPACES, shipped_dir

ROLES = ("paper", "baseline")
SEARCH_FIDELITY = {"training.epochs": 1, "training.iters_per_task": 12}
SEARCH_EVAL_PER_CLASS = 50    # test images per class of the search's scenario (the confirmation reports on more)
SEARCH_VAL_PER_CLASS = 50     # validation images per class held out of the training pool: what candidates are scored on
# the whole command's wall time the confirmation's report plans within: the issue's "the default search,
# confirmation included, fits 20 minutes on 2 cores" held with 25 s to spare at a fixed 6 report seeds
# (benchmarks/results/search_default_236_vm.txt); the limit turns that margin into a guarantee
DEFAULT_TIME_LIMIT_S = 1200.0
# the share of --time-limit the search phase may use when a confirmation follows (the rest is the
# confirmation's): the default --timeout 600 s is this share of the default limit, so the default is unchanged
SEARCH_SHARE_OF_TIME_LIMIT = 0.5
MIN_FREE_MIB = 50             # free space a run folder needs before a search starts (and after a full disk)
EXIT_DISK_FULL = 75           # EX_TEMPFAIL: free space, then --resume


def search_scenario() -> Scenario:
    """The default scenario of a search: the embedded benchmark, candidates scored on a validation
    split held out of the continual-learning training pool (the test set only reports the answer)."""
    return Scenario(eval_per_class=SEARCH_EVAL_PER_CLASS, val_per_class=SEARCH_VAL_PER_CLASS, eval_split="val")


def with_validation(scenario: Scenario, out=STDOUT) -> Scenario:
    """``scenario`` scoring on a validation split: a scenario without one gets ``SEARCH_VAL_PER_CLASS``."""
    if scenario.val_per_class is None:
        scenario.val_per_class = SEARCH_VAL_PER_CLASS
        print(f"  note: scenario has no validation split: candidates are scored on {SEARCH_VAL_PER_CLASS} images "
              f"per class held out of its training pool (val_per_class), never on its test set", file=out)
    scenario.eval_split = "val"
    return scenario


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
    confirm_seeds: int = DEFAULT_SEEDS       # selection seeds each, paired; 0 = no confirmation stage
    confirm_report_seeds: int = DEFAULT_REPORT_SEEDS   # fresh seeds the winner and paper preset report on; 0 = reuse
    confirm_iters_per_task: int = CONFIRM_FIDELITY["training.iters_per_task"]   # its fidelity (1 epoch, capped)
    confirm_workers: int | None = None       # its retrainings at once (search.parallel); None: auto_workers()
    time_limit: float | None = DEFAULT_TIME_LIMIT_S   # seconds of the whole command the confirmation's report
                                                      # stays within (confirm.ReportTimer); None: R exactly
    progress: bool = True
    export_target: str | None = None         # --export-target: space and deployment restricted to what that format expresses
    resolved_budgets: dict[str, dict] = field(default_factory=dict)   # filled on first run

    def save(self, path: Path) -> Path:
        """Write run.yaml atomically and link-safely (``schema.atomic_write_text``): a full disk or a
        kill mid-write leaves the previous run.yaml, never a truncated one that --resume cannot read."""
        return atomic_write_text(path, dump_mapping(to_dict(self)))

    @classmethod
    def resume(cls, run_dir: str | Path, **changes: Any) -> SearchSettings:
        """run.yaml's settings, refusing a folder whose study was deleted, emptied or renamed."""
        path = Path(run_dir) / "run.yaml"
        if not path.is_file():
            raise FileNotFoundError(f"--resume {run_dir}: no run.yaml there (not a rep-tune search run folder)")
        s = from_dict(cls, read_mapping(path), source=str(path))
        optuna_backend.check_resumable(run_dir, s.study_name)
        return dataclasses.replace(s, run_dir=str(run_dir), **{k: v for k, v in changes.items() if v is not None})


class SearchInterrupted(KeyboardInterrupt):
    """Ctrl-C: ``message`` is the one line to print (where the trials are, how to resume)."""

    exit_code = 130

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class SearchTerminated(SearchInterrupted):
    """SIGTERM (a ``loop.Terminated``): as Ctrl-C, with ``exit_code`` 128 + the signal (143)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + int(signum)


class DiskFull(Exception):
    """The run folder's disk is full (or below ``MIN_FREE_MIB`` before the start): ``message`` is the
    one line to print (the folder, the space to free, how to go on); ``exit_code`` 75 (EX_TEMPFAIL)."""

    exit_code = EXIT_DISK_FULL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def space_needed_mib(run_dir: Path) -> int:
    """What a run folder needs free to go on: ``MIN_FREE_MIB``, plus its study's write-ahead log
    (checkpointing copies the log into the database, which may grow by as much)."""
    wal = Path(run_dir) / "study.db-wal"
    size = wal.stat().st_size if wal.is_file() else 0
    return MIN_FREE_MIB + math.ceil(size / 2**20)


def free_mib(path: Path) -> float:
    """Free space (MiB) on the file system of ``path``, or of its nearest existing parent."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free / 2**20


def _disk_full(run_dir: Path, *, started: bool | None = None) -> DiskFull:
    """The DiskFull for ``run_dir``; ``started`` (default: run.yaml and study.db are there) says
    whether --resume can go on from it."""
    run_dir = Path(run_dir)
    if started is None:
        started = (run_dir / "run.yaml").is_file() and (run_dir / "study.db").is_file()
    need = space_needed_mib(run_dir)
    then = (f"rerun with --resume {run_dir} (every finished trial is kept in {run_dir / 'study.db'})"
            if started else "run the search again")
    return DiskFull(f"disk full under {run_dir}: free at least {need} MiB there and {then}")


def check_free_space(run_dir: Path) -> None:
    """Refuse (``DiskFull``) a run folder on a file system with less than ``space_needed_mib`` free."""
    free = free_mib(run_dir)
    if free < space_needed_mib(run_dir):
        e = _disk_full(run_dir)
        raise DiskFull(f"{e.message} ({free:.0f} MiB free now)")


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
                     settings: SearchSettings, requests: dict[str, BudgetRequest]) -> None:
    for t in targets:
        stored = settings.resolved_budgets.get(t.key)
        if stored:
            t.budgets = DeviceBudgets.from_dict(t.profile.name, stored)
            continue
        cost = t.predict(baseline, objective.num_classes)
        relative = any(r.relative for r in requests.values()) or any(
            spec.default_relative is not None and m not in requests and t.profile.budgets.limits.get(m) is None
            for m, spec in METRICS.items())
        if relative:     # a local target measures it (the enqueued baseline reuses this training)
            cost = t.baseline_cost(cost, lambda: trainer.train(baseline).measured)
        t.budgets = resolve(t.profile, cost, requests)
        settings.resolved_budgets[t.key] = t.budgets.to_dict()


def space_reference(source: str) -> str:
    """How run.yaml names a search space: a shipped one by its shipped name (``l2p``, which
    ``SearchSpace.load`` finds from any folder, on any machine), a user's file as given."""
    try:
        Path(source).resolve().relative_to(shipped_dir(SPACES).resolve())
    except (ValueError, OSError):
        return source
    return Path(source).stem


def default_run_dir(targets: list[Target]) -> Path:
    name = targets[0].key if len(targets) == 1 else f"{targets[0].key}+{len(targets) - 1}"
    return Path("runs") / f"search-{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _check_before_work(settings: SearchSettings, targets: list[Target], base: RepConfig) -> None:
    """Stop before any training when the proxy cannot be priced on a deployment (every candidate
    would be refused), or a setting is out of range."""
    get_backend(settings.backend)
    if settings.n_trials is not None and settings.n_trials < 1:
        raise ValueError(f"--n-trials: expected an int >= 1, found {settings.n_trials}")
    if settings.timeout is not None and not settings.timeout > 0:
        raise ValueError(f"--timeout: expected seconds > 0 (0 on the command line: none), found {settings.timeout}")
    if settings.time_limit is not None and not 0 < settings.time_limit < float("inf"):
        raise ValueError(f"--time-limit: expected seconds > 0 (0 on the command line: none), found {settings.time_limit}")
    if (settings.confirm_top_k < 1 or settings.confirm_seeds < 0 or settings.confirm_iters_per_task < 1
            or not valid_report_seeds(settings.confirm_report_seeds)):
        raise ValueError(f"--confirm: expected K >= 1 candidates, S >= 0 selection seeds (0: no confirmation) and "
                         f"R = 0 (report on the selection seeds) or R >= 2 fresh report seeds, at >= 1 iteration per "
                         f"task; found {settings.confirm_top_k},{settings.confirm_seeds},{settings.confirm_report_seeds} "
                         f"at {settings.confirm_iters_per_task}")
    if settings.n_workers < 1:
        raise ValueError(f"--n-workers: expected an int >= 1, found {settings.n_workers}")
    if settings.confirm_workers is not None and settings.confirm_workers < 1:
        raise ValueError(f"--confirm-workers: expected an int >= 1, found {settings.confirm_workers}")
    for name, value, low in (("--cpus-per-trial", settings.cpus_per_trial, 0.0), ("--gpus-per-trial", settings.gpus_per_trial, None)):
        if not (value < float("inf") and (value > low if low is not None else value >= 0)):
            raise ValueError(f"{name}: expected a finite number {'> 0' if low is not None else '>= 0'}, found {value}")
    check_flags(settings, SearchSettings())
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


def prepare(settings: SearchSettings, *, train_fn=None, out=STDOUT) -> Prepared:
    """Everything before the first trial: check the settings and data, reach the Ray cluster
    (backend ray: a dead address fails here, in seconds), create or join the study, resolve the
    budgets, enqueue the references. ``search`` runs the loop on it; the Ray Tune searcher
    (``search.ray.tune``) hands its trainings to Tune instead."""
    requests = {m: parse_budget(text, m) for m, text in settings.budgets.items()}   # parsed once, before any work
    if settings.run_dir:
        if Path(settings.run_dir).exists() and not Path(settings.run_dir).is_dir():
            raise ValueError(f"--run-dir {settings.run_dir}: expected a folder, found an existing file")
        optuna_backend.check_study_file(settings.run_dir)
    check_free_space(Path(settings.run_dir or "runs"))
    space = SearchSpace.load(settings.space or default_space(settings.method)).for_export(settings.export_target, settings.overrides)
    settings.method = space.method
    settings.space = space_reference(space.source)
    base = space.base_config(settings.backbone, **settings.overrides)
    targets = load_targets(settings.devices, base.training.batch_size, deploy_backbone=settings.deploy_backbone,
                           deploy_epochs=settings.deploy_epochs, deploy_iters_per_task=settings.deploy_iters_per_task,
                           export_target=settings.export_target)
    horizon = ald_horizon(targets, base)
    if horizon and "ald.horizon" not in settings.overrides:
        # ALD/PLD's keep schedule over the deployment's task: the proxy pays the accuracy price of the
        # blocks the deployment drops (run.yaml keeps it with the other overrides; --set ald.horizon=N wins)
        settings.overrides["ald.horizon"] = horizon
        base = space.base_config(settings.backbone, **settings.overrides)
    with_validation(settings.scenario, out)
    settings.scenario.check_reachable()      # data there, enough classes: once, before the first trial
    _check_before_work(settings, targets, base)
    cluster = get_backend(settings.backend).connect_to(settings, out)
    try:
        return _prepare_study(settings, space, base, targets, train_fn, cluster, requests, out)
    except BaseException:
        if cluster is not None:
            cluster.shutdown()
        raise


def _prepare_study(settings, space, base, targets, train_fn, cluster, requests, out) -> Prepared:
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
    if created:                              # the contract first: a creator cut off before enqueuing leaves it
        study.set_user_attr(record.STUDY_REFERENCES, list(refs))
    optuna_backend.fail_dead_trials(study)
    restore(trainer, study.get_trials(deepcopy=False))

    _resolve_budgets(targets, baseline, trainer, objective, settings, requests)
    settings.save(run_dir / "run.yaml")
    for t in targets:
        print(f"budgets applied: {t.budgets.describe()} ({t.cost_source} cost on {t.where()})", file=out)
        for note in t.budgets.notes:
            print(f"  note: {note}", file=out)
    order = record.constraint_names({t.key: t.budgets.budgets for t in targets})
    objective.constraint_order = record.study_constraint_order(study) or order

    if created:
        study.set_user_attr(record.STUDY_SPACE, {**space.describe(), "source": settings.space})
        study.set_user_attr(record.STUDY_BUDGETS, settings.resolved_budgets)
        study.set_user_attr(record.STUDY_SCENARIO, settings.scenario.to_dict())
        study.set_user_attr(record.STUDY_CONSTRAINTS, order)
        study.set_user_attr(record.STUDY_DEVICES, {t.key: {"name": t.profile.name, "path": t.path, "kind": t.kind,
                                                           "checksum": t.profile.checksum(),
                                                           "deployment": t.deployment(base).to_dict()}
                                                   for t in targets})
    ensure_references(study, refs, run_dir, out=out, created=created)

    return Prepared(settings, space, targets, trainer, objective, study, run_dir, cluster)


def reference_verdict(t: optuna.trial.FrozenTrial) -> bool:
    """A reference trial that settles its role: COMPLETE, pruned by the pruner, or failed with an
    error (retraining would repeat it). Interrupted ones (Ctrl-C, SIGTERM, a dead process, a full
    disk) and ones stopped by the search's timeout do not."""
    r = record.TrialRecord.read(t)
    if r.state == TrialState.COMPLETE:
        return True
    if r.state == TrialState.PRUNED:
        return not r.stopped
    return r.state == TrialState.FAIL and r.error is not None


def ensure_references(study: optuna.Study, refs: dict[str, tuple[dict, RepConfig]], run_dir: Path, *,
                      out=STDOUT, created: bool = False) -> list[str]:
    """Enqueue each reference role of the study's contract (``references``) that has no verdict
    (``reference_verdict``) and no trial waiting or running in a live process (the dead ones were
    failed just before). Check and enqueue happen under the run folder's study lock, so processes
    resuming at once enqueue a role once. Returns the roles enqueued here."""
    contract = [r for r in (study.user_attrs.get(record.STUDY_REFERENCES) or []) if r in refs]
    if not contract:
        return []
    enqueued = []
    with optuna_backend.file_lock(Path(run_dir) / ".study.lock"):
        trials = study.get_trials(deepcopy=False)
        for role in contract:
            mine = [t for t in trials if t.user_attrs.get(record.ROLE) == role]
            if any(reference_verdict(t) for t in mine):
                continue
            if any(t.state == TrialState.WAITING or (t.state == TrialState.RUNNING and
                   record.owner_alive(t.user_attrs.get(record.OWNER)) is not False) for t in mine):
                continue
            study.enqueue_trial(refs[role][0], user_attrs={record.ROLE: role})
            enqueued.append(role)
            cut = [t.number for t in mine if t.state.is_finished()]
            if cut and not created:
                print(f"  note: the {role} reference (trial {', '.join(map(str, cut))}) was cut off before its result: "
                      f"enqueued again", file=out)
    return enqueued


def make_executor(p: Prepared) -> Executor:
    """The executor of the settings' backend (``backends``): local worker threads, or Ray tasks on
    ``p.cluster`` reaching the study through its gRPC proxy."""
    return get_backend(p.settings.backend).make_executor(p)


def _interruption(e: KeyboardInterrupt, message: str) -> SearchInterrupted:
    """The SearchInterrupted for Ctrl-C, or SearchTerminated for a signal (``loop.Terminated``)."""
    if isinstance(e, SearchInterrupted):
        return e
    if isinstance(e, Terminated):
        return SearchTerminated(message.replace("interrupted", f"terminated ({e.why})", 1), e.signum)
    return SearchInterrupted(message)


@contextlib.contextmanager
def _guard(settings: SearchSettings):
    """A full disk (any error that wraps one) becomes ``DiskFull`` naming the run folder."""
    try:
        yield
    except Exception as e:
        if not isinstance(e, DiskFull) and optuna_backend.disk_full(e):
            raise _disk_full(Path(settings.run_dir or "runs")) from e
        raise


def search(settings: SearchSettings, *, train_fn=None, out=STDOUT) -> SearchOutcome:
    """Run (or resume, or join) a search; write the run folder's files; return what was found.

    Ctrl-C or SIGTERM (handled while it runs, in the main thread): ``SearchInterrupted`` /
    ``SearchTerminated``; a full disk: ``DiskFull`` (module docstring)."""
    started = time.time()                    # the time limit counts from here (a resume: from its start)
    with sigterm_interrupts():
        with _guard(settings):
            p = prepare(settings, train_fn=train_fn, out=out)
        study, run_dir = p.study, p.run_dir
        resume = f"continue with: rep-tune search --resume {run_dir}"
        try:
            with _guard(settings):
                outcome = _search(p, settings, out, started)
            check_interrupts()               # a Ctrl-C Python dropped after the loop (weakref callback)
            return outcome
        except KeyboardInterrupt as e:
            if isinstance(e, SearchInterrupted):
                raise
            done = _count_trained(study)
            raise _interruption(e, f"interrupted: {done} trained trials and every other finished trial are kept in "
                                   f"{run_dir / 'study.db'}; {resume}") from None


def _count_trained(study: optuna.Study) -> str:
    try:
        return str(optuna_backend.count_trained(study))
    except Exception:                        # a storage that cannot answer now (a full disk, a lock)
        return "the"


def search_phase_timeout(settings: SearchSettings) -> tuple[float | None, str]:
    """The search phase's wall limit in seconds (None: none) and, when ``--time-limit`` set it, why.

    ``--timeout`` alone bounds the trials; ``--time-limit`` bounds the whole command, so the phase also
    ends after ``SEARCH_SHARE_OF_TIME_LIMIT`` of it (all of it with no confirmation; counted, as
    ``--timeout`` is, from the trials' start, seconds after the command's). Without that,
    ``--time-limit 600`` alone let the trials take all 600 s and the report's floor of 3 seeds overran it."""
    if settings.time_limit is None:
        return settings.timeout, ""
    share = SEARCH_SHARE_OF_TIME_LIMIT if settings.confirm_seeds > 0 else 1.0
    share_s = share * settings.time_limit
    if settings.timeout is not None and settings.timeout <= share_s:
        return settings.timeout, ""
    why = (f"search: the trials stop after {share_s:.0f} s, {share:.0%} of the {settings.time_limit:g} s time limit"
           + (" (the rest is the confirmation's)" if share < 1 else "")
           + (f", before --timeout {settings.timeout:g} s" if settings.timeout is not None else ""))
    return share_s, why


def _search(p: Prepared, settings: SearchSettings, out, started: float) -> SearchOutcome:
    study, run_dir = p.study, p.run_dir
    from rep_tune.search.report import ProgressBar
    timeout, why = search_phase_timeout(settings)
    if why:
        print(f"  {why}", file=out)
    try:
        executor = make_executor(p)
        with ProgressBar(settings.n_trials, p.targets, enabled=settings.progress,
                         done=optuna_backend.count_trained(study)) as bar:
            loop = run_trials(study, p.objective, executor, n_trials=settings.n_trials, timeout=timeout,
                              on_trial=bar.update, lock=optuna_backend.planning_lock(run_dir), out=out)
    finally:
        if p.cluster is not None:
            p.cluster.shutdown()
    outcome = p.outcome(loop)
    from rep_tune.search.report import write_outputs
    write_outputs(outcome, settings, out=out)                 # its dashboard notes and artifacts write to the study
    optuna_backend.checkpoint(study._storage, truncate=True)     # the log back to zero bytes (best effort)
    if settings.confirm_seeds > 0:
        deadline = None if settings.time_limit is None else started + settings.time_limit
        run_confirmation(outcome, settings, p.trainer, out=out, deadline=deadline)
        optuna_backend.checkpoint(study._storage, truncate=True)
    return outcome


def run_confirmation(outcome: SearchOutcome, settings: SearchSettings, trainer: Trainer, *, out=STDOUT,
                     deadline: float | None = None) -> None:
    """The confirmation stage (``search.confirm``): retrain, decide, rewrite best_<device>.yaml, write
    confirm.csv. ``deadline`` (``time.time()``): the report starts a seed only while it can end by it."""
    from rep_tune.search import confirm, report
    from rep_tune.search.parallel import auto_workers, describe
    recs = report.records(outcome.study)
    workers = settings.confirm_workers or auto_workers()
    paper = report.role_trial(report.scored(recs), "paper")
    fidelity = {**CONFIRM_FIDELITY, "training.iters_per_task": settings.confirm_iters_per_task}
    r = settings.confirm_report_seeds
    seeds = (f"{r} fresh paired seeds" if deadline is None else
             f"fresh paired seeds ({r} requested; as many as the {settings.time_limit:g} s time limit allows)")
    reporting = (f"then each device's best and the paper preset on {seeds}, scored on the test subset"
                 if r else "the report on the same seeds (biased upwards: the winner's curse)")
    sel = (f"{settings.confirm_seeds} paired selection seeds" if deadline is None
           or settings.confirm_seeds <= confirm.MIN_SELECTION_SEEDS else
           f"{settings.confirm_seeds} paired selection seeds (past {confirm.MIN_SELECTION_SEEDS} only while the "
           f"report's floor still fits the time limit)")
    print(f"confirming: the top {settings.confirm_top_k} feasible config(s) per device and the paper preset on "
          f"{sel}, scored on the validation split; {reporting}; 1 epoch of "
          f"{settings.confirm_iters_per_task} iterations per task"
          + (f"; {describe(workers)}" if workers > 1 else ""),
          file=out)
    try:
        conf = confirm.confirm(recs, outcome.targets, paper, settings.scenario, trainer.train_fn,
                               top_k=settings.confirm_top_k, seeds=settings.confirm_seeds,
                               report_seeds=settings.confirm_report_seeds, fidelity=fidelity,
                               progress=settings.progress, deadline=deadline, out=out, workers=workers)
    except KeyboardInterrupt as e:
        raise _interruption(e, f"interrupted during the confirmation: the search's files in {outcome.run_dir} are "
                               f"written (unconfirmed); confirm again with: rep-tune search --resume "
                               f"{outcome.run_dir}") from None
    outcome.confirmation = conf
    outcome.files["confirm"] = confirm.write_csv(conf, Path(outcome.run_dir) / "confirm.csv")
    report.write_confirmed(outcome, settings, conf, recs)
    report.publish(outcome)                  # the rewritten best_<device>.yaml and confirm.csv as artifacts
    confirm.print_table(conf, outcome.targets, out=out)
    for name in ("confirm", *[f"best_{t.key}" for t in outcome.targets]):
        if name in outcome.files:
            print(f"  {name}: {report.shown(outcome.files[name])}", file=out)
