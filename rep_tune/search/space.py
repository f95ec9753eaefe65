"""SearchSpace: distributions over RepConfig fields, loaded from ``search_spaces/*.yaml``.

File format (every key is checked; errors name the file and the key)::

    version: 1
    name: l2p
    method: l2p                 # l2p | dualprompt
    base: paper                 # preset the sampled values are written into (paper | baseline)
    fixed: {training.epochs: 2} # dotted RepConfig overrides applied before sampling (optional)
    params:
      prompt.length:     {type: int, low: 1, high: 10}
      ald.gamma:         {type: float, low: 1.0e-4, high: 0.1, log: true}
      selection.surrogate: {type: categorical, choices: [vit_pico_patch4_32.fmnist, null]}
      atom.form:         {type: categorical, choices: [ramp, per_layer]}
      atom.r:            {type: int, low: 0, high: 16}       # ramp: ToMe count r
      atom.inflect:      {type: float, low: -1.0, high: 1.0} # 1 = paper's linear ramp 0..2r
      atom.per_layer:    {type: int, low: 0, high: 16}       # one merge count per block

Keys are dotted RepConfig paths, plus four AToM keys that are not fields:
``atom.form`` picks the schedule form, ``atom.r``/``atom.inflect`` parametrise ToMe's
``parse_r((r, inflect))`` ramp (which contains the paper's ramp: inflect = 1), and
``atom.per_layer`` expands to ``atom.merge_0 .. atom.merge_{depth-1}`` (the full per-layer form).

Conditional parameters (define-by-run, so TPE sees only what a config uses):
``<section>.enabled = false`` hides the other ``<section>.*`` parameters; ``atom.form`` hides the
parameters of the other form. ``prompt.top_k`` is sampled in ``[low, min(high, pool_size)]``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from rep_tune.config import EMBEDDED_BACKBONE, PRESETS, RepConfig, preset
from rep_tune.schedule import ramp
from rep_tune.schema import SchemaError, check, read_mapping

SPACES_DIR = Path(__file__).resolve().parent.parent.parent / "search_spaces"
SPACE_VERSION = 1
ATOM_KEYS = ("atom.form", "atom.r", "atom.inflect", "atom.per_layer")
FORMS = ("ramp", "per_layer")


@dataclass
class Param:
    """One searched dimension."""

    name: str
    type: str                       # int | float | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] = field(default_factory=list)

    def distribution(self, high: float | None = None) -> optuna.distributions.BaseDistribution:
        hi = self.high if high is None else high
        if self.type == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(hi), log=self.log, step=int(self.step or 1))
        if self.type == "float":
            return optuna.distributions.FloatDistribution(float(self.low), float(hi), log=self.log, step=self.step)
        return optuna.distributions.CategoricalDistribution(self.choices)

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.choices
        return value is not None and not isinstance(value, bool) and self.low <= value <= self.high


@dataclass
class SearchSpace:
    """Distributions over RepConfig fields and how a sampled point becomes a RepConfig."""

    name: str
    method: str
    base: str = "paper"
    params: dict[str, Param] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    # ---- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        """Load and validate a space file (or a shipped one by name: ``l2p``, ``dualprompt``)."""
        p = Path(path)
        if not p.exists() and (SPACES_DIR / f"{path}.yaml").exists():
            p = SPACES_DIR / f"{path}.yaml"
        return cls.from_dict(read_mapping(p), source=str(p))

    @classmethod
    def from_dict(cls, data: dict, source: str = "<memory>") -> SearchSpace:
        known = {"version", "name", "method", "base", "fixed", "params", "description"}
        for key in data:
            check(key in known, source, key, "one of " + ", ".join(sorted(known)), key)
        check(data.get("version", SPACE_VERSION) == SPACE_VERSION, source, "version", str(SPACE_VERSION), data.get("version"))
        method = data.get("method", "l2p")
        check(method in ("l2p", "dualprompt"), source, "method", "'l2p' or 'dualprompt'", method)
        base = data.get("base", "paper")
        check(base in PRESETS, source, "base", "one of " + ", ".join(PRESETS), base)
        fixed = data.get("fixed") or {}
        check(isinstance(fixed, dict), source, "fixed", "a mapping of dotted RepConfig paths to values", fixed)
        raw = data.get("params")
        check(isinstance(raw, dict) and bool(raw), source, "params", "a non-empty mapping of parameter specs", raw)
        ref = preset(base, method)
        for key in fixed:
            check(_is_field(ref, key), source, f"fixed.{key}", "a dotted RepConfig field path", key)
        params = {key: _parse_param(key, spec, ref, source) for key, spec in raw.items()}
        if "atom.form" in params:
            for choice in params["atom.form"].choices:
                check(choice in FORMS, source, "params.atom.form.choices", f"values in {list(FORMS)}", choice)
        space = cls(name=str(data.get("name", Path(source).stem)), method=method, base=base, params=params,
                    fixed=dict(fixed), source=source)
        try:
            space.base_config()
        except (SchemaError, KeyError, TypeError) as e:
            raise SchemaError(source, "fixed", "overrides that give a valid RepConfig", str(e)) from None
        return space

    # ---- configs ---------------------------------------------------------------------------
    def base_config(self, backbone: str = EMBEDDED_BACKBONE, **overrides: Any) -> RepConfig:
        """The preset the sampled values are written into, with ``fixed`` and ``overrides`` applied."""
        return preset(self.base, self.method, backbone, **{**self.fixed, **overrides})

    def sample(self, trial: optuna.trial.BaseTrial, base: RepConfig) -> RepConfig:
        """Suggest every active parameter on ``trial`` and return the resulting (validated) RepConfig.

        Normalisation (so equal trainings hash equal): AToM off -> ``atom.merge = []``; no
        surrogate -> ``selection.cache = false`` (the base method's per-iteration query pass).
        """
        values: dict[str, Any] = {}

        def suggest(key: str, high: float | None = None, name: str | None = None) -> Any:
            p, name = self.params[key], name or key
            if p.type == "int":
                v = trial.suggest_int(name, int(p.low), int(p.high if high is None else high), log=p.log,
                                      step=int(p.step or 1))
            elif p.type == "float":
                v = trial.suggest_float(name, float(p.low), float(p.high), log=p.log, step=p.step)
            else:
                v = trial.suggest_categorical(name, p.choices)
            values[name] = v
            return v

        def on(section: str) -> bool:
            key = f"{section}.enabled"
            if key not in self.params:
                return True
            return values[key] if key in values else bool(suggest(key))

        changes: dict[str, Any] = {}
        for key in self.params:
            if key in ATOM_KEYS:
                continue
            section = key.split(".")[0]
            if key.endswith(".enabled"):
                changes[key] = on(section)
            elif not on(section):
                continue
            elif key == "prompt.top_k":
                pool = changes.get("prompt.pool_size", base.prompt.pool_size)
                high = min(self.params[key].high, pool)
                if high < self.params[key].low:
                    raise ValueError(f"prompt.top_k: the space's low {self.params[key].low} exceeds pool_size {pool}")
                changes[key] = suggest(key, high=high)
            else:
                changes[key] = suggest(key)
        atom_on = changes.get("atom.enabled", base.atom.enabled)
        if atom_on and any(k in self.params for k in ATOM_KEYS):
            changes["atom.merge"] = self._merge(suggest, base)
        if not atom_on:
            changes["atom.merge"] = []
        if changes.get("selection.surrogate", base.selection.surrogate) is None:
            changes["selection.cache"] = False
        return base.replace(**changes).validate()

    def _merge(self, suggest, base: RepConfig) -> list[int]:
        depth = base.backbone.arch.depth
        if "atom.form" in self.params:
            form = suggest("atom.form")
        else:
            form = "per_layer" if "atom.per_layer" in self.params else "ramp"
        if form == "ramp":
            r = suggest("atom.r") if "atom.r" in self.params else max(base.merge_schedule or [0]) // 2
            inflect = suggest("atom.inflect") if "atom.inflect" in self.params else 1.0
            return ramp(int(r), depth, float(inflect))
        return [int(suggest("atom.per_layer", name=f"atom.merge_{i}")) for i in range(depth)]

    # ---- inverse: a config as a point of the space (for enqueue_trial) ------------------------
    def params_of(self, cfg: RepConfig) -> dict[str, Any]:
        """The parameter values that reproduce ``cfg`` (presets are enqueued with these).

        Raises ValueError naming the parameter when ``cfg`` lies outside the space.
        """
        out: dict[str, Any] = {}
        data = cfg.to_dict()
        data["atom"]["enabled"] = bool(cfg.atom.enabled and any(cfg.atom.merge))

        def on(section: str) -> bool:
            key = f"{section}.enabled"
            return key not in self.params or bool(_get(data, key))

        for key in self.params:
            if key in ATOM_KEYS:
                continue
            section = key.split(".")[0]
            if key.endswith(".enabled"):
                out[key] = on(section)
            elif on(section):
                out[key] = _get(data, key)
        if data["atom"]["enabled"] and any(k in self.params for k in ATOM_KEYS):
            merge = cfg.merge_schedule
            forms = self.params["atom.form"].choices if "atom.form" in self.params else (
                ["ramp"] if "atom.per_layer" not in self.params else ["per_layer"])
            found = _ramp_params(merge, cfg.backbone.arch.depth) if "ramp" in forms else None
            if found is not None and (found[1] == 1.0 or "atom.inflect" in self.params):
                if "atom.form" in self.params:
                    out["atom.form"] = "ramp"
                if "atom.r" in self.params:
                    out["atom.r"] = found[0]
                if "atom.inflect" in self.params:
                    out["atom.inflect"] = found[1]
            elif "per_layer" in forms:
                if "atom.form" in self.params:
                    out["atom.form"] = "per_layer"
                out.update({f"atom.merge_{i}": m for i, m in enumerate(merge)})
            else:
                raise ValueError(f"{self.source}: merge schedule {merge} is not a point of the space")
        for key, value in out.items():
            spec = self.params.get("atom.per_layer" if key.startswith("atom.merge_") else key)
            if not spec.contains(value):
                raise ValueError(f"{self.source}: params.{key}: {cfg.name} needs {value!r}, outside the space "
                                 f"({spec.choices if spec.type == 'categorical' else [spec.low, spec.high]})")
        return out

    def describe(self) -> dict:
        """Plain form for provenance."""
        return {"name": self.name, "source": self.source, "method": self.method, "base": self.base,
                "params": {k: {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name != "name"}
                           for k, p in self.params.items()}}


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
def _parse_param(key: str, spec: Any, ref: RepConfig, source: str) -> Param:
    where = f"params.{key}"
    check(isinstance(spec, dict), source, where, "a mapping with type and low/high or choices", spec)
    allowed = {"type", "low", "high", "log", "step", "choices"}
    for k in spec:
        check(k in allowed, source, f"{where}.{k}", "one of " + ", ".join(sorted(allowed)), k)
    check(key in ATOM_KEYS or _is_field(ref, key), source, where,
          "a dotted RepConfig field path or one of " + ", ".join(ATOM_KEYS), key)
    kind = spec.get("type")
    check(kind in ("int", "float", "categorical"), source, f"{where}.type", "'int', 'float' or 'categorical'", kind)
    if kind == "categorical":
        choices = spec.get("choices")
        check(isinstance(choices, list) and bool(choices), source, f"{where}.choices", "a non-empty list", choices)
        if key in ATOM_KEYS and key != "atom.form":
            check(False, source, f"{where}.type", "'int' or 'float' for this AToM parameter", kind)
        return Param(key, kind, choices=list(choices))
    check("choices" not in spec, source, f"{where}.choices", "no choices for a numeric parameter", spec.get("choices"))
    num = int if kind == "int" else (int, float)
    for bound in ("low", "high"):
        v = spec.get(bound)
        check(isinstance(v, num) and not isinstance(v, bool), source, f"{where}.{bound}",
              "an int" if kind == "int" else "a number", v)
    low, high = spec["low"], spec["high"]
    check(low <= high, source, f"{where}.high", f"a value >= low ({low})", high)
    log = spec.get("log", False)
    check(isinstance(log, bool), source, f"{where}.log", "true or false", log)
    check(not log or low > 0, source, f"{where}.low", "a value > 0 with log: true", low)
    step = spec.get("step")
    check(step is None or (isinstance(step, num) and step > 0), source, f"{where}.step", "a positive number or null", step)
    check(not (log and step), source, f"{where}.step", "no step with log: true", step)
    if key == "atom.form":
        check(False, source, f"{where}.type", "'categorical' for atom.form", kind)
    if kind == "int" and key in ("prompt.length", "prompt.pool_size", "prompt.top_k", "prompt.g_length"):
        check(low >= 1, source, f"{where}.low", "an int >= 1", low)
    if key in ("atom.r", "atom.per_layer", "ald.tau"):
        check(low >= 0, source, f"{where}.low", "an int >= 0", low)
    if key in ("ald.theta_min", "ald.alpha"):
        check(0 < low and high <= 1, source, where, "a range inside (0, 1]", [low, high])
    return Param(key, kind, low=low, high=high, log=log, step=step)


def _is_field(cfg: RepConfig, dotted: str) -> bool:
    node: Any = cfg
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            return False
        node = getattr(node, part)
    return True


def _get(data: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        data = data[part]
    return data


def _ramp_params(merge: list[int], depth: int) -> tuple[int, float] | None:
    """(r, inflect) with ramp(r, depth, inflect) == merge, trying the paper's forms first."""
    for inflect in (1.0, 0.0, -1.0, 0.5, -0.5):
        for r in range(max(merge) + 1):
            if ramp(r, depth, inflect) == list(merge):
                return r, inflect
    return None
