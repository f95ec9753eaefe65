"""Typed dataclass <-> dict conversion with validation errors that name file, field, expected and found.

One mechanism for every YAML/JSON object rep-tune reads (RepConfig, DeviceProfile, Scenario,
search spaces): the dataclass field types are the schema.
"""
from __future__ import annotations

import dataclasses
import json
import json.decoder
import json.scanner
import math
import os
import secrets
import stat
import types
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

MAX_FILE_BYTES = 8 * 2 ** 20    # a config, profile, space or scenario is a few KB; refuse runaway inputs
MAX_DEPTH = 32                  # nesting levels of a mapping file (the deepest real one has 4)
MAX_NODES = 200_000             # values after YAML aliases are expanded (stops "billion laughs")
FIFO_WAIT_S = 5.0               # how long a named pipe given as a file is waited on for a writer
INT_MIN, INT_MAX = -2 ** 63, 2 ** 63 - 1   # an int field holds a 64-bit int (10**400 is a typo, not a value)

NONFINITE_OK = "nonfinite-ok"
AnyFloat = Annotated[float, NONFINITE_OK]
"""A float field that may hold nan/inf. Plain ``float`` fields must be finite."""


class SchemaError(ValueError):
    """Bad input: names the source file, the field path, what was expected and what was found."""

    def __init__(self, source: str | None, field: str, expected: str, found: Any):
        self.source, self.field, self.expected, self.found = source, field, expected, found
        where = f"{source}: " if source else ""
        super().__init__(f"{where}field '{field}': expected {expected}, found {_found(found)}")


MAX_FOUND_CHARS = 300   # a found value is quoted in the message up to this length


def _found(value: Any) -> str:
    """``repr(value)`` for the message, short: huge ints by their digit count, long values cut."""
    if isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
        return repr(short_value(value))
    try:
        text = repr(value)
    except (ValueError, RecursionError):       # an int over Python's digit limit inside a container, a cycle
        return f"<a {type(value).__name__} too large to print>"
    return text if len(text) <= MAX_FOUND_CHARS else text[:MAX_FOUND_CHARS] + "...(cut)"


def short_value(value: Any) -> Any:
    """A huge int as '<int of N digits>' (its repr would run to pages, or fail past 4300 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
        digits = math.floor(math.log10(abs(value))) + 1 if value else 1
        return f"{'-' if value < 0 else ''}<an int of {digits} digits>"
    return value


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
            try:
                return float(value)
            except OverflowError:          # an int beyond float range
                raise SchemaError(source, field, "a number in float range", short_value(value)) from None
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
        if isinstance(value, int) and not INT_MIN <= value <= INT_MAX and (float in args or int in args):
            raise SchemaError(source, field, "a number in the 64-bit range" + (" or null" if type(None) in args else ""),
                              short_value(value))
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
        if not INT_MIN <= value <= INT_MAX:
            raise SchemaError(source, field, "an int in the 64-bit range", short_value(value))
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(source, field, "number", value)
        try:
            out = float(value)
        except OverflowError:              # an int beyond float range
            raise SchemaError(source, field, "a finite number", short_value(value)) from None
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
        try:
            concrete = dispatch(data, source, prefix)
        except (TypeError, KeyError) as e:   # e.g. an unhashable tag (a list where a name belongs)
            bad = next((k for k, v in data.items() if isinstance(v, (dict, list))), None)
            if bad is not None:
                raise SchemaError(source, _join(prefix, str(bad)), "a name (string)", short_value(data[bad])) from None
            raise SchemaError(source, prefix or "<top>", f"a mapping for {cls.__name__}",
                              f"{type(e).__name__}: {e}") from None
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


class Document:
    """A dataclass that is a whole YAML/JSON document (a config, a device profile, a scenario):
    its plain-data form, its checked construction from one, and its file. Subclasses add ``load``
    (each resolves its paths its own way)."""

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls: type[T], data: dict, source: str | None = None) -> T:
        """The document from plain data; errors name ``source`` and the field (``schema.from_dict``)."""
        return from_dict(cls, data, source=source)

    def save(self, path: str | Path) -> Path:
        return write_mapping(self.to_dict(), path)


def read_mapping(path: str | Path) -> dict:
    """Read a YAML or JSON file into a mapping; every problem raises an error naming the file.

    Refused (SchemaError, field ``<file>``/``<top>``): a directory or device (``/dev/null``), an
    unreadable file, more than MAX_FILE_BYTES, bytes that are not UTF-8, invalid YAML/JSON (YAML
    tags that build Python objects included: ``yaml.safe_load``), a key given twice in one mapping
    (the last one would silently win), an empty document, a document that is not a mapping, nesting
    deeper than MAX_DEPTH, self-referencing aliases, and more than MAX_NODES values once aliases are
    expanded. A parse error names the line and column, never a line of the file's content. A missing
    file raises FileNotFoundError naming it.
    """
    path = Path(path)
    src = str(path)
    text = _read_text(path)
    try:
        data = load_json(text) if path.suffix == ".json" else load_yaml(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise SchemaError(src, "<file>", "valid YAML/JSON", parse_error(e, text)) from None
    except RecursionError:
        raise SchemaError(src, "<file>", f"nesting at most {MAX_DEPTH} levels deep", "deeper nesting") from None
    except (ValueError, OverflowError) as e:     # e.g. an int literal over Python's 4300-digit limit
        found = "a number with thousands of digits" if "integer string conversion" in str(e) else _one_line(str(e), 120)
        raise SchemaError(src, "<file>", "valid YAML/JSON", found) from None
    if data is None:
        raise SchemaError(src, "<top>", "a mapping", "an empty document")
    if not isinstance(data, dict):
        raise SchemaError(src, "<top>", "a mapping", type(data).__name__)
    _check_shape(data, src)
    return data


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (SafeLoader keeps the last).

    Keys brought in by a merge (``<<: *base``) may be overridden, as YAML intends; two explicit
    keys of one mapping may not.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:          # an unhashable key: SafeLoader's own error follows
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found duplicate key {_found(key)[:80]} (each key once per mapping)", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (UniqueKeyLoader)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def _json_object(s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo=None):
    """json's object parser, refusing a key given twice in one object (json keeps the last)."""
    s, end = s_and_end
    pairs, new_end = json.decoder.JSONObject(s_and_end, strict, scan_once, None, list, memo)
    seen: set = set()
    for key, _ in pairs:
        if key in seen:
            raise json.JSONDecodeError(f"duplicate key {key[:80]!r} in the object starting here "
                                       "(each key once per object)", s, end - 1)
        seen.add(key)
    return (object_pairs_hook(pairs) if object_pairs_hook else dict(pairs)), new_end


class UniqueKeyDecoder(json.JSONDecoder):
    """``json.JSONDecoder`` that refuses duplicate keys, naming the object's line and column."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.parse_object = _json_object
        self.scan_once = json.scanner.py_make_scanner(self)   # the C scanner ignores parse_object


class _Duplicate(Exception):
    pass


def _unique_pairs(pairs: list) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Duplicate()
    return out


def load_json(text: str) -> Any:
    """``json.loads`` that refuses duplicate keys: the C parser finds them, UniqueKeyDecoder says where."""
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except _Duplicate:
        return json.loads(text, cls=UniqueKeyDecoder)     # raises JSONDecodeError at the object


def parse_error(e: BaseException, text: str | None = None) -> str:
    """A YAML/JSON parse error as 'problem at line L, column C': no line of the file is quoted."""
    if isinstance(e, json.JSONDecodeError):
        return f"{e.msg} at line {e.lineno}, column {e.colno}"
    if isinstance(e, yaml.reader.ReaderError):
        where = _line_col(text, e.position) if text is not None else f"position {e.position}"
        code = ord(e.character) if isinstance(e.character, str) else e.character
        what = (f"character #x{code:04x}" if e.encoding == "unicode" else f"byte #x{code:02x}") \
            if isinstance(code, int) else "character"
        return f"unacceptable {what} ({e.reason}) at {where}"
    if isinstance(e, yaml.MarkedYAMLError):
        parts = []
        for msg, mark in ((e.problem, e.problem_mark), (e.context, e.context_mark)):
            if msg:
                parts.append(f"{_one_line(msg)}{_at(mark)}")
        return "; ".join(parts) or type(e).__name__
    return _one_line(str(e).split("\n")[0])


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _at(mark: Any) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _line_col(text: str, position: int) -> str:
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return f"line {line}, column {column}"


def regular_file(path: Path, what: str, error: type[Exception] = ValueError) -> os.stat_result:
    """``os.stat`` of a file that must be a regular one (a FIFO would block a read forever, a device
    never ends). FileNotFoundError when it is absent; ``error`` naming the file and ``what`` it should
    be when it cannot be read or is a directory or special file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as e:
        raise error(f"{path}: cannot read this {what}: {e.strerror or type(e).__name__}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: cannot read this {what}: found "
                    f"{'a directory' if stat.S_ISDIR(st.st_mode) else 'a special file, not a regular file'}")
    return st


def _read_text(path: Path) -> str:
    """The file's text: a regular file (or a pipe, waited on at most FIFO_WAIT_S for a writer), at most
    MAX_FILE_BYTES, UTF-8."""
    src = str(path)
    if "\x00" in src:
        raise SchemaError(repr(src), "<file>", "a path without NUL bytes", "a NUL byte")
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
        # O_NONBLOCK: opening a FIFO nobody writes to would block forever. A pipe (``--config <(...)``) is
        # read once a writer has written or closed, waiting at most FIFO_WAIT_S for one to appear.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with open(fd, "rb") as f:
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
                raise SchemaError(src, "<file>", "a regular YAML/JSON file", "a device or special file")
            if stat.S_ISFIFO(mode) and not _writer_within(fd, FIFO_WAIT_S):
                raise SchemaError(src, "<file>", f"a pipe that is written to (waited {FIFO_WAIT_S:g} s)",
                                  "a named pipe nobody writes to")
            os.set_blocking(fd, True)
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


def _writer_within(fd: int, seconds: float) -> bool:
    """Whether a pipe opened for reading (non-blocking) gets data or a writer's close within ``seconds``.

    Linux reports POLLHUP on such a reader only after a writer has come and gone, so the poll waits
    for a real writer rather than returning at once on an empty pipe.
    """
    import select
    if not hasattr(select, "poll"):
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    return bool(poller.poll(int(seconds * 1000)))


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
    """Write a mapping as YAML (or JSON when the suffix is .json), creating parent folders.

    Atomic and link-safe (``atomic_write_text``): a symlink at ``path`` is replaced, never followed.
    """
    return atomic_write_text(path, dump_mapping(data, "json" if Path(path).suffix == ".json" else "yaml"))


def atomic_write_text(path: str | Path, text: str, *, newline: str | None = None) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and link-safely: see ``atomic_write_bytes``.

    ``newline`` is ``open``'s: None or "" write "\n" as is (POSIX), another value replaces it.
    """
    if newline not in (None, ""):
        text = text.replace("\n", newline)
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a new file in the same folder, then ``os.replace`` it.

    Every output of a run (run.yaml, trials.csv, the Pareto CSV/PNG, confirm.csv, exports, Tune's
    checkpoints) goes through here, so:
    - a reader never sees half a file, and a kill or a full disk mid-write leaves the previous file;
    - a symlink (or any file) at ``path`` is replaced by the new file rather than followed: a link
      planted at an output's name cannot redirect the write outside the run folder.
    The temporary file is created with O_EXCL|O_NOFOLLOW (mode 0666 less the umask, as ``open`` does)
    and removed on failure. ``path`` being a directory raises IsADirectoryError naming it; other
    OS errors name ``path``, never the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir() and not path.is_symlink():
        raise IsADirectoryError(21, "is a directory, not a file", str(path))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
        except OSError as e:               # name the file being written, not the temporary one
            raise type(e)(e.errno, f"cannot write here ({e.strerror})", str(path)) from None
    else:
        raise FileExistsError(17, "cannot create a temporary file next to it", str(path))
    try:
        with open(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.filename == str(tmp):
            raise type(e)(e.errno, e.strerror, str(path)) from None
        raise
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
