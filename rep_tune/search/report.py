"""Reports of a search: deployable best config per device, Pareto CSV/PNG, trials.csv, summary table.

Every trial is read through ``record.TrialRecord``. Only trials with an accuracy (COMPLETE, not
pre-screened) are candidates; "best for device D" is the most accurate one whose
``feasible@D`` is true, so several devices share one set of trained trials. The Pareto front
maximises accuracy and minimises every cost metric on D (all scored trials, feasible or not).

``best_<device>.yaml`` is what a user deploys: the config's knobs on the *deployment* (the
profile's workload backbone and surrogate, its epochs and iteration budget, its batch size; the
proxy itself at the deployment schedule for a local target), ``target`` (device, budgets,
deployment), ``expected`` (accuracy labelled ``direct`` or ``proxy`` with the proxy's backbone and
scenario; each cost figure with its source) and ``provenance`` (study, trial, profile checksum,
and the search's reduced fidelity, which is *not* the deployment's). Accuracies are fractions in
files; tables and plots show percent. No file of the run folder holds an absolute path of this
machine: the study is named ``study.db`` (beside the file), the space by its shipped name or as
given; printed paths are relative to the working folder when under it (``shown``).

optuna-dashboard (the ``dashboard`` extra, when installed): every finished trial gets a Markdown
note (``trial_note``: its verdict per budget and device, the source of each cost figure, the
search's fidelity), the study one naming the best trial within budgets per device (the
dashboard's own "Best Trial" ranks by accuracy alone, constraints aside); and the run's files
(Pareto plots, best_<device>.yaml, confirm.csv) are uploaded as study artifacts to a file store
under ``<run>/artifacts`` (``publish_artifacts``), which ``optuna-dashboard ... --artifact-dir``
serves.
"""
from __future__ import annotations

import csv
import io
import json
import socket
import sys
import time
from collections.abc import Iterable, Sequence
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from rep_tune.progress import STDOUT
from rep_tune.config import RepConfig
from rep_tune.deployable import DeployTarget, Expected, ExpectedFigure, Provenance
from rep_tune.figures import METRICS
from rep_tune.search import record
from rep_tune.search.confirm import SELECTION_RULE
from rep_tune.search.optuna_backend import file_lock, is_trained
from rep_tune.schema import atomic_write_bytes, atomic_write_text, from_dict
from rep_tune.search.record import TrialRecord, read_all
from rep_tune.search.targets import Target


def version() -> str:
    try:
        from importlib.metadata import version as v
        return v("rep-tune")
    except Exception:
        return "unknown"


def pct(x: float | None) -> str:
    """Display a fraction as percent."""
    return "-" if x is None else f"{100 * x:.2f}"


def records(study: optuna.Study) -> list[TrialRecord]:
    return read_all(study.get_trials(deepcopy=False))


def scored(recs: Sequence[TrialRecord]) -> list[TrialRecord]:
    """Trials with a real accuracy (trained or replayed)."""
    return [r for r in recs if r.scored]


def role_trial(recs: Sequence[TrialRecord], role: str) -> TrialRecord | None:
    return next((r for r in recs if r.role == role), None)


def best_for(recs: Sequence[TrialRecord], key: str) -> TrialRecord | None:
    feas = [r for r in recs if r.scored and r.feasible(key)]
    return max(feas, key=lambda r: (r.final_acc, -r.number)) if feas else None


def pareto(recs: Sequence[TrialRecord], key: str) -> list[TrialRecord]:
    """Non-dominated trials: accuracy up, every cost metric on ``key`` down."""
    def vec(r: TrialRecord):
        return (-r.final_acc, *[r.value_of(m, key) if r.value_of(m, key) is not None else float("inf") for m in METRICS])
    pts = [(vec(r), r) for r in recs]
    return [r for v, r in pts if not any(all(a <= b for a, b in zip(w, v)) and w != v for w, _ in pts)]


def _scenario_text(scen) -> str:
    return f"{scen.dataset}, {scen.n_tasks} tasks"


def deployable(r: TrialRecord, target: Target, study: optuna.Study, settings,
               refs: dict[str, TrialRecord | None]) -> RepConfig:
    """The trial's knobs as deployed on ``target``, with target, expected and provenance filled."""
    proxy = RepConfig.from_dict(r.config)
    cfg = target.deployed_config(proxy)
    dep = target.deployment(proxy)
    cfg.name = f"rep-{cfg.prompt.method}-{target.key}"
    cfg.target = from_dict(DeployTarget, {
        "device": target.profile.name, "profile": target.path, "kind": target.profile.kind,
        "budgets": target.budgets.to_dict() if target.budgets else {}, "deployment": dep.to_dict()})
    scen = settings.scenario
    label = (f"direct: measured on {proxy.backbone.name}, the deployed model" if dep.accuracy == "direct" else
             f"proxy: measured on {proxy.backbone.name} ({_scenario_text(scen)}), not on the deployed {dep.backbone}")
    expected: dict[str, Any] = {
        "final_acc": {"value": round(r.final_acc, 6), "unit": "fraction", "source": "measured",
                      "accuracy": dep.accuracy, "detail": label + "; final average accuracy after the last task, "
                      f"at the search's fidelity ({proxy.training.epochs} epoch(s), "
                      f"{proxy.training.iters_per_task or 'all'} iterations per task"
                      + (f"; ALD's keep schedule laid over the deployment's {proxy.ald.horizon} iterations per task "
                         f"(ald.horizon), so the proxy dropped the blocks the deployment drops)"
                         if proxy.ald.enabled and proxy.ald.horizon else ")"),
                      "proxy": {"backbone": proxy.backbone.name, "scenario": scen.to_dict()},
                      "machine": socket.gethostname()},
        "forgetting": {"value": r.forgetting, "unit": "fraction", "source": "measured"},
    }
    for m in METRICS:
        fig = r.figure(m, target.key)
        if fig is not None:
            where = target.where(long=True)
            expected[m] = {"value": round(fig.value, 6), "unit": fig.unit, "source": fig.source,
                           "machine": target.profile.name, "detail": where}
    for role, rt in refs.items():
        if rt is not None:
            expected[f"gain_over_{role}"] = {
                "final_acc_delta": round(r.final_acc - rt.final_acc, 6),
                **{f"{m}_ratio": round(r.value_of(m, target.key) / rt.value_of(m, target.key), 4)
                   for m in METRICS if r.value_of(m, target.key) and rt.value_of(m, target.key)},
                "reference_trial": rt.number}
    cfg.expected = from_dict(Expected, expected)
    cfg.provenance = from_dict(Provenance, {"rep_tune_version": version(), "study_name": study.study_name,
                      "storage": STUDY_FILE, "trial": r.number, "config_hash": r.config_hash,
                      "profile": target.profile.name, "profile_checksum": target.profile.checksum(),
                      "search_space": settings.space, "sampler": settings.sampler, "seed": settings.seed,
                      "search_fidelity": {"backbone": proxy.backbone.name, "epochs": proxy.training.epochs,
                                          "iters_per_task": proxy.training.iters_per_task,
                                          "batch_size": proxy.training.batch_size, "ald_horizon": proxy.ald.horizon,
                                          "scenario": scen.to_dict()},
                      "host": socket.gethostname(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    return cfg.validate()


def write_confirmed(outcome, settings, conf, recs: Sequence[TrialRecord]) -> None:
    """Rewrite best_<device>.yaml from the confirmation: the confirmed best's knobs, its test accuracy
    (mean and 95 % interval over paired seeds) as ``expected.final_acc``, the search's own score
    kept beside it, and ``expected.confirmed`` with every figure of the stage."""
    study, run_dir = outcome.study, Path(outcome.run_dir)
    by_number = {r.number: r for r in recs}
    refs = {role: role_trial(scored(recs), role) for role in ("paper", "baseline")}
    for t in outcome.targets:
        answer = conf.answers.get(t.key)
        if answer is None or answer.best is None or answer.best.trial not in by_number:
            continue
        r = by_number[answer.best.trial]
        cfg = deployable(r, t, study, settings, refs)
        ti = answer.best.test_interval(conf.report_seeds)
        if not ti.n:                          # every report run failed: keep the search's answer
            continue
        exp = cfg.expected
        score = exp.final_acc
        exp.search_acc = dataclasses.replace(score, detail="the search's score: " + score.detail)
        exp.final_acc = ExpectedFigure(
            value=round(ti.mean, 6), unit="fraction", source="measured", accuracy=score.accuracy,
            ci95=ti.to_dict()["ci95"], seeds=sorted(answer.best.test_on(conf.report_seeds)), test_images=conf.test_size,
            detail=f"test accuracy after the last task, mean over {ti.n} training seeds at {conf.describe_fidelity()}; "
                   f"chosen on validation ({conf.val_size} images) over the selection seeds by the "
                   f"{SELECTION_RULE}; the test set only reports it" + ("" if conf.fresh else " (on the selection seeds: biased upwards)"),
            proxy=score.proxy, machine=score.machine)
        exp.confirmed = {**answer.summary(), **conf.to_dict(), "candidates": [c.label for c in conf.candidates]}
        if answer.vs_paper is not None and exp.gain_over_paper is not None:
            exp.gain_over_paper.update(final_acc_delta=round(answer.vs_paper.mean, 6),
                                       final_acc_delta_ci95=answer.vs_paper.to_dict()["ci95"],
                                       resolved=answer.vs_paper.resolved)
        outcome.bests[t.key] = r
        outcome.files[f"best_{t.key}"] = cfg.save(run_dir / f"best_{t.key}.yaml")


def write_trials_csv(study: optuna.Study, targets: Sequence[Target], path: Path) -> Path:
    """One row per trial; one column per figure, source and parameter (no dict reprs)."""
    recs = records(study)
    params: list[str] = []
    for r in recs:
        params += [p for p in r.params if p not in params]
    cols = ["trial", "state", "kind", "objective", "final_acc", "role", "prescreened", "trained", "cached_from",
            "pruned_at_task", "stopped", "train_seconds", "forgetting", "error", "interrupted", "prescreen_reason",
            "config_hash", "owner"]
    for t in targets:        # the record's own keys, so a column reads like the dashboard's attribute
        for m in METRICS:
            cols += [record.value_key(m, t.key), record.source_key(m, t.key), record.predicted_key(m, t.key)]
        cols.append(record.feasible_key(t.key))
    f = io.StringIO()
    w = csv.writer(f)
    w.writerow(cols + params)
    for r in recs:
        row = [r.number, r.state.name, r.kind, r.value, r.final_acc, r.role, r.prescreened, r.trained,
               r.cached_from, r.pruned_at_task, r.stopped, r.train_seconds, r.forgetting, r.error, r.interrupted,
               r.prescreen_reason, r.config_hash, r.owner]
        for t in targets:
            d = r.devices.get(t.key)
            for m in METRICS:
                fig = d.figures.get(m) if d else None
                pred = d.predicted.get(m) if d else None
                row += [None if fig is None else fig.value, None if fig is None else fig.source,
                        None if pred is None else pred.value]
            row.append(None if d is None else d.feasible)
        w.writerow(row + [r.params.get(p) for p in params])
    return atomic_write_text(path, f.getvalue())


def write_pareto(recs: Sequence[TrialRecord], target: Target, best: TrialRecord | None,
                 refs: dict[str, TrialRecord | None], run_dir: Path) -> tuple[Path, Path]:
    key = target.key
    trials = scored(recs)
    front = {r.number for r in pareto(trials, key)}
    csv_path = run_dir / f"pareto_{key}.csv"
    f = io.StringIO()
    w = csv.writer(f)
    w.writerow(["trial", "final_acc", *[c for m in METRICS for c in (m, f"{m}_source")], "feasible", "on_front",
                "role", "best"])
    for r in sorted(trials, key=lambda r: -r.final_acc):
        figs = [c for m in METRICS for c in (r.value_of(m, key), (r.figure(m, key) or _NOFIG).source)]
        w.writerow([r.number, round(r.final_acc, 6), *figs, r.feasible(key), r.number in front, r.role,
                    best is not None and r.number == best.number])
    atomic_write_text(csv_path, f.getvalue())
    png_path = run_dir / f"pareto_{key}.png"
    _plot(recs, target, best, refs, png_path)
    return csv_path, png_path


class _NoFigure:
    source = None


_NOFIG = _NoFigure()


def _plot(recs: Sequence[TrialRecord], target: Target, best: TrialRecord | None,
          refs: dict[str, TrialRecord | None], png_path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = target.key
    trials = scored(recs)
    pre = [r for r in recs if r.prescreened]
    metrics = [m for m in METRICS if any(r.figure(m, key) for r in [*trials, *pre])] or ["latency_ms"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 5.0), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        spec = METRICS[m]
        b = target.budgets.budgets.get(m) if target.budgets else None
        pts = [(r.value_of(m, key), 100 * r.final_acc, r) for r in trials if r.value_of(m, key) is not None]
        ok = [p for p in pts if p[2].feasible(key)]
        over = [p for p in pts if not p[2].feasible(key)]
        fr, top = [], float("-inf")        # the front in this projection; the CSV's on_front is the full one
        for p in sorted(pts, key=lambda p: (p[0], -p[1])):
            if p[1] > top:
                fr.append(p)
                top = p[1]
        ax.scatter([p[0] for p in ok], [p[1] for p in ok], c="tab:blue", s=20, alpha=0.6, label="trained, within budgets")
        ax.scatter([p[0] for p in over], [p[1] for p in over], marker="x", c="tab:red", s=40, zorder=7,
                   label="trained, over a budget")
        ax.step([p[0] for p in fr], [p[1] for p in fr], "-", where="post", c="0.4", lw=1, label="accuracy front")
        xs = [r.value_of(m, key) for r in pre if r.value_of(m, key) is not None]
        if xs:
            ax.scatter(xs, [0.02] * len(xs), transform=ax.get_xaxis_transform(), marker="|", c="0.5", s=90,
                       label="pre-screened (never trained; predicted cost)")
        for role, marker, color in (("paper", "s", "tab:orange"), ("baseline", "D", "tab:purple")):
            rt = refs.get(role)
            if rt is not None and rt.value_of(m, key) is not None:
                ax.scatter([rt.value_of(m, key)], [100 * rt.final_acc], marker=marker, c=color, s=70, zorder=5,
                           label=f"{role} (trial {rt.number})")
        if best is not None and best.value_of(m, key) is not None:
            ax.scatter([best.value_of(m, key)], [100 * best.final_acc], marker="*", c="gold", edgecolors="k", s=220,
                       zorder=6, label=f"best within budgets (trial {best.number})")
        if b is not None:
            ax.axvline(b.value, ls="--", c="k", lw=1)
            ax.text(b.value, 0.98, f" budget {b.value:.4g} {spec.unit}" if b.value < 1e4 else f" budget {b.value:,.0f} {spec.unit}", transform=ax.get_xaxis_transform(),
                    ha="left", va="top", fontsize=8, rotation=90)
        sources = sorted({str((r.figure(m, key) or _NOFIG).source) for _, _, r in pts}) or [target.cost_source]
        ax.set_xlabel(f"{spec.label} [{spec.unit}; {'/'.join(sources)}]")
        ax.set_ylabel("final average accuracy (%)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(f"rep-tune search on {target.profile.name} (costs on {target.where()})")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(png_path, buf.getvalue())


def write_outputs(outcome, settings, *, out=STDOUT) -> None:
    """Every file of the run folder, then the summary table and where the files are."""
    study, run_dir = outcome.study, Path(outcome.run_dir)
    recs = records(study)
    refs = {role: role_trial(scored(recs), role) for role in ("paper", "baseline")}
    outcome.files["trials"] = write_trials_csv(study, outcome.targets, run_dir / "trials.csv")
    for t in outcome.targets:
        best = best_for(recs, t.key)
        outcome.bests[t.key] = best
        path = run_dir / f"best_{t.key}.yaml"
        if best is not None:
            outcome.files[f"best_{t.key}"] = deployable(best, t, study, settings, refs).save(path)
        elif path.exists():
            path.unlink()            # a resumed run that no longer has a feasible trial: no stale file
        outcome.files[f"pareto_{t.key}.csv"], outcome.files[f"pareto_{t.key}.png"] = write_pareto(recs, t, best, refs, run_dir)
    publish(outcome, recs)
    print_summary(outcome, recs, refs, out=out)


def _score_label(outcome) -> str:
    """What the search's accuracies are measured on: 'val (500 imgs)'."""
    scen = getattr(outcome.settings, "scenario", None)
    if scen is None:
        return ""
    from rep_tune.data.registry import known_classes
    per = scen.val_per_class if scen.eval_split == "val" else scen.eval_per_class
    if per and scen.max_per_class and scen.eval_split == "val":
        per = min(per, scen.max_per_class // 2)          # the validation split takes at most half a class
    classes = known_classes(scen.dataset)
    n = f"{per * classes:,} imgs" if per and classes else "all"
    return f"{'val' if scen.eval_split == 'val' else 'test'} ({n})"


def print_summary(outcome, recs: Sequence[TrialRecord], refs: dict[str, TrialRecord | None], *, out=STDOUT) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=out, width=130)
    study = outcome.study
    n_pre = sum(r.prescreened for r in recs)
    n_trained = sum(r.paid for r in recs)
    n_pruned = sum(r.state == TrialState.PRUNED and not r.prescreened for r in recs)
    n_fail = sum(r.state == TrialState.FAIL for r in recs)
    console.print(f"[bold]rep-tune search[/bold] {escape(study.study_name)}: {len(recs)} trials, {n_trained} trained, "
                  f"{n_pre} ruled out by the cost model before training, {n_pruned} pruned, {n_fail} failed")
    if outcome.stopped_by_cap:
        console.print("[yellow]stopped at the trial cap: almost every candidate is ruled out; loosen the budgets?[/yellow]")
    for t in outcome.targets:
        key = t.key
        table = Table(title=escape(f"{t.profile.name} ({t.cost_source} cost) - {t.budgets.describe() if t.budgets else ''}"),
                      title_justify="left")
        cols = ["", "trial", f"{_score_label(outcome)} acc %", "forgetting %", *[f"{METRICS[m].flag} {METRICS[m].unit}" for m in METRICS], "fits"]
        for col in cols:
            table.add_column(col, justify="right" if col else "left")
        best = outcome.bests.get(key)
        for label, r in (("best", best), ("paper default", refs.get("paper")), ("baseline", refs.get("baseline"))):
            if r is None:
                table.add_row(label, "-", "none feasible" if label == "best" else "not trained", *[""] * (len(cols) - 3))
                continue
            figs = ["-" if r.value_of(m, key) is None else f"{r.value_of(m, key):.4g}" for m in METRICS]
            table.add_row(label, str(r.number), pct(r.final_acc), pct(r.forgetting), *figs,
                          "yes" if r.feasible(key) else "NO")
        console.print(table)
        if best is not None:
            for role in ("paper", "baseline"):
                rt = refs.get(role)
                if rt is not None:
                    ratios = ", ".join(f"{best.value_of(m, key) / rt.value_of(m, key):.2f}x its {METRICS[m].flag}"
                                       for m in METRICS if best.value_of(m, key) and rt.value_of(m, key))
                    console.print(f"  gain over {role}: {100 * (best.final_acc - rt.final_acc):+.2f} accuracy points"
                                  f"{' at ' + ratios if ratios else ''} (search fidelity, one seed: the best of many "
                                  f"noisy trials overstates itself; the confirmation below retrains with seeds)"
                                  if outcome.settings is not None and outcome.settings.confirm_seeds > 0 else
                                  f"  gain over {role}: {100 * (best.final_acc - rt.final_acc):+.2f} accuracy points"
                                  f"{' at ' + ratios if ratios else ''} (unconfirmed: one seed at search fidelity)")
        else:
            console.print(f"  [red]no trained config fits the budgets on {escape(t.profile.name)}[/red]")
    if outcome.loop.lost:
        console.print(f"[yellow]trials {outcome.loop.lost} were finished by another process while this one held them[/yellow]")
    console.print(escape(f"run folder: {shown(outcome.run_dir)}"))
    for name, p in outcome.files.items():
        console.print(escape(f"  {name}: {shown(p)}"))
    hint = dashboard_hint(outcome.run_dir)
    if hint:
        console.print(escape(f"  dashboard: {hint}"))


@dataclass
class ProgressBar:
    """Progress bar over trained trials, with the best feasible accuracy so far per device."""

    total: int | None
    targets: Sequence[Target]
    enabled: bool = True
    done: int = 0

    def __enter__(self) -> ProgressBar:
        self.bar = None
        if self.enabled:
            from rep_tune.progress import ProgressBar
            self.bar = ProgressBar(self.total, "search", unit="trained trials", initial=self.done)
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.bar is None:
            return
        if is_trained(trial):
            self.bar.update(1)
        recs = records(study)
        post = {}
        for t in self.targets:
            b = best_for(recs, t.key)
            post[t.key] = "-" if b is None else f"{100 * b.final_acc:.1f}%"
        post["ruled_out"] = sum(r.prescreened for r in recs)
        self.bar.set_postfix(post)


# ---- paths as shown ----------------------------------------------------------------------------
STUDY_FILE = "study.db"                      # the study's file in the run folder (relative: provenance)


def shown(path: str | Path) -> str:
    """``path`` relative to the working folder when under it, else as given (no absolute path of
    this machine in output that need not have one)."""
    p = Path(path)
    try:
        rel = p.resolve().relative_to(Path.cwd().resolve())
    except (ValueError, OSError):
        return str(p)
    return str(rel)


# ---- optuna-dashboard: notes, artifacts, the command -------------------------------------------
ARTIFACT_DIR = "artifacts"                   # <run>/artifacts: the run's optuna artifact store


def dashboard_module():
    """``optuna_dashboard`` when installed (the ``dashboard`` extra), else None."""
    from rep_tune.extras import MissingExtra, require
    try:
        return require("dashboard", "optuna_dashboard")
    except MissingExtra:
        return None


def dashboard_hint(run_dir: str | Path) -> str | None:
    """The command that opens the run in optuna-dashboard (``--artifact-dir`` when artifacts were
    uploaded), or the pip command when it is not installed."""
    run_dir = Path(run_dir)
    if dashboard_module() is None:
        return "pip install 'rep-tune[dashboard]' to browse the study in optuna-dashboard"
    cmd = f"optuna-dashboard sqlite:///{shown(run_dir / STUDY_FILE)}"
    art = run_dir / ARTIFACT_DIR
    if art.is_dir() and any(art.iterdir()):
        cmd += f" --artifact-dir {shown(art)}"
    return cmd


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"


def _pct_over(c: float) -> str:
    return f"{100 * c:+.0f}%"


def _fidelity(r: TrialRecord, scenario) -> str:
    """The search's fidelity the trial was scored at: proxy, schedule, scenario."""
    cfg = r.config or {}
    tr, bb = cfg.get("training") or {}, cfg.get("backbone") or {}
    iters = tr.get("iters_per_task")
    text = (f"proxy `{bb.get('name', '?')}`, {tr.get('epochs', '?')} epoch(s) of "
            f"{iters if iters else 'all'} iterations per task, batch {tr.get('batch_size', '?')}")
    if scenario is not None:
        split = getattr(scenario, "eval_split", "test")
        text += f"; {scenario.dataset}, {scenario.n_tasks} tasks, scored on its {split} split"
    return text


def _headline(r: TrialRecord, devices: Sequence[str]) -> str:
    over = [d for d in devices if d in r.devices and r.devices[d].feasible is False]
    fits = "within every budget" if not over else f"over budget on {', '.join(over)}"
    if r.prescreened:
        return "**pre-screened**: ruled out by the cost model before training (never trained: no accuracy)"
    if r.state == TrialState.FAIL:
        if r.interrupted:
            return f"interrupted ({r.interrupted}): not counted, a resumed run trains it again"
        if r.trained:
            return f"**training failed**: {r.error or 'no error recorded'}"
        return f"**refused** before training: {r.error or 'no reason recorded'}"
    if r.state == TrialState.PRUNED:
        if r.stopped:
            return f"stopped ({r.stopped}) after {len(r.task_acc)} task(s); {fits} (predicted)"
        at = "" if r.pruned_at_task is None else f" after task {r.pruned_at_task}"
        last = f" at running accuracy {pct(r.task_acc[-1])} %" if r.task_acc else ""
        return f"**pruned**{at}{last} (below the other trials at that task); {fits} (predicted)"
    if r.state == TrialState.COMPLETE:
        return f"accuracy **{pct(r.final_acc)} %**, {fits}"
    return r.state.name.lower()


def trial_note(r: TrialRecord, targets: Sequence[Target], scenario=None) -> str:
    """The Markdown note of one finished trial: what happened, its verdict per budget and device with
    the source of each figure, and the fidelity it was scored at."""
    lines = [f"### Trial {r.number}: {_headline(r, [t.key for t in targets])}", ""]
    if r.role:
        lines.append(f"Reference point: the **{r.role}** preset (always trained, so results state their gain over it).")
    if r.cached_from is not None:
        lines.append(f"Replays trial {r.cached_from}'s training (same config, `{r.config_hash}`): not trained again.")
    if r.prescreen_reason:
        lines.append(f"Ruled out: {r.prescreen_reason} (beyond the pre-screen margin on every device).")
    if r.over_budget_reference:
        lines.append(f"Trained although the cost model rules it out: {r.over_budget_reference}.")
    rows = []
    for t in targets:
        d = r.devices.get(t.key)
        if d is None:
            continue
        budgets = t.budgets.budgets if t.budgets else {}
        for m, spec in METRICS.items():
            fig = d.figures.get(m) or d.predicted.get(m)
            if fig is None:
                continue
            b = budgets.get(m)
            c = d.constraints.get(m)
            if b is None:
                verdict, limit = "not budgeted", "-"
            else:
                limit = _num(b.value)
                verdict = "-" if c is None else ("within" if c <= 0 else "**OVER**") + f" ({_pct_over(c)})"
            rows.append(f"| {t.key} | {spec.flag} [{spec.unit}] | {_num(fig.value)} | {limit} | {verdict} | {fig.source} |")
    if rows:
        lines += ["", "| device | metric | figure | budget | verdict | source |", "|---|---|---|---|---|---|", *rows]
    where = [t.describe_costs() for t in targets]
    lines += ["", "Costs: " + "; ".join(where) + "."]
    if r.config:
        lines.append(f"Search fidelity (accuracy ranking only, not the deployment's): {_fidelity(r, scenario)}.")
    return "\n".join(lines) + "\n"


def note_trial(study: optuna.Study, trial: optuna.trial.BaseTrial, targets: Sequence[Target], scenario=None) -> bool:
    """Save ``trial``'s note (``trial_note``) for optuna-dashboard; best effort: False when the
    dashboard is not installed or the storage refused (a note never stops a search)."""
    dash = dashboard_module()
    if dash is None or not isinstance(trial, optuna.Trial):
        return False
    try:
        r = TrialRecord.read(study._storage.get_trial(trial._trial_id))
        dash.save_note(trial, trial_note(r, targets, scenario))
        return True
    except Exception:
        return False


def study_note(outcome, recs: Sequence[TrialRecord]) -> str:
    """The study's note: counts, where each trial kind is shown, the best within budgets per device."""
    n_pre = sum(r.prescreened for r in recs)
    n_pruned = sum(r.state == TrialState.PRUNED and not r.prescreened for r in recs)
    lines = [f"## rep-tune search {outcome.study.study_name}", "",
             f"{len(recs)} trials: {sum(r.paid for r in recs)} trained, {n_pre} ruled out by the cost model before "
             f"training (state *Pruned*, user attribute `prescreened`, no value), {n_pruned} pruned by the pruner, "
             f"{sum(r.state == TrialState.FAIL for r in recs)} failed.", "",
             "The objective value is the true final average accuracy (a fraction), over budget or not; the budgets "
             "are Optuna constraints (`cost / budget - 1`, <= 0 within budget). The dashboard's *Best Trial* ranks "
             "by accuracy alone, so it may show an over-budget trial. **Best within budgets**:", ""]
    for t in outcome.targets:
        b = outcome.bests.get(t.key)
        if b is None:
            lines.append(f"- {t.key}: none (no trained config fits its budgets)")
            continue
        figs = ", ".join(f"{METRICS[m].flag} {b.value_of(m, t.key):.4g} {METRICS[m].unit}" for m in METRICS
                         if b.value_of(m, t.key) is not None)
        lines.append(f"- {t.key}: trial {b.number}, accuracy {pct(b.final_acc)} % ({figs}); `best_{t.key}.yaml`")
    lines += ["", "Each trial's note gives its verdict per budget and device, the source of each cost figure and "
              "the search's fidelity. Artifacts: Pareto plots, best_<device>.yaml, confirm.csv (when confirmed)."]
    return "\n".join(lines) + "\n"


def publish_artifacts(study: optuna.Study, run_dir: str | Path, paths: Iterable[str | Path]) -> list[str]:
    """Upload ``paths`` as study artifacts to the file store ``<run>/artifacts``; a file name uploaded
    before is overwritten under its artifact id (one entry per name, never a duplicate). Under the
    run folder's study lock (processes sharing the run). Returns the artifact ids."""
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact
    from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX

    run_dir = Path(run_dir)
    store_dir = run_dir / ARTIFACT_DIR
    store_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(store_dir))
    storage, sid = study._storage, study._study_id
    ids = []
    with file_lock(run_dir / ".study.lock"):
        known = {}
        for key, value in storage.get_study_system_attrs(sid).items():
            if key.startswith(ARTIFACTS_ATTR_PREFIX):
                meta = json.loads(value)
                if meta:
                    known[meta["filename"]] = meta["artifact_id"]
        for p in map(Path, paths):
            if not p.is_file():
                continue
            if p.name in known:
                with open(p, "rb") as f:
                    store.write(known[p.name], f)
                ids.append(known[p.name])
            else:
                ids.append(upload_artifact(artifact_store=store, file_path=str(p), study_or_trial=study))
    return ids


def artifact_files(files: dict[str, Path]) -> list[Path]:
    """The run's files worth a look from the dashboard: Pareto plots, best_<device>.yaml, confirm.csv."""
    return [p for name, p in files.items() if name == "confirm" or name.startswith("best_")
            or (name.startswith("pareto_") and str(p).endswith(".png"))]


def publish(outcome, recs: Sequence[TrialRecord] | None = None) -> None:
    """The study note and the run's files as artifacts, when optuna-dashboard is installed (best effort:
    a failure is one line on stderr, never a failed search)."""
    dash = dashboard_module()
    if dash is None:
        return
    try:
        recs = records(outcome.study) if recs is None else recs
        dash.save_note(outcome.study, study_note(outcome, recs))
        publish_artifacts(outcome.study, outcome.run_dir, artifact_files(outcome.files))
    except Exception as e:                   # a note or an artifact is never worth a failed search
        print(f"rep-tune search: dashboard notes/artifacts not written ({type(e).__name__}: {e})", file=sys.stderr)
