"""SearchSpace: distributions over RepConfig fields, loaded from ``rep_tune/search_spaces/*.yaml``.

File format. :class:`SpaceFile` and :class:`Param` are its schema: ``rep_tune.schema.from_dict``
checks types and unknown keys, then every bound and choice is written into the base config and
validated, so a bad file fails at load with file, field, expected and found::

    version: 1
    name: l2p
    method: l2p                 # a registered prompt method (rep_tune.methods): l2p | dualprompt | coda
    base: paper                 # preset the sampled values are written into (paper | baseline)
    fixed: {training.epochs: 2} # dotted RepConfig overrides applied before sampling (optional)
    params:
      prompt.length:       {type: int, low: 1, high: 10}
      ald.gamma:           {type: float, low: 1.0e-4, high: 0.1, log: true}
      selection.surrogate: {type: categorical, choices: [paper, null]}
      training.precision:  {type: categorical, choices: [fp32, bf16]}
      atom.form:           {type: categorical, choices: [ramp, per_layer]}
      atom.r:              {type: int, low: 0, high: 16}       # ramp: ToMe count r
      atom.inflect:        {type: float, low: -1.0, high: 1.0} # 1 = paper's linear ramp 0..2r
      atom.per_layer:      {type: int, low: 0, high: 16}       # one merge count per block

Keys are dotted RepConfig leaf fields, plus four AToM keys that are not fields: ``atom.form``
picks the schedule form, ``atom.r``/``atom.inflect`` parametrise ToMe's ``parse_r((r, inflect))``
ramp (which contains the paper's ramp: inflect = 1), and ``atom.per_layer`` expands to
``atom.merge_0 .. atom.merge_{depth-1}`` (the full per-layer form). ``selection.surrogate`` may
list ``paper``: the surrogate the paper preset pairs with the run's backbone
(``rep_tune.config.paper_surrogate``), so one space file serves every backbone.

Conditional parameters (define-by-run, so TPE sees only what a config uses):
``<section>.enabled = false`` hides the other ``<section>.*`` parameters; ``atom.form`` hides the
parameters of the other form; ``ald.schedule = pld`` hides ``ald.tau`` and ``ald.alpha`` (PLD has
no token term). ``prompt.top_k`` is sampled in ``[low, min(high, pool_size)]``.

How a parameter maps to config fields is one table (:data:`BINDINGS`, :class:`MergeSchedule`),
read both ways: :meth:`SearchSpace.sample` writes a trial's values into a config and
:meth:`SearchSpace.params_of` reads a config back into values. Both run the same walk over the
parameters (:meth:`SearchSpace._walk`: order, conditions, bounds), only the source of the answers
differs (the trial, or the config), and ``params_of`` checks that its answer rebuilds the config.

Export targets: :func:`restrict_to_export` narrows a space to what an export format can express
(``rep-tune search --export-target rep-argparse|tome``), reading the format's own declaration
(``rep_tune.export.Capabilities``), so every point of the restricted space exports exactly.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import optuna

from rep_tune.config import EMBEDDED_BACKBONE, PRESETS, RepConfig, paper_surrogate, preset
from rep_tune.methods import method_names
from rep_tune.schedule import INFLECTS, fit_ramp, ramp
from rep_tune.schema import SchemaError, check, from_dict as schema_from_dict, read_mapping
from rep_tune.shipped import SPACES, resolve, shipped_dir

SPACES_DIR = shipped_dir(SPACES)     # rep_tune/search_spaces, package data (importlib.resources)
SPACE_VERSION = 1
PAPER = "paper"                 # symbolic surrogate choice: paper_surrogate(backbone)
ATOM_KEYS = ("atom.form", "atom.r", "atom.inflect", "atom.per_layer")
FORMS = ("ramp", "per_layer")
# fields that are not searchable: the method is the file's ``method:``, the schedule is atom.* above
NOT_PARAMS = ("version", "name", "prompt.method", "atom.merge", "target", "expected", "provenance")


# ---- the file's schema --------------------------------------------------------------------------
@dataclass
class Param:
    """One searched dimension, as written in the file."""

    type: Literal["int", "float", "categorical"]
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: list[Any] | None = None
    name: str = field(default="", init=False)     # the parameter's key (set on load, not a file field)

    def distribution(self, high: float | None = None) -> optuna.distributions.BaseDistribution:
        """The Optuna distribution (``high`` overrides the upper bound, e.g. top_k <= pool_size)."""
        hi = self.high if high is None else high
        if self.type == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(hi), log=self.log, step=int(self.step or 1))
        if self.type == "float":
            return optuna.distributions.FloatDistribution(float(self.low), float(hi), log=self.log, step=self.step)
        return optuna.distributions.CategoricalDistribution(self.choices)

    def contains(self, value: Any, high: float | None = None) -> bool:
        """Whether ``value`` is a point of this dimension (with ``high`` overriding the upper bound)."""
        if self.type == "categorical":
            return value in self.choices
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and not isinstance(value, int):
            return False
        if not self.low <= value <= (self.high if high is None else high):
            return False
        if self.step:
            k = (value - self.low) / self.step
            return abs(k - round(k)) < 1e-9
        return True

    def bounds(self) -> str:
        return repr(self.choices) if self.type == "categorical" else f"[{self.low}, {self.high}]"

    def check_shape(self, source: str | None) -> None:
        """Checks of the spec itself (types are already checked by the schema)."""
        where = f"params.{self.name}"
        if self.type == "categorical":
            check(isinstance(self.choices, list) and bool(self.choices), source, f"{where}.choices",
                  "a non-empty list", self.choices)
            for k in ("low", "high", "step"):
                check(getattr(self, k) is None, source, f"{where}.{k}", "no bounds for a categorical parameter",
                      getattr(self, k))
            check(not self.log, source, f"{where}.log", "no log for a categorical parameter", self.log)
            for c in self.choices:
                check(c is None or isinstance(c, (bool, int, str)) or (isinstance(c, float) and math.isfinite(c)),
                      source, f"{where}.choices", "null, true/false, numbers or strings", c)
            check(len(set(map(repr, self.choices))) == len(self.choices), source, f"{where}.choices",
                  "distinct choices", self.choices)
            return
        check(self.choices is None, source, f"{where}.choices", "no choices for a numeric parameter", self.choices)
        for bound in ("low", "high"):
            v = getattr(self, bound)
            if self.type == "int":
                check(isinstance(v, int), source, f"{where}.{bound}", "an int", v)
            else:
                check(v is not None and math.isfinite(v), source, f"{where}.{bound}", "a finite number", v)
        check(self.low <= self.high, source, f"{where}.high", f"a value >= low ({self.low})", self.high)
        check(not self.log or self.low > 0, source, f"{where}.low", "a value > 0 with log: true", self.low)
        if self.step is not None:
            ok = (isinstance(self.step, int) if self.type == "int" else math.isfinite(self.step)) and self.step > 0
            check(ok, source, f"{where}.step", "a positive int" if self.type == "int" else "a positive number", self.step)
            check(not self.log, source, f"{where}.step", "no step with log: true", self.step)


@dataclass
class SpaceFile:
    """A search-space file as written (see the module docstring)."""

    version: int = SPACE_VERSION
    name: str | None = None
    description: str | None = None
    method: str = "l2p"
    base: str = "paper"
    fixed: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Param] = field(default_factory=dict)

    @classmethod
    def __schema_in__(cls, data: dict, source: str | None, prefix: str) -> dict:
        if data.get("fixed", {}) is None:          # ``fixed:`` with nothing under it
            data["fixed"] = {}
        return data

    def validate(self, source: str | None = None) -> None:
        """Checks that need no config: version, method, base, non-empty params, each spec's shape."""
        check(self.version == SPACE_VERSION, source, "version", str(SPACE_VERSION), self.version)
        check(self.method in method_names(), source, "method",
              "one of " + ", ".join(repr(m) for m in method_names()), self.method)
        check(self.base in PRESETS, source, "base", "one of " + ", ".join(PRESETS), self.base)
        check(bool(self.params), source, "params", "a non-empty mapping of parameter specs", self.params)
        for key, p in self.params.items():
            p.name = key
            p.check_shape(source)


# ---- the table: how each parameter maps to config fields, both ways --------------------------------
class Binding:
    """One parameter <-> one config field: ``write`` gives the changes for a value, ``read`` the
    value a config has (its inverse). The plain case: the parameter is the dotted field itself."""

    def write(self, key: str, value: Any, base: RepConfig) -> dict[str, Any]:
        return {key: value}

    def read(self, key: str, cfg: RepConfig, param: Param) -> Any:
        return _get(cfg, key)


class SurrogateBinding(Binding):
    """``paper`` stands for ``paper_surrogate(backbone)``: the same file serves every backbone."""

    def write(self, key: str, value: Any, base: RepConfig) -> dict[str, Any]:
        return {key: paper_surrogate(base.backbone.name) if value == PAPER else value}

    def read(self, key: str, cfg: RepConfig, param: Param) -> Any:
        s = cfg.selection.surrogate
        if PAPER in param.choices and s is not None and s == paper_surrogate(cfg.backbone.name):
            return PAPER
        return s


class AtomEnabledBinding(Binding):
    """AToM on with no merge anywhere trains like AToM off, so it reads back as off."""

    def read(self, key: str, cfg: RepConfig, param: Param) -> Any:
        return bool(cfg.atom.enabled and any(cfg.atom.merge))


BINDINGS: dict[str, Binding] = {"selection.surrogate": SurrogateBinding(), "atom.enabled": AtomEnabledBinding()}
FIELD = Binding()

Ask = Callable[[str, Param, "float | None"], Any]    # (parameter name, spec, upper bound override) -> value


class MergeSchedule:
    """The AToM keys (``atom.form/r/inflect/per_layer``) <-> ``atom.merge``.

    Written with ``rep_tune.schedule.ramp`` or as per-layer counts; read back with
    ``rep_tune.schedule.fit_ramp`` (the one ramp inversion, shared with the exporters): the
    exact ramp when the space can say it, else the per-layer form.
    """

    @staticmethod
    def forms(space: SearchSpace) -> tuple[str, ...]:
        return MergeSchedule.forms_of(space.params)

    @staticmethod
    def forms_of(params: dict[str, Param]) -> tuple[str, ...]:
        """The schedule forms parameters ``params`` search: ``atom.form``'s choices, else the one whose key is there."""
        if "atom.form" in params:
            return tuple(params["atom.form"].choices)
        return ("per_layer",) if "atom.per_layer" in params else ("ramp",)

    @staticmethod
    def implied_r(base: RepConfig) -> int:
        """r when the space has no ``atom.r``: the base schedule's (its largest count is 2r)."""
        return max(base.merge_schedule or [0]) // 2

    def write(self, space: SearchSpace, ask: Callable[..., Any], base: RepConfig) -> list[int]:
        depth = base.backbone.arch.depth
        form = ask("atom.form") if "atom.form" in space.params else self.forms(space)[0]
        if form == "ramp":
            r = ask("atom.r") if "atom.r" in space.params else self.implied_r(base)
            inflect = ask("atom.inflect") if "atom.inflect" in space.params else 1.0
            return ramp(int(r), depth, float(inflect))
        return [int(ask("atom.per_layer", name=f"atom.merge_{i}")) for i in range(depth)]

    def read(self, space: SearchSpace, cfg: RepConfig) -> dict[str, Any]:
        """Values of the AToM keys that give ``cfg``'s schedule; ValueError when none do."""
        merge, p, forms = cfg.merge_schedule, space.params, self.forms(space)
        closest = ""
        if "ramp" in forms:
            inflect = p.get("atom.inflect")
            continuous = inflect is not None and inflect.type == "float" and not inflect.step
            fit = fit_ramp(merge, [i for i in INFLECTS if inflect.contains(i)] if inflect else [1.0],
                           span=(inflect.low, inflect.high) if continuous else None)
            r_ok = p["atom.r"].contains(fit.r) if "atom.r" in p else fit.r == self.implied_r(cfg)
            if fit.exact and r_ok and (inflect is None or inflect.contains(fit.inflect)):
                return {"atom.form": "ramp", "atom.r": fit.r, "atom.inflect": fit.inflect}
            closest = f"; closest ramp {fit.describe()}"
        if "per_layer" in forms and "atom.per_layer" in p:
            return {"atom.form": "per_layer", **{f"atom.merge_{i}": m for i, m in enumerate(merge)}}
        raise ValueError(f"{space.source}: params.atom.*: the merge schedule {merge} of {cfg.name} is not a point "
                         f"of the space (forms {list(forms)}){closest}")


MERGE = MergeSchedule()


# ---- the space ------------------------------------------------------------------------------------
@dataclass
class SearchSpace:
    """Distributions over RepConfig fields and how a sampled point becomes a RepConfig."""

    name: str
    method: str
    base: str = "paper"
    params: dict[str, Param] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"
    export_target: str | None = None          # set by restrict_to_export

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        """Load and validate a space file (or a shipped one by name: ``l2p``, ``dualprompt``, ``coda``).

        An existing path is the user's file; a missing ``l2p`` or ``search_spaces/l2p.yaml`` is the
        shipped one (from any folder); anything else missing raises FileNotFoundError.
        """
        p = resolve(path, SPACES)
        return cls.from_dict(read_mapping(p), source=str(p))

    @classmethod
    def from_dict(cls, data: dict, source: str = "<memory>") -> SearchSpace:
        spec = schema_from_dict(SpaceFile, data, source=source)
        space = cls(name=spec.name or Path(source).stem, method=spec.method, base=spec.base,
                    params=spec.params, fixed=dict(spec.fixed), source=source)
        try:
            base = space.base_config()
        except SchemaError as e:
            raise SchemaError(source, f"fixed.{e.field}" if e.field in spec.fixed else "fixed",
                              e.expected, e.found) from None
        except (KeyError, TypeError, IndexError) as e:
            raise SchemaError(source, "fixed", "dotted RepConfig field paths", str(e)) from None
        space._check_against(base)
        return space

    def _check_against(self, base: RepConfig) -> None:
        """Every key a searchable field, every bound and choice a valid config (checked on ``base``).

        top_k is sampled up to the sampled pool_size, so the other bounds are checked with top_k at
        its low end (the one value every sampled pool admits; checked below).
        """
        top_k = self.params.get("prompt.top_k")
        if top_k is not None and top_k.type == "int" and _is_leaf(base, "prompt.top_k"):
            base = base.replace(**{"prompt.top_k": min(top_k.low, base.prompt.pool_size)})
        for key, p in self.params.items():
            where = f"params.{key}"
            if key in ATOM_KEYS:
                self._check_atom_param(p, where)
                continue
            check(key not in NOT_PARAMS and _is_leaf(base, key), self.source, where,
                  "a dotted RepConfig field path or one of " + ", ".join(ATOM_KEYS), key)
            if p.type == "categorical":
                points = [("choices", c) for c in p.choices]
            elif p.type == "int":
                # the bounds and their grid neighbours: a parity rule (CODA's even length) fails on one
                # of two neighbours (an inner point's error names the parameter itself)
                grid = range(p.low, p.high + 1, p.step or 1)
                inner = sorted({grid[1], grid[-2]} - {p.low, p.high}) if len(grid) > 2 else []
                points = [("low", p.low), ("high", p.high)] + [("", v) for v in inner]
            else:     # floats: the field's checks are ranges, so the bounds decide (as floats: an int field refuses them)
                points = [("low", float(p.low)), ("high", float(p.high))]
            if key == "prompt.top_k":     # sampled in [low, min(high, pool_size)]: the low end must fit every pool
                pool = self.params.get("prompt.pool_size")
                smallest = pool.low if pool is not None and pool.type == "int" else base.prompt.pool_size
                check(p.type != "int" or p.low <= smallest, self.source, f"{where}.low",
                      f"a value <= the smallest prompt.pool_size ({smallest})", p.low)
                points = points[:1]
            for which, value in points:
                try:
                    base.replace(**BINDINGS.get(key, FIELD).write(key, value, base)).validate()
                except SchemaError as e:
                    expected = e.expected if e.field == key else f"{e.expected} for {e.field}"
                    if key == "selection.surrogate":
                        expected += f" (or {PAPER!r}: the paper preset's surrogate of the backbone)"
                    if not which:
                        expected += f" at every point of [{p.low}, {p.high}]"
                    raise SchemaError(self.source, f"{where}.{which}" if which else where, expected, value) from None
                except (ValueError, KeyError, TypeError) as e:
                    raise SchemaError(self.source, f"{where}.{which}" if which else where,
                                      f"a value {key} accepts ({e})", value) from None

    def _check_atom_param(self, p: Param, where: str) -> None:
        """The AToM keys' own domains (they are not config fields)."""
        src = self.source
        if p.name == "atom.form":
            check(p.type == "categorical", src, f"{where}.type", "'categorical' for atom.form", p.type)
            for c in p.choices:
                check(c in FORMS, src, f"{where}.choices", f"values in {list(FORMS)}", c)
        elif p.name == "atom.inflect":
            check(p.type != "categorical", src, f"{where}.type", "'int' or 'float' for atom.inflect", p.type)
            check(-1 <= p.low and p.high <= 1, src, where, "a range inside [-1, 1] (ToMe's inflection)", [p.low, p.high])
        else:
            check(p.type == "int", src, f"{where}.type", f"'int' for {p.name}", p.type)
            check(p.low >= 0, src, f"{where}.low", "an int >= 0", p.low)

    # ---- configs ---------------------------------------------------------------------------
    def base_config(self, backbone: str = EMBEDDED_BACKBONE, **overrides: Any) -> RepConfig:
        """The preset the sampled values are written into, with ``fixed`` and ``overrides`` applied."""
        return preset(self.base, self.method, backbone, **{**self.fixed, **overrides})

    def _walk(self, base: RepConfig, ask: Ask) -> tuple[dict[str, Any], dict[str, Any]]:
        """Ask every active parameter once and collect the config changes; shared by sample and params_of.

        Order: the file's order, a controlling parameter (``<section>.enabled``, ``ald.schedule``,
        ``prompt.pool_size`` for top_k) asked just before the first parameter it controls, the
        AToM keys last. Returns (parameter values, dotted changes to ``base``). Normalisation (so
        equal trainings hash equal): AToM off, or on with no merge anywhere -> ``atom.enabled =
        false, atom.merge = []``; no surrogate -> ``selection.cache = false`` (the base method's
        per-iteration query pass) and ``selection.query_model = separate`` (its own query ViT).
        """
        values: dict[str, Any] = {}

        def value(key: str, name: str | None = None, high: float | None = None) -> Any:
            name = name or key
            if name not in values:
                values[name] = ask(name, self.params[key], high)
            return values[name]

        def current(key: str) -> Any:
            return value(key) if key in self.params and active(key) else _get(base, key)

        def active(key: str) -> bool:
            section, _, leaf = key.partition(".")
            if leaf != "enabled" and f"{section}.enabled" in self.params and not value(f"{section}.enabled"):
                return False
            if key in ("ald.tau", "ald.alpha") and current("ald.schedule") == "pld":
                return False
            return True

        changes: dict[str, Any] = {}
        for key in self.params:
            if key in ATOM_KEYS or not active(key):
                continue
            high = None
            if key == "prompt.top_k":
                high = min(self.params[key].high, current("prompt.pool_size"))
            changes.update(BINDINGS.get(key, FIELD).write(key, value(key, high=high), base))
        atom_on = changes.get("atom.enabled", base.atom.enabled)
        if atom_on and any(k in self.params for k in ATOM_KEYS):
            changes["atom.merge"] = MERGE.write(self, value, base)
            atom_on = any(changes["atom.merge"])
            if not atom_on:
                changes["atom.enabled"] = False
        if not atom_on:
            changes["atom.merge"] = []
        if changes.get("selection.surrogate", base.selection.surrogate) is None:
            changes["selection.cache"] = False
            changes["selection.query_model"] = "separate"     # as the reference code builds the base method
        return values, changes

    def sample(self, trial: optuna.trial.BaseTrial, base: RepConfig) -> RepConfig:
        """Suggest every active parameter on ``trial`` and return the resulting (validated) RepConfig."""
        def ask(name: str, p: Param, high: float | None) -> Any:
            hi = p.high if high is None else high
            if p.type != "categorical" and hi < p.low:
                raise ValueError(f"{self.source}: params.{name}: low {p.low} exceeds the bound {hi} this config allows")
            if p.type == "int":
                return trial.suggest_int(name, int(p.low), int(hi), log=p.log, step=int(p.step or 1))
            if p.type == "float":
                return trial.suggest_float(name, float(p.low), float(hi), log=p.log, step=p.step)
            return trial.suggest_categorical(name, p.choices)

        _, changes = self._walk(base, ask)
        return base.replace(**changes)            # replace() converts and validates it (once)

    # ---- inverse: a config as a point of the space (for enqueue_trial) ------------------------
    def params_of(self, cfg: RepConfig) -> dict[str, Any]:
        """The parameter values that reproduce ``cfg`` (presets are enqueued with these).

        Raises ValueError naming the parameter when ``cfg`` lies outside the space.
        """
        reading: dict[str, Any] = {}

        def ask(name: str, p: Param, high: float | None) -> Any:
            if name not in reading:
                if name in ATOM_KEYS or name.startswith("atom.merge_"):
                    reading.update(MERGE.read(self, cfg))
                else:
                    reading[name] = BINDINGS.get(name, FIELD).read(name, cfg, p)
            v = reading[name]
            if not p.contains(v, high):
                raise ValueError(f"{self.source}: params.{name}: {cfg.name} needs {v!r}, outside the space "
                                 f"({p.bounds()}{'' if high is None else f', up to {high} here'})")
            return v

        values, changes = self._walk(cfg, ask)
        rebuilt = cfg.replace(**changes)
        normalised = ("atom.enabled", "atom.merge", "selection.cache", "selection.query_model")
        differ = [k for k in changes if k not in normalised and _get(rebuilt, k) != _get(cfg, k)]
        if rebuilt.merge_schedule != cfg.merge_schedule:
            differ.append("atom.merge")
        if differ:
            raise ValueError(f"{self.source}: the space cannot reproduce {', '.join(differ)} of {cfg.name}")
        return values

    def for_export(self, target: str | None, overrides: dict[str, Any] | None = None) -> SearchSpace:
        """This space restricted to what export format ``target`` expresses (:func:`restrict_to_export`)."""
        return restrict_to_export(self, target, overrides)

    def describe(self) -> dict:
        """Plain form for provenance."""
        return {"name": self.name, "source": self.source, "method": self.method, "base": self.base,
                "params": {k: {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name != "name"}
                           for k, p in self.params.items()},
                "fixed": dict(self.fixed), "export_target": self.export_target}


# ---- restriction to what an export format can express ----------------------------------------------
def restrict_to_export(space: SearchSpace, target: str | None, overrides: dict[str, Any] | None = None) -> SearchSpace:
    """``space`` narrowed to what export format ``target`` can express, so the search's best (every
    point of the returned space) exports to it exactly, with no ``allow_approx``. ``None``: ``space``.

    Reads the format's declaration (``rep_tune.export.capabilities(target)``), the one its exporter
    refuses from: a method it cannot run is refused (ValueError saying why); a categorical parameter
    keeps only the choices it expresses (one left: the parameter becomes a ``fixed`` value, so the
    paper/baseline references stay points of the space, written with that value, as ``fixed`` and
    ``--set`` values always are); a field the space does not search but whose base value the target
    cannot express is fixed to the first value it can; a section fixed off loses its parameters. The
    merge schedule keeps the forms it expresses and ``atom.inflect`` only its inflections (e.g. the
    integer ramps of ``--scheduling_factor``: ``{type: float, low: -1, high: 1, step: 1}``).
    A ``fixed`` or ``overrides`` (``--set``) value the target cannot express is a ValueError.
    """
    if target is None:
        return space
    from rep_tune.export import capabilities

    caps = capabilities(target)
    where = f"--export-target {target}: {space.source}"
    why = caps.why_not(space.method)
    if why:
        raise ValueError(f"{where}: method {space.method}: {why}")
    params, fixed, given = dict(space.params), dict(space.fixed), {**space.fixed, **(overrides or {})}
    base = space.base_config(**(overrides or {}))

    def pin(key: str, allowed: tuple | None) -> None:
        if allowed is None:
            return
        if key in given:
            if given[key] not in allowed:
                what = "--set" if key in (overrides or {}) else "fixed"
                raise ValueError(f"{where}: {what} {key}={given[key]!r}: {target} expresses only {list(allowed)}")
            return
        p = params.get(key)
        if p is None:
            if _get(base, key) not in allowed:
                fixed[key] = allowed[0]
            return
        keep = [c for c in (p.choices or []) if c in allowed and type(c) is type(allowed[0])]
        if p.type != "categorical" or not keep:
            raise ValueError(f"{where}: params.{key} {p.bounds()}: {target} expresses only {list(allowed)}")
        if len(keep) == 1:
            del params[key]
            fixed[key] = keep[0]
        else:
            params[key] = _narrowed(p, choices=keep)

    pin("training.precision", caps.precisions)
    pin("atom.prop_attn", caps.prop_attn)
    if base.layout().n_prompt:           # prompts in the sequence: whether they merge is the target's rule
        pin("atom.protect_prompts", caps.protect_prompts)
    if caps.ald_schedules == ():         # no layer dropping at all
        pin("ald.enabled", (False,))
    else:
        pin("ald.schedule", caps.ald_schedules)
    for section in ("atom", "ald"):      # a section fixed off: its other parameters would be sampled for nothing
        if f"{section}.enabled" not in params and not given.get(f"{section}.enabled", fixed.get(
                f"{section}.enabled", _get(base, f"{section}.enabled"))):
            for key in [k for k in params if k.startswith(section + ".")]:
                del params[key]
    _restrict_merge(params, caps, where, target, base)
    out = dataclasses.replace(space, params=params, fixed=fixed, export_target=target)
    out._check_against(out.base_config())
    return out


def _narrowed(p: Param, **changes: Any) -> Param:
    q = dataclasses.replace(p, **changes)
    q.name = p.name
    return q


def _restrict_merge(params: dict[str, Param], caps, where: str, target: str, base: RepConfig) -> None:
    """The AToM keys narrowed to the schedule forms and ramp inflections ``caps`` expresses."""
    if not any(k in params for k in ATOM_KEYS):
        if base.atom.enabled and any(base.merge_schedule):
            fit = fit_ramp(base.merge_schedule, caps.inflects or INFLECTS)
            if not ("per_layer" in caps.merge_forms or ("ramp" in caps.merge_forms and fit.exact)):
                raise ValueError(f"{where}: the base merge schedule {base.merge_schedule} is no ramp {target} expresses")
        return
    forms = [f for f in MERGE.forms_of(params) if f in caps.merge_forms]
    if not forms:
        raise ValueError(f"{where}: params.atom.*: the space searches {list(MERGE.forms_of(params))} merge "
                         f"schedules; {target} expresses only {list(caps.merge_forms)} (add atom.form/atom.r)")
    if "per_layer" not in forms:
        params.pop("atom.per_layer", None)
    if "ramp" not in forms:
        for key in ("atom.r", "atom.inflect"):
            params.pop(key, None)
    if "atom.form" in params:
        if len(forms) == 1:
            del params["atom.form"]          # MergeSchedule.forms: the form whose keys remain
        else:
            params["atom.form"] = _narrowed(params["atom.form"], choices=forms)
    if "ramp" not in forms or caps.inflects is None:
        return
    p = params.get("atom.inflect")
    if p is None:                             # the ramp's default inflection is 1 (the paper's ramp)
        if 1.0 not in caps.inflects:
            raise ValueError(f"{where}: params.atom.inflect: the default inflection 1 is not one {target} expresses "
                             f"({list(caps.inflects)})")
        return
    allowed = sorted({float(i) for i in caps.inflects if p.contains(float(i) if p.type == "float" else int(i))})
    steps = {round(b - a, 9) for a, b in zip(allowed, allowed[1:])}
    if not allowed or len(steps) > 1:
        raise ValueError(f"{where}: params.atom.inflect {p.bounds()}: {target} expresses only the inflections "
                         f"{list(caps.inflects)}, none (or no evenly spaced set of them) inside it")
    if allowed == [1.0]:
        del params["atom.inflect"]            # the default
    else:
        params["atom.inflect"] = _narrowed(p, type="float", low=allowed[0], high=allowed[-1], log=False,
                                           step=steps.pop() if steps else None)


def config_hash(cfg: RepConfig) -> str:
    """Identity of what a config trains (name, target, expected and provenance excluded)."""
    data = cfg.to_dict()
    for key in ("name", "target", "expected", "provenance"):
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def shipped_spaces() -> list[Path]:
    return sorted(SPACES_DIR.glob("*.yaml"))


def default_space(method: str = "l2p") -> Path:
    return SPACES_DIR / f"{method}.yaml"


# ---- helpers ---------------------------------------------------------------------------------
def _is_leaf(cfg: RepConfig, dotted: str) -> bool:
    """Whether ``dotted`` names a field of ``cfg`` that holds a value (not a section)."""
    node: Any = cfg
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            return False
        node = getattr(node, part)
    return not dataclasses.is_dataclass(node)


def _get(cfg: RepConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node
