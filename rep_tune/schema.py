"""Typed dataclass <-> dict conversion with validation errors that name file, field, expected and found.

One mechanism for every YAML/JSON object rep-tune reads (RepConfig, DeviceProfile, Scenario,
search spaces): the dataclass field types are the schema.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
import types
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

MAX_FILE_BYTES = 8 * 2 ** 20    # a config, profile, space or scenario is a few KB; refuse runaway inputs
MAX_DEPTH = 32                  # nesting levels of a mapping file (the deepest real one has 4)
MAX_NODES = 200_000             # values after YAML aliases are expanded (stops "billion laughs")

NONFINITE_OK = "nonfinite-ok"
AnyFloat = Annotated[float, NONFINITE_OK]
"""A float field that may hold nan/inf. Plain ``float`` fields must be finite."""


class SchemaError(ValueError):
    """Bad input: names the source file, the field path, what was expected and what was found."""

    def __init__(self, source: str | None, field: str, expected: str, found: Any):
        self.source, self.field, self.expected, self.found = source, field, expected, found
        where = f"{source}: " if source else ""
        super().__init__(f"{where}field '{field}': expected {expected}, found {found!r}")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Annotated:
        return _type_name(get_args(tp)[0])
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        k, v = get_args(tp) or (Any, Any)
        return f"mapping of {_type_name(k)} to {_type_name(v)}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(tp: Any, value: Any, field: str, source: str | None) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, *meta = get_args(tp)
        if base is float and NONFINITE_OK in meta:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SchemaError(source, field, "number", value)
            return float(value)
        return _convert(base, value, field, source)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, field, source)
            except SchemaError as e:
                errors.append(e)
        if len(errors) == 1:
            raise errors[0]
        if isinstance(value, float) and not math.isfinite(value) and (float in args or int in args):
            raise SchemaError(source, field, "a finite number" + (" or null" if type(None) in args else ""), value)
        raise SchemaError(source, field, _type_name(tp), value)
    if origin is Literal:
        if value not in get_args(tp):
            raise SchemaError(source, field, _type_name(tp), value)
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise SchemaError(source, field, _type_name(tp), value)
        (item,) = get_args(tp)[:1] or (Any,)
        out = [_convert(item, v, f"{field}[{i}]", source) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(source, field, _type_name(tp), value)
        kt, vt = get_args(tp) or (Any, Any)
        return {_convert(kt, k, f"{field} (key)", source): _convert(vt, v, f"{field}.{k}", source)
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, source=source, prefix=field)
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(source, field, "bool (true/false)", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(source, field, "int", value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(source, field, "number", value)
        try:
            out = float(value)
        except OverflowError:              # an int beyond float range
            raise SchemaError(source, field, "a finite number", value) from None
        if not math.isfinite(out):
            raise SchemaError(source, field, "a finite number", value)
        return out
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(source, field, "string", value)
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise SchemaError(source, field, _type_name(tp), value)
    return value


def from_dict(cls: type[T], data: Any, *, source: str | None = None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types raise SchemaError.

    After construction the object's ``validate(source)`` method runs, when it has one, for the
    range checks that types cannot express.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SchemaError(source, prefix or "<top>", f"mapping for {cls.__name__}", data)
    dispatch = getattr(cls, "__schema_dispatch__", None)
    if dispatch is not None:               # a tagged union: the data picks the concrete class
        concrete = dispatch(data, source, prefix)
        if concrete is not cls:
            return from_dict(concrete, data, source=source, prefix=prefix)
    hook = getattr(cls, "__schema_in__", None)
    if hook is not None:                   # the class maps its file form onto its fields
        data = hook(dict(data), source, prefix)
    hints = get_type_hints(cls, include_extras=True)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = {f.name for f in fields}
    for key in data:
        if not isinstance(key, str):
            raise SchemaError(source, _join(prefix, str(key)), "a field name (string) of " + cls.__name__, key)
    unknown = sorted(set(data) - names)
    if unknown:
        raise SchemaError(source, _join(prefix, unknown[0]), "one of " + ", ".join(sorted(names)), unknown[0])
    for f in fields:                       # required fields (no default): a SchemaError, not a TypeError
        if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SchemaError(source, _join(prefix, f.name), f"a value ({_type_name(hints[f.name])}; required)",
                              "nothing (field missing)")
    kwargs = {k: _convert(hints[k], v, _join(prefix, k), source) for k, v in data.items()}
    obj = cls(**kwargs)
    if hasattr(obj, "validate") and not prefix:
        obj.validate(source)
    return obj


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def to_dict(obj: Any) -> Any:
    """Plain-data form (dicts, lists, scalars) of a dataclass tree, for YAML/JSON."""
    if dataclasses.is_dataclass(obj):
        plain = {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        hook = getattr(obj, "__schema_out__", None)
        return hook(plain) if hook is not None else plain
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def read_mapping(path: str | Path) -> dict:
    """Read a YAML or JSON file into a mapping; every problem raises an error naming the file.

    Refused (SchemaError, field ``<file>``/``<top>``): a directory or device (``/dev/null``), an
    unreadable file, more than MAX_FILE_BYTES, bytes that are not UTF-8, invalid YAML/JSON (YAML
    tags that build Python objects included: ``yaml.safe_load``), an empty document, a document that
    is not a mapping, nesting deeper than MAX_DEPTH, self-referencing aliases, and more than
    MAX_NODES values once aliases are expanded. A missing file raises FileNotFoundError naming it.
    """
    path = Path(path)
    src = str(path)
    text = _read_text(path)
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise SchemaError(src, "<file>", "valid YAML/JSON", " ".join(str(e).split())[:300]) from None
    except RecursionError:
        raise SchemaError(src, "<file>", f"nesting at most {MAX_DEPTH} levels deep", "deeper nesting") from None
    if data is None:
        raise SchemaError(src, "<top>", "a mapping", "an empty document")
    if not isinstance(data, dict):
        raise SchemaError(src, "<top>", "a mapping", type(data).__name__)
    _check_shape(data, src)
    return data


def _read_text(path: Path) -> str:
    """The file's text: a regular file (or pipe), at most MAX_FILE_BYTES, UTF-8."""
    src = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as e:
        raise SchemaError(src, "<file>", "a readable file", e.strerror or type(e).__name__) from None
    if stat.S_ISDIR(st.st_mode):
        raise SchemaError(src, "<file>", "a YAML/JSON file", "a directory")
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise SchemaError(src, "<file>", "a regular YAML/JSON file", "a device or special file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise SchemaError(src, "<file>", "a readable file", e.strerror or type(e).__name__) from None
    if len(raw) > MAX_FILE_BYTES:
        raise SchemaError(src, "<file>", f"at most {MAX_FILE_BYTES // 2 ** 20} MiB", "a larger file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SchemaError(src, "<file>", "UTF-8 text",
                          f"byte 0x{raw[e.start]:02x} at offset {e.start} (not UTF-8)") from None


def _check_shape(data: Any, source: str) -> None:
    """Depth, alias cycles and expanded size of a loaded document, without recursion.

    YAML aliases share objects, so sizes are memoised by identity: a "billion laughs" document
    is measured in a few steps, and refused, instead of being expanded by a later consumer.
    """
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        node, done = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        key = id(node)
        children = list(node.keys()) + list(node.values()) if isinstance(node, dict) else node
        containers = [c for c in children if isinstance(c, (dict, list))]
        if done:
            on_path.discard(key)
            size[key] = 1 + len(children) - len(containers) + sum(size[id(c)] for c in containers)
            depth[key] = 1 + max((depth[id(c)] for c in containers), default=0)
            if depth[key] > MAX_DEPTH:
                raise SchemaError(source, "<file>", f"nesting at most {MAX_DEPTH} levels deep", f"{depth[key]} levels")
            if size[key] > MAX_NODES:
                raise SchemaError(source, "<file>", f"at most {MAX_NODES} values (YAML aliases expanded)",
                                  f"more than {MAX_NODES}")
            continue
        if key in size:
            continue
        if key in on_path:
            raise SchemaError(source, "<file>", "a tree of values", "an alias that contains itself (a cycle)")
        if len(on_path) >= MAX_DEPTH:
            raise SchemaError(source, "<file>", f"nesting at most {MAX_DEPTH} levels deep", "deeper nesting")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in containers if id(c) not in size)


def write_mapping(data: dict, path: str | Path) -> Path:
    """Write a mapping as YAML (or JSON when the suffix is .json), creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_mapping(data, "json" if path.suffix == ".json" else "yaml"))
    return path


def dump_mapping(data: dict, fmt: str = "yaml") -> str:
    """The text write_mapping writes: JSON, or YAML with one-line lists of scalars."""
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=100)


class _Dumper(yaml.SafeDumper):
    """Block-style mappings, flow-style lists of scalars (per-layer schedules stay on one line)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)
_Dumper.add_representer(tuple, _represent_list)


def check(cond: bool, source: str | None, field: str, expected: str, found: Any) -> None:
    """Raise SchemaError unless ``cond``; the one-line form validate() methods use."""
    if not cond:
        raise SchemaError(source, field, expected, found)
