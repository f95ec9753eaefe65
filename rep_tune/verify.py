"""Verify a deployable config on the machine at hand: measure its training iterations, compare
them with what the search expected and with the target's budgets (``rep-tune verify``).

    plan = load_plan("best_jetson_orin.yaml", device=None, iters=10)
    report = run_plan(plan)
    print(report.render()); report.exit_code      # 0 budgets hold, 3 one is violated

What runs: the config's own backbone and surrogate (architecture as written; weights loaded
when they are on this machine, else a seeded random init: an iteration's cost does not depend
on weight values), at the budget's batch size and the config's ``training.precision``, on
random inputs. Its iterations are those of one deployed task: ``epochs`` passes over the
workload's images per task, capped at ``training.iters_per_task``; ALD draws the real
Bernoulli drops at iterations t spread evenly over that task. The query cache is as deployed:
in the first epoch the selection query is computed, in later epochs it is read from the
cache; each part is measured on its own t range and the figure is the schedule mean (both
parts are reported). Latency: mean per iteration (``rep_tune.runtime.measure``); peak memory:
the runtime's definition (CUDA allocator, or the CPU's peak live tensor bytes); energy: the
profiler's windows (NVML, Jetson rails, RAPL) or estimated, labelled.

Compared with: the config's ``expected.<metric>`` (written by the search), or, when
``--device PROFILE`` names another device than the config's target, the cost model's
prediction on that profile; budgets: ``target.budgets.<metric>.value``, or that profile's
``budgets`` when one is given.

Layer: beside ``search`` (it drives the runtime, the profiler and the cost model, as the search
does), under ``cli``; ``export`` stays a torch-free translator and does not run anything.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rep_tune.config import RepConfig
from rep_tune.device import DeviceProfile, Workload
from rep_tune.figures import METRICS, SOURCES, Figure, metric
from rep_tune.schema import SchemaError

ERROR_HINT = 0.20          # |measured / expected - 1| above this: say how to calibrate
_STRENGTH = {s: i for i, s in enumerate(SOURCES)}   # measured < integrated < predicted < estimated


class VerifyError(ValueError):
    """Bad input, or a config that cannot run here: the message says which and why (exit 2)."""


@dataclass
class Part:
    """One measured part of the deployed schedule: iterations [t0, t1) with the query computed or cached."""

    name: str
    t0: int
    t1: int
    cached_query: bool
    weight: int                       # iterations of the task this part stands for
    cost: Any = None                  # rep_tune.figures.Cost after the run


@dataclass
class Plan:
    """Everything ``run_plan`` needs, checked before any work starts."""

    path: Path
    config: RepConfig                 # as run: batch size set, weights resolved
    batch_size: int
    iters_per_task: int
    first_epoch_iters: int
    parts: list[Part]
    iters: int                        # timed iterations per part
    budgets: dict[str, tuple[float, str]]           # metric -> (limit, where it comes from)
    expected: dict[str, Figure]
    expected_from: str
    workload: Workload
    profile: DeviceProfile | None = None
    power_w: float | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Row:
    metric: str
    expected: Figure | None
    measured: Figure | None
    budget: float | None
    budget_from: str = ""

    @property
    def error_pct(self) -> float | None:
        if self.expected is None or self.measured is None or not self.expected.value:
            return None
        return 100.0 * (self.measured.value / self.expected.value - 1.0)

    @property
    def passed(self) -> bool | None:
        """True/False against the budget; None when there is no budget. No measurement = not shown to hold."""
        if self.budget is None:
            return None
        return self.measured is not None and self.measured.value <= self.budget


@dataclass
class Report:
    plan: Plan
    rows: list[Row]
    where: str
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 3 if any(r.passed is False for r in self.rows) else 0

    @property
    def off(self) -> list[Row]:
        """Rows whose prediction errs by more than ERROR_HINT."""
        return [r for r in self.rows if r.error_pct is not None and abs(r.error_pct) > 100 * ERROR_HINT]

    def render(self) -> str:
        p = self.plan
        c = p.config
        lines = [f"verify {p.path} on {self.where}: {c.backbone.name} (surrogate {c.selection.surrogate}), "
                 f"{c.prompt.method}, batch {p.batch_size}, {c.training.precision}",
                 f"schedule: {p.iters_per_task} iterations/task, {p.first_epoch_iters} in the first epoch; "
                 + "; ".join(f"{x.name}: t in [{x.t0}, {x.t1}), weight {x.weight}" for x in p.parts)]
        for x in p.parts:
            if x.cost is not None:
                figs = ", ".join(f"{m} {f.value:.4g} {f.unit}" for m, f in x.cost.items())
                lines.append(f"  {x.name}: {figs}, blocks run {x.cost.extras.get('blocks_run', float('nan')):.2f}")
        head = ["figure", "expected", "measured", "error %", "budget", "pass"]
        cells = []
        for r in self.rows:
            m = metric(r.metric)
            fmt = (lambda f: "-" if f is None else f"{f.value:.4g} {m.unit} ({f.source})")   # noqa: E731
            err = r.error_pct
            cells.append([r.metric, fmt(r.expected), fmt(r.measured), "-" if err is None else f"{err:+.1f}",
                          "-" if r.budget is None else f"{r.budget:.4g} {m.unit}",
                          {True: "yes", False: "NO", None: "-"}[r.passed]])
        width = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(head)]
        line = lambda row: "  ".join(v.ljust(w) for v, w in zip(row, width)).rstrip()   # noqa: E731
        lines += ["", line(head), line(["-" * w for w in width]), *map(line, cells), ""]
        lines.append(f"expected: {p.expected_from}")
        for r in self.rows:
            if r.budget is not None:
                lines.append(f"budget {r.metric}: {r.budget_from}")
        for n in [*p.notes, *self.notes]:
            lines.append(f"note: {n}")
        predicted = [r for r in self.off if r.expected.source in ("predicted", "estimated")]
        measured = [r for r in self.off if r not in predicted]
        if predicted:
            worst = ", ".join(f"{r.metric} {r.error_pct:+.0f} %" for r in predicted)
            lines.append(f"the prediction errs by more than {100 * ERROR_HINT:.0f} % ({worst}): calibrate the cost "
                         f"model on this device with `rep-tune profile --out profiles/{socket.gethostname()}.yaml`, "
                         f"then search (or verify) with `--device profiles/{socket.gethostname()}.yaml`")
        if measured:
            worst = ", ".join(f"{r.metric} {r.error_pct:+.0f} %" for r in measured)
            lines.append(f"figures the search measured differ by more than {100 * ERROR_HINT:.0f} % ({worst}): "
                         "another machine or another load than during the search (its trial's median vs this "
                         "schedule mean); verify on the search's machine with more --iters, or profile this "
                         "device (`rep-tune profile`) and search for it")
        failed = [r.metric for r in self.rows if r.passed is False]
        lines.append("verdict: " + (f"budget violated: {', '.join(failed)} (exit 3)" if failed
                                    else "every budget holds (exit 0)" if any(r.budget is not None for r in self.rows)
                                    else "no budget to check (exit 0)"))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        p = self.plan
        fig = lambda f: None if f is None else f.to_dict()   # noqa: E731
        return {
            "config": str(p.path), "host": socket.gethostname(), "device": self.where,
            "backbone": p.config.backbone.name, "surrogate": p.config.selection.surrogate,
            "precision": p.config.training.precision, "batch_size": p.batch_size,
            "schedule": {"iters_per_task": p.iters_per_task, "first_epoch_iters": p.first_epoch_iters,
                         "timed_iters_per_part": p.iters,
                         "parts": [{"name": x.name, "t": [x.t0, x.t1], "query": "cached" if x.cached_query else "computed",
                                    "weight": x.weight, "cost": None if x.cost is None else x.cost.to_dict()}
                                   for x in p.parts]},
            "expected_from": p.expected_from,
            "figures": [{"metric": r.metric, "expected": fig(r.expected), "measured": fig(r.measured),
                         "error_pct": None if r.error_pct is None else round(r.error_pct, 2),
                         "budget": r.budget, "budget_from": r.budget_from or None, "pass": r.passed}
                        for r in self.rows],
            "notes": [*p.notes, *self.notes],
            "exit_code": self.exit_code,
        }


# ---- planning (all checks before any work) ---------------------------------------------------------
def _target_budgets(cfg: RepConfig) -> tuple[dict[str, tuple[float, str]], int | None]:
    """(metric -> (limit, basis), batch size) from the config's ``target.budgets`` (typed, checked at load)."""
    if cfg.target is None:
        return {}, None
    tb = cfg.target.budgets
    return ({m: (b.value, f"config target.budgets.{m}" + (f" ({b.basis})" if b.basis else ""))
             for m, b in tb.limits().items()}, tb.batch_size)


def _load_profile(spec: str, what: str) -> DeviceProfile:
    p = Path(spec)
    if p.is_dir():
        raise VerifyError(f"{what} {spec}: expected a device profile file, found a folder")
    try:
        return DeviceProfile.load(spec)
    except FileNotFoundError:
        raise VerifyError(f"{what} {spec}: no such device profile file or shipped name") from None


def _target_profile(cfg: RepConfig) -> DeviceProfile | None:
    """The config's target profile when it can be found here (its path, else a shipped name)."""
    if cfg.target is None:
        return None
    for spec in (cfg.target.profile, cfg.target.device):
        if spec:
            try:
                return DeviceProfile.load(spec)
            except (OSError, ValueError):
                continue
    return None


def _weights(cfg: RepConfig) -> tuple[RepConfig, list[str]]:
    """Use the config's weights when they are on this machine; else a seeded random init (said)."""
    from rep_tune.runtime.backbone import embedded_weights

    notes, changes = [], {}
    for part, name, pre, ckpt in (("backbone", cfg.backbone.name, cfg.backbone.pretrained, cfg.backbone.checkpoint),
                                  ("selection", cfg.selection.surrogate, cfg.selection.pretrained,
                                   cfg.selection.checkpoint)):
        if not name:
            continue
        local = Path(ckpt).expanduser() if ckpt else (embedded_weights(name) if pre else None)
        if ckpt and not local.is_file():
            notes.append(f"{part} checkpoint {ckpt} not on this machine: random weights")
            changes.update({f"{part}.checkpoint": None, f"{part}.pretrained": False})
        elif pre and not ckpt and (local is None or not local.is_file()):
            why = "hub weights are not fetched by verify" if local is None else f"{local.name} not present"
            notes.append(f"{part} {name}: {why}; random weights (an iteration's cost does not depend on weight values)")
            changes[f"{part}.pretrained"] = False
    return (cfg.replace(**changes) if changes else cfg), notes


def _check_buildable(cfg: RepConfig, where: str) -> None:
    """Refuse, before any work, a backbone or surrogate that timm cannot build here."""
    import timm

    from rep_tune.runtime import backbone as _registers_embedded  # noqa: F401  (registers the embedded ViTs)

    for field_name, name in (("backbone.name", cfg.backbone.name), ("selection.surrogate", cfg.selection.surrogate)):
        if name and not timm.is_model(name.split(".")[0]):
            raise VerifyError(f"{where}: field '{field_name}': {name!r} cannot be built here: timm "
                              f"{timm.__version__} has no such model (verify needs the real backbone)")


def _available_mib(device) -> float | None:
    import torch
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2 ** 20
    from rep_tune.profiler.probe import memory_mb
    return memory_mb(device)[1]


def schedule(cfg: RepConfig, workload: Workload, batch: int) -> tuple[int, int]:
    """(iterations per task, iterations of the first epoch) of the deployed schedule at ``batch``."""
    per_epoch = -(-workload.images_per_task // batch)
    total = per_epoch * cfg.training.epochs
    if cfg.training.iters_per_task:
        total = min(total, cfg.training.iters_per_task)
    return total, min(per_epoch, total)


def load_plan(config_path: str | Path, *, device: str | None = None, iters: int = 10,
              batch_size: int | None = None) -> Plan:
    """Read and check the config and the profile; decide the schedule, budgets and expected figures."""
    path = Path(config_path)
    where = str(path)
    if iters < 1:
        raise VerifyError(f"--iters: expected an int >= 1, found {iters}")
    if path.is_dir():
        raise VerifyError(f"--config {path}: expected a RepConfig file, found a folder")
    if not path.is_file():
        raise VerifyError(f"--config {path}: no such file")
    try:
        cfg = RepConfig.load(path).validate(where)
    except SchemaError as e:
        raise VerifyError(str(e)) from None
    notes: list[str] = []
    budgets, target_batch = _target_budgets(cfg)
    target = _target_profile(cfg)
    target_device = cfg.target.device if cfg.target is not None else None
    profile = None
    expected_from = f"config expected (source per figure; target {target_device or 'none'})"
    expected = ({m: f.to_figure() for m in METRICS if (f := cfg.expected.figure(m)) is not None}
                if cfg.expected is not None else {})
    if device and device != "local":
        profile = _load_profile(device, "--device")
        budgets = {m: (float(v), f"--device {device} budgets.{m}") for m, v in profile.budgets.items()}
        target_batch = profile.budgets.batch_size
    batch = batch_size or target_batch or cfg.training.batch_size
    if batch < 1:
        raise VerifyError(f"--batch: expected an int >= 1, found {batch}")
    workload = (profile or target).workload if (profile or target) else Workload()
    if profile is None and target is None:
        notes.append(f"target profile not found here: schedule from the default workload "
                     f"({workload.images_per_task} images per task)")
    cfg = cfg.replace(**{"training.batch_size": batch})
    cfg, wnotes = _weights(cfg)
    notes += wnotes
    _check_buildable(cfg, where)
    n_task, n_first = schedule(cfg, workload, batch)
    if not cfg.ald.reset_per_task:
        notes.append("ald.reset_per_task is false: t counts over the run; the first task's t range is measured")
    if cfg.selection.cache and n_task > n_first:
        parts = [Part("first epoch, query computed", 0, n_first, False, n_first),
                 Part("later epochs, query cached", n_first, n_task, True, n_task - n_first)]
    else:
        why = "selection.cache is false" if not cfg.selection.cache else "one epoch: the cache never hits"
        parts = [Part(f"every iteration, query computed ({why})", 0, n_task, False, n_task)]
    if profile is not None and profile.name != target_device:
        expected, expected_from = _predicted(cfg, profile, n_task, n_first, workload), (
            f"cost model on --device {device} ({profile.name}), schedule mean at batch {batch}"
            f"{'' if profile.calibrated else '; profile uncalibrated: estimated'}")
    power = profile.spec.power_w if profile is not None else None
    return Plan(path, cfg, batch, n_task, n_first, parts, iters, budgets, expected, expected_from, workload,
                profile, power, notes)


def _predicted(cfg: RepConfig, profile: DeviceProfile, n_task: int, n_first: int, workload: Workload) -> dict[str, Figure]:
    """The cost model's schedule-mean figures for ``cfg`` on ``profile`` (what the search would expect)."""
    from rep_tune.cost import predict
    from rep_tune.cost.deploy import schedule_mean

    cost = predict(cfg, profile, iters_per_task=n_task, batch=cfg.training.batch_size, num_classes=workload.num_classes)
    out = dict(cost.items())
    lat = cost.latency_ms
    first = cost.extras.get("latency_ms_first_epoch", lat.value) if cfg.selection.cache else lat.value
    mean = schedule_mean(lat.value, first, n_first, n_task)
    out["latency_ms"] = Figure(mean, lat.unit, lat.source, lat.detail + "; schedule mean", lat.machine)
    if cost.energy_j is not None and lat.value:
        e = cost.energy_j
        out["energy_j"] = Figure(e.value * mean / lat.value, e.unit, e.source, e.detail, e.machine)
    return out


# ---- running ---------------------------------------------------------------------------------------
def _combine(parts: list[Part], name: str, how: str) -> Figure | None:
    """Schedule mean (``how`` = "mean") or maximum ("max") of one metric over the measured parts."""
    figs = [(p, p.cost.get(name)) for p in parts]
    if any(f is None for _, f in figs) or not figs:
        return None
    source = max((f.source for _, f in figs), key=_STRENGTH.__getitem__)
    if how == "max":
        value = max(f.value for _, f in figs)
        detail = "max over the parts: " + "; ".join(f"{p.name} {f.value:.4g}" for p, f in figs)
    else:
        total = sum(p.weight for p, _ in figs)
        value = sum(p.weight * f.value for p, f in figs) / max(1, total)
        detail = "schedule mean: " + "; ".join(f"{p.name} {f.value:.4g} x {p.weight}" for p, f in figs)
    first = figs[0][1]
    return Figure(value, first.unit, source, f"{detail}; {first.detail}", first.machine)


def run_plan(plan: Plan, *, device: str | None = None, progress: bool = True, energy_factory: Callable | None = None,
             warmup: int = 2) -> Report:
    """Build the model here and measure every part of the plan; compare with expected and budgets."""
    import torch

    from rep_tune.progress import ProgressBar
    from rep_tune.runtime.measure import device_label, measure_iterations
    from rep_tune.runtime.model import RepModel

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VerifyError("--run-on cuda: torch sees no CUDA device here")
    cfg = plan.config
    notes: list[str] = []
    avail = _available_mib(dev)
    exp_mem = plan.expected.get("peak_memory_mb")
    if avail is not None and exp_mem is not None and exp_mem.value > avail:
        raise VerifyError(f"{plan.path}: {cfg.backbone.name} cannot be run here: its expected peak memory "
                          f"{exp_mem.value:.0f} MiB exceeds the {avail:.0f} MiB available on {device_label(dev)}")
    n_classes = plan.workload.num_classes
    try:
        model = RepModel(cfg, n_classes)
    except (RuntimeError, ValueError, OSError) as e:
        raise VerifyError(f"{plan.path}: the config's backbone {cfg.backbone.name} cannot be built here: {e}") from None
    if energy_factory is None:
        from rep_tune.profiler.energy import RunEnergy
        energy_factory = lambda: RunEnergy.for_this_machine(str(dev), power_w=plan.power_w, label="verify")  # noqa: E731
    per_part = warmup + plan.iters + 1
    bar = ProgressBar(per_part * len(plan.parts), "verify", unit="it", enabled=progress, transient=True)
    try:
        for part in plan.parts:
            bar.set_postfix(part=part.name)
            stride = max(1, (part.t1 - part.t0) // per_part)
            meter = energy_factory()
            try:
                part.cost = measure_iterations(model, batch_size=plan.batch_size, n=plan.iters, warmup=warmup,
                                               memory_iters=1, iteration=part.t0, iteration_stride=stride, device=dev,
                                               num_classes=n_classes, classes_per_task=max(1, n_classes // 10),
                                               cached_query=part.cached_query, statistic="mean", energy=meter,
                                               progress=lambda: bar.update(1))
            finally:
                close = getattr(meter, "close", None)
                if close is not None:
                    close()
                notes += [n for n in getattr(meter, "notes", []) if n not in notes]
    except torch.OutOfMemoryError as e:
        raise VerifyError(f"{plan.path}: {cfg.backbone.name} at batch {plan.batch_size} does not fit in memory "
                          f"on {device_label(dev)}: {str(e).splitlines()[0]}") from None
    finally:
        bar.close()
    rows = []
    for m in METRICS:
        measured = _combine(plan.parts, m, "max" if m == "peak_memory_mb" else "mean")
        limit, basis = plan.budgets.get(m, (None, ""))
        rows.append(Row(m, plan.expected.get(m), measured, limit, basis))
        if limit is not None and measured is None:
            notes.append(f"{m} has a budget but could not be measured here: not shown to hold")
    where = f"{socket.gethostname()} ({device_label(dev)}, torch {torch.__version__}, {torch.get_num_threads()} thread(s))"
    return Report(plan, rows, where, notes)


def write_report(report: Report, out: str | Path | None = None) -> Path:
    """``verify.yaml`` next to the config (or ``out``)."""
    from rep_tune.schema import write_mapping
    path = Path(out) if out else report.plan.path.parent / "verify.yaml"
    return write_mapping(report.to_dict(), path)
