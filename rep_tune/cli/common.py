"""Helpers shared by several subcommands: argparse types that check a flag's value, and threads.

The ``type=`` functions below make argparse refuse a bad value before any work, with
``argument --flag: expected ..., found ...`` and exit status 2.
"""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

MAX_THREADS = 1024


def _number(text: str, kind: type) -> float | int:
    try:
        v = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {'an int' if kind is int else 'a number'}, found {text!r}") from None
    if kind is float and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, found {text!r}")
    return v


def int_range(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """argparse type: an int in [low, high] (either bound optional)."""
    def parse(text: str) -> int:
        v = _number(text, int)
        if (low is not None and v < low) or (high is not None and v > high):
            shown = text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"
            raise argparse.ArgumentTypeError(f"expected an int {_bounds(low, high)}, found {shown!r}")
        return v
    parse.__name__ = f"int {_bounds(low, high)}"
    return parse


def float_range(low: float | None = None, high: float | None = None, *, low_open: bool = False) -> Callable[[str], float]:
    """argparse type: a finite float in [low, high] ((low, high] with ``low_open``)."""
    def parse(text: str) -> float:
        v = _number(text, float)
        if (low is not None and (v <= low if low_open else v < low)) or (high is not None and v > high):
            raise argparse.ArgumentTypeError(f"expected a finite number {_bounds(low, high, low_open)}, found {text!r}")
        return v
    parse.__name__ = f"number {_bounds(low, high, low_open)}"
    return parse


def _bounds(low, high, low_open: bool = False) -> str:
    def fmt(v):
        return str(v) if isinstance(v, int) else f"{v:g}"
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{fmt(low)}, {fmt(high)}]"
    if low is not None:
        return f"{'>' if low_open else '>='} {fmt(low)}"
    return f"<= {fmt(high)}" if high is not None else "(any)"


positive_int = int_range(1)
positive_int.__doc__ = "argparse type: an int >= 1 (counts of trials, workers, tasks, epochs, iterations)."
non_negative_int = int_range(0)
non_negative_int.__doc__ = "argparse type: an int >= 0."
finite_float = float_range()
finite_float.__doc__ = "argparse type: a finite number (no nan/inf)."
non_negative_float = float_range(0.0)
non_negative_float.__doc__ = "argparse type: a finite number >= 0 (margins, timeouts where 0 means none)."
positive_float = float_range(0.0, low_open=True)
positive_float.__doc__ = "argparse type: a finite number > 0 (watts, seconds)."
threads_int = int_range(1, MAX_THREADS)


MAX_PATH_CHARS = 4096   # PATH_MAX on Linux


def path_arg(text: str) -> str:
    """argparse type: a file or folder path: not empty, no NUL byte, at most MAX_PATH_CHARS characters."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, found an empty string")
    if "\x00" in text:
        raise argparse.ArgumentTypeError(f"expected a path, found one with a NUL byte: {text[:80]!r}")
    if len(text) > MAX_PATH_CHARS:
        raise argparse.ArgumentTypeError(f"expected a path of at most {MAX_PATH_CHARS} characters, found "
                                         f"{len(text)} ({text[:40]!r}...)")
    return text


path_arg.__name__ = "path"


def torch_device(text: str) -> str:
    """argparse type: a torch device that exists here: ``cpu``, ``cuda``/``cuda:N`` (a GPU torch sees),
    ``mps`` (Apple). Refused before any work: an unknown device type (``tpu:7``), a malformed string,
    ``cuda`` on a machine without a GPU, an index past the GPUs present."""
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, found {text!r}") from None
    if dev.type == "cpu":
        return text
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: torch sees no CUDA GPU on this machine (use cpu)")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {n} CUDA GPU{'s' if n != 1 else ''} "
                                             f"(cuda:0{f'..cuda:{n - 1}' if n > 1 else ''})")
        return text
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise argparse.ArgumentTypeError(f"{text!r}: no Apple MPS device here (use cpu)")
        return text
    raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, found {text!r} (rep-tune trains on CPUs and "
                                     "CUDA GPUs)")


torch_device.__name__ = "device"


def set_overrides(items: list[str]) -> dict[str, object]:
    """``--set KEY=VALUE`` flags (train, search) as {dotted key: value}: each value parsed as YAML the
    way a config file is (duplicate keys refused); a malformed item is a ValueError naming it."""
    import yaml

    from rep_tune.schema import load_yaml, parse_error
    out: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set: expected KEY=VALUE, found {item[:80]!r}")
        try:
            out[key.strip()] = load_yaml(text)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {item[:80]!r}: the value is not valid YAML ({parse_error(e, text)})") from None
        except (ValueError, OverflowError, RecursionError):   # an int past Python's 4300 digits, deep nesting
            raise ValueError(f"--set {item[:80]!r}: the value is not a usable YAML value") from None
    return out


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=threads_int,
                   help="torch CPU threads (default: 1 when the cores are busy, else torch's "
                        "default; oversubscribed OpenMP threads run several times slower)")


def _busy_cores(window_s: float = 0.3) -> float:
    """Cores other work keeps busy *now*: /proc/stat sampled over ``window_s`` (the 1-minute load
    average lags a minute behind, so a run started right after another would think the cores busy)."""
    import time

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v), idle
    try:
        t0, i0 = sample()
        time.sleep(window_s)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]
    total = max(1, t1 - t0)
    return (os.cpu_count() or 1) * (1.0 - (i1 - i0) / total)


def set_threads(requested: int | None) -> int:
    """Set torch's intra-op threads: as requested, else 1 when other work keeps half the cores busy."""
    import torch

    if requested is not None and not 1 <= requested <= MAX_THREADS:
        raise ValueError(f"--threads: expected an int in [1, {MAX_THREADS}], found {requested}")
    if requested:
        n = requested
    else:
        busy = _busy_cores() >= 0.5 * (os.cpu_count() or 1)
        n = 1 if busy else torch.get_num_threads()
    torch.set_num_threads(n)
    return n
