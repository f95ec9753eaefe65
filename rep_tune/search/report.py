"""Reports of a search: best feasible config per device, Pareto CSV/PNG, trials.csv, summary table.

Only trained trials with an accuracy (COMPLETE, not prescreened) are candidates; "best for
device D" is the most accurate one whose ``feasible@D`` attribute is true, so several devices
share one set of trained trials. The Pareto front maximises accuracy and minimises latency and
peak memory on D (all trained trials, feasible or not; budgets drawn as lines).
"""
from __future__ import annotations

import csv
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from rep_tune.config import RepConfig
from rep_tune.search.budgets import METRICS, UNITS
from rep_tune.search.optuna_backend import is_trained, storage_url
from rep_tune.search.targets import Target


def version() -> str:
    try:
        from importlib.metadata import version as v
        return v("rep-tune")
    except Exception:
        return "unknown"


def scored(study: optuna.Study) -> list[FrozenTrial]:
    """Trials with a real accuracy (trained or replayed from the cache)."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not t.user_attrs.get("prescreened") and t.value is not None]


def role_trial(trials: Sequence[FrozenTrial], role: str) -> FrozenTrial | None:
    return next((t for t in trials if t.user_attrs.get("role") == role), None)


def best_for(trials: Sequence[FrozenTrial], key: str) -> FrozenTrial | None:
    feas = [t for t in trials if t.user_attrs.get(f"feasible@{key}")]
    return max(feas, key=lambda t: (t.value, -t.number)) if feas else None


def pareto(trials: Sequence[FrozenTrial], key: str) -> list[FrozenTrial]:
    """Non-dominated trials: accuracy up, latency and memory on ``key`` down."""
    def vec(t):
        return (-t.value, t.user_attrs.get(f"latency_ms@{key}", float("inf")),
                t.user_attrs.get(f"peak_memory_mb@{key}", float("inf")))
    pts = [(vec(t), t) for t in trials]
    return [t for v, t in pts if not any(all(a <= b for a, b in zip(w, v)) and w != v for w, _ in pts)]


def _figure(t: FrozenTrial, m: str, key: str) -> dict | None:
    v = t.user_attrs.get(f"{m}@{key}")
    if v is None:
        return None
    return {"value": v, "unit": UNITS[m], "source": t.user_attrs.get(f"{m}_source@{key}")}


def deployable(t: FrozenTrial, target: Target, study: optuna.Study, settings, refs: dict[str, FrozenTrial | None]) -> RepConfig:
    """The trial's RepConfig with target, expected and provenance filled."""
    cfg = RepConfig.from_dict(t.user_attrs["config"])
    cfg.name = f"rep-{cfg.prompt.method}-{target.key}"
    cfg.target = {"device": target.profile.name, "profile": target.path, "kind": target.profile.kind,
                  "cost_source": target.cost_source, "budgets": target.budgets.to_dict() if target.budgets else {}}
    scen = settings.scenario
    acc_detail = f"{scen.dataset}, {scen.n_tasks} tasks, final average accuracy after the last task"
    expected: dict[str, Any] = {
        "final_acc": {"value": round(t.value, 4), "unit": "%", "source": "measured", "detail": acc_detail,
                      "machine": socket.gethostname()},
        "forgetting": {"value": t.user_attrs.get("forgetting"), "unit": "points", "source": "measured"},
    }
    for m in METRICS:
        fig = _figure(t, m, target.key)
        if fig is not None:
            fig["machine"] = target.profile.name
            expected[m] = fig
    for role, rt in refs.items():
        if rt is not None:
            expected[f"gain_over_{role}"] = {
                "accuracy_points": round(t.value - rt.value, 4),
                **{f"{m}_ratio": round(t.user_attrs[f"{m}@{target.key}"] / rt.user_attrs[f"{m}@{target.key}"], 4)
                   for m in METRICS if t.user_attrs.get(f"{m}@{target.key}") and rt.user_attrs.get(f"{m}@{target.key}")},
                "reference_trial": rt.number}
    cfg.expected = expected
    cfg.provenance = {"rep_tune_version": version(), "study_name": study.study_name,
                      "storage": storage_url(settings.run_dir), "trial": t.number,
                      "profile": target.profile.name, "profile_checksum": target.profile.checksum(),
                      "search_space": settings.space, "sampler": settings.sampler, "seed": settings.seed,
                      "scenario": scen.to_dict(), "host": socket.gethostname(),
                      "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return cfg.validate()


def write_trials_csv(study: optuna.Study, targets: Sequence[Target], path: Path) -> Path:
    cols = ["trial", "state", "accuracy", "role", "prescreened", "trained", "cached_from", "pruned_at_task",
            "train_seconds", "forgetting", "error", "prescreen_reason"]
    for t in targets:
        cols += [f"{m}@{t.key}" for m in METRICS] + [f"source@{t.key}", f"feasible@{t.key}"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols + ["params"])
        for tr in study.get_trials(deepcopy=False):
            ua = tr.user_attrs
            row = [tr.number, tr.state.name, tr.value, ua.get("role"), ua.get("prescreened"), ua.get("trained"),
                   ua.get("cached_from"), ua.get("pruned_at_task"), ua.get("train_seconds"), ua.get("forgetting"),
                   ua.get("error"), ua.get("prescreen_reason")]
            for t in targets:
                row += [ua.get(f"{m}@{t.key}") for m in METRICS]
                row += [ua.get(f"latency_ms_source@{t.key}"), ua.get(f"feasible@{t.key}")]
            w.writerow(row + [repr(tr.params)])
    return path


def write_pareto(trials: Sequence[FrozenTrial], target: Target, best: FrozenTrial | None,
                 refs: dict[str, FrozenTrial | None], run_dir: Path) -> tuple[Path, Path]:
    key = target.key
    front = {t.number for t in pareto(trials, key)}
    csv_path = run_dir / f"pareto_{key}.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["trial", "accuracy", "latency_ms", "peak_memory_mb", "energy_j", "source", "feasible", "on_front",
                    "role", "best"])
        for t in sorted(trials, key=lambda t: -t.value):
            ua = t.user_attrs
            w.writerow([t.number, round(t.value, 4), ua.get(f"latency_ms@{key}"), ua.get(f"peak_memory_mb@{key}"),
                        ua.get(f"energy_j@{key}"), ua.get(f"latency_ms_source@{key}"), ua.get(f"feasible@{key}"),
                        t.number in front, ua.get("role"), best is not None and t.number == best.number])
    png_path = run_dir / f"pareto_{key}.png"
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, m in zip(axes, ("latency_ms", "peak_memory_mb")):
        pts = [(t.user_attrs.get(f"{m}@{key}"), t.value, t) for t in trials if t.user_attrs.get(f"{m}@{key}") is not None]
        # the front in this projection (accuracy vs this metric); the CSV's on_front is the 3-D front
        fr, top = [], float("-inf")
        for p in sorted(pts, key=lambda p: (p[0], -p[1])):
            if p[1] > top:
                fr.append(p)
                top = p[1]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], c="0.7", s=18, label="trained trials")
        ax.step([p[0] for p in fr], [p[1] for p in fr], "-", where="post", c="tab:blue", lw=1)
        ax.plot([p[0] for p in fr], [p[1] for p in fr], "o", c="tab:blue", ms=5, label="Pareto front")
        sources = sorted({str(t.user_attrs.get(f"{m}_source@{key}")) for _, _, t in pts}) or [target.cost_source]
        for role, marker, color in (("paper", "s", "tab:orange"), ("baseline", "D", "tab:red")):
            rt = refs.get(role)
            if rt is not None and rt.user_attrs.get(f"{m}@{key}") is not None:
                ax.scatter([rt.user_attrs[f"{m}@{key}"]], [rt.value], marker=marker, c=color, s=70, zorder=5,
                           label=f"{role} (trial {rt.number})")
        if best is not None:
            ax.scatter([best.user_attrs[f"{m}@{key}"]], [best.value], marker="*", c="gold", edgecolors="k", s=220,
                       zorder=6, label=f"best feasible (trial {best.number})")
        b = target.budgets.budgets.get(m) if target.budgets else None
        if b is not None:
            ax.axvline(b.value, ls="--", c="k", lw=1, label=f"budget {b.value:.3g} {UNITS[m]}")
        src = "/".join(sources)
        ax.set_xlabel(f"latency per training iteration ({UNITS[m]}, {src})" if m == "latency_ms"
                      else f"peak training memory ({UNITS[m]}, {src})")
        ax.set_ylabel("final average accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(f"rep-tune search on {target.profile.name}")
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return csv_path, png_path


def write_outputs(outcome, settings, *, out=sys.stdout) -> None:
    """Every file of the run folder, then the summary table and where the files are."""
    study, run_dir = outcome.study, Path(outcome.run_dir)
    trials = scored(study)
    refs = {role: role_trial(trials, role) for role in ("paper", "baseline")}
    outcome.files["trials"] = write_trials_csv(study, outcome.targets, run_dir / "trials.csv")
    for t in outcome.targets:
        best = best_for(trials, t.key)
        outcome.bests[t.key] = best
        if best is not None:
            outcome.files[f"best_{t.key}"] = deployable(best, t, study, settings, refs).save(run_dir / f"best_{t.key}.yaml")
        outcome.files[f"pareto_{t.key}.csv"], outcome.files[f"pareto_{t.key}.png"] = write_pareto(trials, t, best, refs, run_dir)
    print_summary(outcome, refs, out=out)


def print_summary(outcome, refs: dict[str, FrozenTrial | None], *, out=sys.stdout) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=out, width=120)
    study = outcome.study
    all_trials = study.get_trials(deepcopy=False)
    n_pre = sum(bool(t.user_attrs.get("prescreened")) for t in all_trials)
    n_trained = sum(is_trained(t) for t in all_trials)
    n_pruned = sum(t.state == TrialState.PRUNED for t in all_trials)
    n_fail = sum(t.state == TrialState.FAIL for t in all_trials)
    console.print(f"[bold]rep-tune search[/bold] {study.study_name}: {len(all_trials)} trials, {n_trained} trained, "
                  f"{n_pre} ruled out by the cost model before training, {n_pruned} pruned, {n_fail} failed")
    if outcome.stopped_by_cap:
        console.print("[yellow]stopped at the trial cap: almost every candidate is ruled out; loosen the budgets?[/yellow]")
    for t in outcome.targets:
        key = t.key
        table = Table(title=escape(f"{t.profile.name} ({t.cost_source} cost) - {t.budgets.describe() if t.budgets else ''}"),
                      title_justify="left")
        for col in ("", "trial", "accuracy %", "forgetting", "latency ms", "memory MB", "energy J", "fits"):
            table.add_column(col, justify="right" if col else "left")
        best = outcome.bests.get(key)
        for label, tr in (("best", best), ("paper default", refs.get("paper")), ("baseline", refs.get("baseline"))):
            if tr is None:
                table.add_row(label, "-", "none feasible" if label == "best" else "not trained", "", "", "", "", "")
                continue
            ua = tr.user_attrs
            f = lambda m: "-" if ua.get(f"{m}@{key}") is None else f"{ua[f'{m}@{key}']:.4g}"
            fg = ua.get("forgetting")
            table.add_row(label, str(tr.number), f"{tr.value:.2f}", "-" if fg is None else f"{fg:.2f}",
                          f("latency_ms"), f("peak_memory_mb"), f("energy_j"), "yes" if ua.get(f"feasible@{key}") else "NO")
        console.print(table)
        if best is not None:
            for role in ("paper", "baseline"):
                rt = refs.get(role)
                if rt is not None:
                    console.print(f"  gain over {role}: {best.value - rt.value:+.2f} accuracy points "
                                  f"at {best.user_attrs[f'latency_ms@{key}'] / rt.user_attrs[f'latency_ms@{key}']:.2f}x its latency, "
                                  f"{best.user_attrs[f'peak_memory_mb@{key}'] / rt.user_attrs[f'peak_memory_mb@{key}']:.2f}x its memory")
        else:
            console.print(f"  [red]no trained config fits the budgets on {t.profile.name}[/red]")
    console.print(escape(f"run folder: {Path(outcome.run_dir).resolve()}"))
    for name, p in outcome.files.items():
        console.print(escape(f"  {name}: {p}"))
    console.print(escape(f"  dashboard: optuna-dashboard {storage_url(outcome.run_dir)}"))


@dataclass
class ProgressBar:
    """tqdm bar over trained trials, with the best feasible accuracy so far per device."""

    total: int | None
    targets: Sequence[Target]
    enabled: bool = True
    done: int = 0

    def __enter__(self) -> ProgressBar:
        self.bar = None
        if self.enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=self.total, initial=self.done, unit="trained trial", dynamic_ncols=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.bar is None:
            return
        if is_trained(trial):
            self.bar.update(1)
        trials = scored(study)
        post = {}
        for t in self.targets:
            b = best_for(trials, t.key)
            post[t.key] = "-" if b is None else f"{b.value:.1f}%"
        post["ruled_out"] = sum(bool(t.user_attrs.get("prescreened")) for t in study.get_trials(deepcopy=False))
        self.bar.set_postfix(post, refresh=True)
