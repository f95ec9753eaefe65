"""Fuzz suite: malformed configs, profiles, search spaces, scenarios, checkpoints and flags.

Every case is generated here (no committed fixtures) and run in-process through
``rep_tune.cli.main(argv)``. Each must end with exit status 2 and a message naming the file or
flag, with no traceback, and none may be accepted. "Accepted" means the command returned 0/1,
or real work began: the first training step (``runtime.learner.train_step``) or a device
measurement (``profiler.device_profile.profile_device``) is replaced by a tripwire that stops
the run, so an accepted input costs a second, not a training.

Cases that need a fix in a file this suite's author does not own are marked
``xfail(strict=True)`` with the owner and the change: they turn into failures (XPASS) once fixed,
so the marks must then be removed. ``python tests/test_fuzz.py`` prints the counts (cases, exit 2,
exit 70, accepted, hangs; ``-v`` one line per case).

Hostile inputs (``HOSTILE_CASES``, issue 19): paths through ``--set`` into values, ints past the
64-bit range (``10**400``) and past Python's 4300 digits, devices that do not exist here, duplicate
YAML/JSON keys, parse errors that must not quote the file, data paths that do not exist, pickles and
checkpoints whose claimed sizes the file cannot back (``bytearray(4e9)``, a 4 TiB broadcast view, a
zip bomb), IDX headers and gzip streams that lie, image folders with symlink loops and FIFOs. A case
may name text that must *not* appear (``absent``: torch's ``weights_only=False`` advice, a secret
on the line a parse error points at). Every case runs under a hang guard (``CASE_TIMEOUT_S``, a
SIGALRM timer): a hang is counted and fails the case instead of hanging the suite. The wait for a
writer on a named pipe given as a YAML file (``rep_tune.schema.FIFO_WAIT_S``, 5 s) is shortened to
``FIFO_WAIT_S`` here so that the pipe cases stay fast.
"""
from __future__ import annotations

import contextlib
import copy
import gzip
import io
import json
import logging
import os
import pickle
import signal
import struct
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from unittest import mock

import numpy as np
import pytest
import yaml

from rep_tune.cli import main
from rep_tune.config import preset
from rep_tune.data.scenario import Scenario
from rep_tune.device import PROFILES_DIR
from rep_tune.search.space import SPACES_DIR

DELETE = object()


class WorkStarted(BaseException):
    """Raised by the tripwires: the input was accepted and real work began."""


def _tripwire(*args: Any, **kwargs: Any) -> None:
    raise WorkStarted()


# ---- generated inputs ---------------------------------------------------------------------------------

def _set(data: dict, dotted: str, value: Any) -> dict:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return data


def _with(base: dict, changes: dict[str, Any]) -> dict:
    data = copy.deepcopy(base)
    for k, v in changes.items():
        _set(data, k, v)
    return data


def config_data(**changes: Any) -> dict:
    return _with(preset("paper", "l2p").to_dict(), {k.replace("__", "."): v for k, v in changes.items()})


def profile_data(**changes: Any) -> dict:
    base = yaml.safe_load((PROFILES_DIR / "jetson_orin.yaml").read_text())
    return _with(base, {k.replace("__", "."): v for k, v in changes.items()})


CALIBRATION = {"measured_on": "test", "dtype": "fp16", "efficiency": {"matmul": 0.3, "attention": 0.2, "elementwise": 0.4},
               "overhead_ms": 1.0, "launch_ms": 0.01, "memory_overhead_mb": 10.0, "runs": [], "fit_error": {}}
RUN = {"batch": 4, "tokens": 65, "embed_dim": 96, "num_heads": 3, "blocks": 2, "fwd_ms": 1.0, "fwd_bwd_ms": 3.0}


def space_data(extra_params: dict | None = None, **top: Any) -> dict:
    base = yaml.safe_load((SPACES_DIR / "l2p.yaml").read_text())
    base["params"].update(extra_params or {})
    base.update(top)
    return base


def scenario_data(**changes: Any) -> dict:
    return _with(Scenario(dataset="digits").to_dict(), changes)


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


BILLION_LAUGHS = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else ', '.join(['lol'] * 9)}]\n"
                         for i in range(8))


def write(tmp: Path, name: str, content: Any) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    elif path.suffix == ".json":
        path.write_text(json.dumps(content))
    else:
        path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def cifar(tmp: Path, classes: int = 5) -> Path:
    folder = tmp / "cifar" / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n in (("train", 10), ("test", 5)):
        d = {"data": np.zeros((n, 3072), np.uint8), "fine_labels": [i % classes for i in range(n)]}
        (folder / split).write_bytes(pickle.dumps(d))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(classes)]}))
    return folder.parent


def fashion_with_truncated_images(tmp: Path) -> Path:
    """All four Fashion-MNIST IDX files, the training images' header cut short."""
    root = tmp / "fm"
    for split, n in (("train", 20), ("t10k", 10)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        write(tmp, f"fm/{split}-labels-idx1-ubyte", bytes([0, 0, 8, 1]) + struct.pack(">I", n) + labels.tobytes())
        write(tmp, f"fm/{split}-images-idx3-ubyte", bytes([0, 0, 8, 3]) + struct.pack(">III", n, 28, 28) + bytes(n * 784))
    write(tmp, "fm/train-images-idx3-ubyte", b"\x00\x00\x08\x03\x00")
    return root


def safetensors_bytes(header: dict | None, data: bytes = b"", length: int | None = None) -> bytes:
    text = json.dumps(header).encode() if header is not None else b""
    return struct.pack("<Q", len(text) if length is None else length) + text + data


class WritesFile:
    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('pwned')",)


# ---- commands -------------------------------------------------------------------------------------------

def cost_config(path: Path) -> list[str]:
    return ["cost", "--config", str(path), "--device", "jetson_orin"]


def cost_device(path: Path | str) -> list[str]:
    return ["cost", "--device", str(path)]


def search(tmp: Path, *extra: str) -> list[str]:
    return ["search", "--device", "jetson_orin", "--run-dir", str(tmp / "run"), "--n-trials", "1", "--timeout", "60",
            "--no-progress", "--iters-per-task", "1", "--threads", "1", "--no-confirm", *extra]


def export_scenario(tmp: Path, path: Path) -> list[str]:
    cfg = write(tmp, "valid.yaml", config_data())
    return ["export", "--config", str(cfg), "--format", "rep-argparse", "--scenario", str(path)]


def train(tmp: Path, *extra: str) -> list[str]:
    return ["train", "--out", str(tmp / "out"), "--quiet", "--threads", "1", "--set", "training.epochs=1",
            "--set", "training.iters_per_task=1", *extra]


def train_checkpoint(tmp: Path, ckpt: Path, section: str = "backbone") -> list[str]:
    cfg = write(tmp, "ckpt_config.yaml", config_data(**{f"{section}__checkpoint": str(ckpt)}))
    return train(tmp, "--config", str(cfg), "--tasks", "2")


# ---- cases ----------------------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    kind: str                                           # config | profile | space | scenario | checkpoint | flags
    build: Callable[[Path], tuple[list[str], str]]      # tmp -> (argv, text the message must contain)
    owner: str | None = None                            # xfail reason while a fix in another file is pending
    not_written: Callable[[Path], Path] | None = None   # a file the input would create if it ran code
    absent: str | None = None                           # text the output must not contain (advice, file content)


def _file_case(kind: str, id: str, name: str, content: Any, command: Callable[[Path, Path], list[str]],
               owner: str | None = None) -> Case:
    def build(tmp: Path) -> tuple[list[str], str]:
        path = write(tmp, name, content(tmp) if callable(content) else content)
        return command(tmp, path), str(path)
    return Case(id, kind, build, owner)


def _special_case(kind: str, id: str, target: Callable[[Path], Path | str], command, needle=None) -> Case:
    def build(tmp: Path) -> tuple[list[str], str]:
        t = target(tmp)
        return command(tmp, t), str(needle or t)
    return Case(id, kind, build)




def _dir(tmp: Path) -> Path:
    d = tmp / "a_folder.yaml"
    d.mkdir(exist_ok=True)
    return d


C = lambda tmp, p: cost_config(p)           # noqa: E731
P = lambda tmp, p: cost_device(p)           # noqa: E731
S = lambda tmp, p: search(tmp, "--space", str(p))   # noqa: E731
N = lambda tmp, p: export_scenario(tmp, p)  # noqa: E731
NT = lambda tmp, p: train(tmp, "--scenario", str(p))   # noqa: E731

CASES: list[Case] = [
    # -- config (rep-tune cost --config) --
    _special_case("config", "config-directory", _dir, C),
    _special_case("config", "config-dev-null", lambda tmp: "/dev/null", C),
    _file_case("config", "config-empty", "c.yaml", "", C),
    _file_case("config", "config-comment-only", "c.yaml", "# nothing here\n", C),
    _file_case("config", "config-not-utf8", "c.yaml", "name: caf\xe9\n".encode("latin1"), C),
    _file_case("config", "config-nested-2000", "c.yaml", f"target: {nested(2000)}\n", C),
    _file_case("config", "config-nested-40", "c.yaml", f"target: {nested(40)}\n", C),
    _file_case("config", "config-alias-cycle", "c.yaml", "provenance: &a {self: *a}\n", C),
    _file_case("config", "config-billion-laughs", "c.yaml", "expected:\n" + "".join("  " + line + "\n" for line in BILLION_LAUGHS.splitlines()), C),
    _file_case("config", "config-yaml-syntax", "c.yaml", "training: {lr: [\n", C),
    _file_case("config", "config-top-list", "c.yaml", "- 1\n- 2\n", C),
    _file_case("config", "config-python-tag", "c.yaml",
               lambda tmp: f"name: !!python/object/apply:os.system ['touch {tmp / 'pwned'}']\n", C),
    _file_case("config", "config-unknown-key", "c.yaml", config_data(trainnig={"lr": 0.1}), C),
    _file_case("config", "config-lr-inf", "c.yaml", config_data(training__lr=float("inf")), C),
    _file_case("config", "config-lr-nan", "c.yaml", config_data(training__lr=float("nan")), C),
    _file_case("config", "config-lr-1e400", "c.yaml", "training: {lr: 1.0e+400}\n", C),
    _file_case("config", "config-lr-negative", "c.yaml", config_data(training__lr=-0.1), C),
    _file_case("config", "config-lr-string", "c.yaml", config_data(training__lr="fast"), C),
    _file_case("config", "config-gamma-inf", "c.yaml", config_data(ald__gamma=float("inf")), C),
    _file_case("config", "config-theta-above-1", "c.yaml", config_data(ald__theta_min=1.5), C),
    _file_case("config", "config-tau-float", "c.yaml", config_data(ald__tau=2.5), C),
    _file_case("config", "config-batch-0", "c.yaml", config_data(training__batch_size=0), C),
    _file_case("config", "config-eval-batch-0", "c.yaml", config_data(training__eval_batch_size=0), C),
    _file_case("config", "config-eval-batch-negative", "c.yaml", config_data(training__eval_batch_size=-3), C),
    _file_case("config", "config-top-k-above-pool", "c.yaml", config_data(prompt__top_k=50), C),
    _file_case("config", "config-clip-minus-inf", "c.yaml", config_data(training__clip_grad=float("-inf")), C),
    _file_case("config", "config-pull-nan", "c.yaml", config_data(prompt__pull_coeff=float("nan")), C),
    _file_case("config", "config-bogus-backbone", "c.yaml", config_data(backbone__name="vit_nonexistent_patch9"), C),
    _file_case("config", "config-bogus-surrogate", "c.yaml", config_data(selection__surrogate="resnet50"), C),
    _file_case("config", "config-bogus-optimizer", "c.yaml", config_data(training__optimizer="lion"), C),
    _file_case("config", "config-img-size-0", "c.yaml", config_data(backbone__img_size=0), C),
    _file_case("config", "config-merge-negative", "c.yaml", config_data(atom__merge=[-1] * 12), C),
    _file_case("config", "config-version-99", "c.yaml", config_data(version=99), C),
    _file_case("config", "config-int-keys", "c.yaml", "1: a\nname: x\n2: b\n", C),
    _file_case("config", "config-json-nan", "c.json", '{"training": {"clip_grad": NaN}}', C),
    _file_case("config", "config-huge-file", "c.yaml", lambda tmp: "#" * (9 * 2 ** 20) + "\nname: x\n", C),

    # -- device profile (rep-tune cost --device) --
    _file_case("profile", "profile-no-name", "p.yaml", profile_data(name=DELETE), P),
    _file_case("profile", "profile-no-kind", "p.yaml", profile_data(kind=DELETE), P),
    _file_case("profile", "profile-empty", "p.yaml", "", P),
    _special_case("profile", "profile-dev-null", lambda tmp: "/dev/null", P),
    _special_case("profile", "profile-directory", _dir, P),
    _special_case("profile", "profile-unknown-name", lambda tmp: "no_such_profile", P),
    _file_case("profile", "profile-empty-name", "p.yaml", profile_data(name=""), P),
    _file_case("profile", "profile-bad-kind", "p.yaml", profile_data(kind="tpu"), P),
    _file_case("profile", "profile-not-utf8", "p.yaml", b"name: \xff\xfe\nkind: gpu\n", P),
    _file_case("profile", "profile-nested", "p.yaml", f"identity: {{a: {nested(100)}}}\n", P),
    _file_case("profile", "profile-efficiency-negative", "p.yaml",
               profile_data(calibration=_with(CALIBRATION, {"efficiency.matmul": -0.5})), P),
    _file_case("profile", "profile-efficiency-zero", "p.yaml",
               profile_data(calibration=_with(CALIBRATION, {"efficiency.attention": 0})), P),
    _file_case("profile", "profile-efficiency-inf", "p.yaml",
               profile_data(calibration=_with(CALIBRATION, {"efficiency.elementwise": float("inf")})), P),
    _file_case("profile", "profile-overhead-negative", "p.yaml",
               profile_data(calibration=_with(CALIBRATION, {"overhead_ms": -1.0})), P),
    _file_case("profile", "profile-launch-nan", "p.yaml",
               profile_data(calibration=_with(CALIBRATION, {"launch_ms": float("nan")})), P),
    _file_case("profile", "profile-calibration-run-batch-0", "p.yaml",
               profile_data(calibration=_with(CALIBRATION, {"runs": [dict(RUN, batch=0)]})), P),
    _file_case("profile", "profile-power-negative", "p.yaml", profile_data(spec__power_w=-10.0), P),
    _file_case("profile", "profile-idle-power-negative", "p.yaml", profile_data(spec__idle_power_w=-1.0), P),
    _file_case("profile", "profile-peak-inf", "p.yaml", profile_data(spec__peak_tflops__fp16=float("inf")), P),
    _file_case("profile", "profile-peak-zero", "p.yaml", profile_data(spec__peak_tflops__fp32=0), P),
    _file_case("profile", "profile-peak-empty", "p.yaml", profile_data(spec__peak_tflops={}), P),
    _file_case("profile", "profile-bandwidth-inf", "p.yaml", profile_data(spec__memory_bandwidth_gbs=float("inf")), P),
    _file_case("profile", "profile-bandwidth-negative", "p.yaml", profile_data(spec__memory_bandwidth_gbs=-1.0), P),
    _file_case("profile", "profile-usable-memory-negative", "p.yaml", profile_data(spec__usable_memory_mb=-1.0), P),
    _file_case("profile", "profile-budget-negative", "p.yaml", profile_data(budgets__latency_ms=-5.0), P),
    _file_case("profile", "profile-budget-nan", "p.yaml", profile_data(budgets__latency_ms=float("nan")), P),
    _file_case("profile", "profile-budget-inf", "p.yaml", profile_data(budgets__energy_j=float("inf")), P),
    _file_case("profile", "profile-budget-batch-0", "p.yaml", profile_data(budgets__batch_size=0), P),
    _file_case("profile", "profile-budget-unknown-metric", "p.yaml", profile_data(budgets__throughput=5.0), P),
    _file_case("profile", "profile-dtype-missing", "p.yaml", profile_data(dtype="int4"), P),
    _file_case("profile", "profile-workload-img-0", "p.yaml", profile_data(workload={"img_size": 0}), P),

    # -- search space (rep-tune search --space) --
    _file_case("space", "space-batch-low-0", "s.yaml",
               space_data({"training.batch_size": {"type": "int", "low": 0, "high": 32}}), S),
    _file_case("space", "space-high-inf", "s.yaml",
               space_data({"training.lr": {"type": "float", "low": 0.001, "high": float("inf"), "log": True}}), S),
    _file_case("space", "space-bogus-choice", "s.yaml",
               space_data({"training.optimizer": {"type": "categorical", "choices": ["adam", "bogus"]}}), S),
    _file_case("space", "space-negative-gamma", "s.yaml",
               space_data({"ald.gamma": {"type": "float", "low": -1.0, "high": 0.1}}), S),
    _file_case("space", "space-unknown-key", "s.yaml", space_data(colour="blue"), S),
    _file_case("space", "space-bad-type", "s.yaml", space_data({"prompt.length": {"type": "foo", "low": 1, "high": 2}}), S),
    _file_case("space", "space-low-above-high", "s.yaml", space_data({"prompt.length": {"type": "int", "low": 9, "high": 2}}), S),
    _file_case("space", "space-log-low-0", "s.yaml",
               space_data({"ald.gamma": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}), S),
    _file_case("space", "space-low-nan", "s.yaml", space_data({"ald.gamma": {"type": "float", "low": float("nan"), "high": 0.1}}), S),
    _file_case("space", "space-not-a-field", "s.yaml", space_data({"prompt.bogus": {"type": "int", "low": 1, "high": 2}}), S),
    _file_case("space", "space-params-list", "s.yaml", space_data(**{"params": [1, 2]}), S),
    _special_case("space", "space-directory", _dir, S),
    _file_case("space", "space-empty", "s.yaml", "", S),
    _file_case("space", "space-not-utf8", "s.yaml", b"name: \xc3\x28\n", S),
    _file_case("space", "space-nested", "s.yaml", f"fixed: {{a: {nested(300)}}}\n", S),

    # -- scenario (export --scenario: no data needed; train --scenario: the data is looked at) --
    _file_case("scenario", "scenario-tasks-0", "sc.yaml", scenario_data(n_tasks=0), N),
    _file_case("scenario", "scenario-tasks-11-digits", "sc.yaml", scenario_data(n_tasks=11), N),
    _file_case("scenario", "scenario-tasks-101-cifar", "sc.yaml", scenario_data(dataset="cifar100", n_tasks=101), N),
    _file_case("scenario", "scenario-test-fraction-1.5", "sc.yaml", scenario_data(test_fraction=1.5), N),
    _file_case("scenario", "scenario-test-fraction-nan", "sc.yaml", scenario_data(test_fraction=float("nan")), N),
    _file_case("scenario", "scenario-bad-dataset", "sc.yaml", scenario_data(dataset="mnist"), N),
    _file_case("scenario", "scenario-class-order-seed-negative", "sc.yaml", scenario_data(class_order_seed=-5), N),
    _file_case("scenario", "scenario-seed-negative", "sc.yaml", scenario_data(seed=-1), N),
    _file_case("scenario", "scenario-image-size-0", "sc.yaml", scenario_data(image_size=0), N),
    _file_case("scenario", "scenario-max-per-class-0", "sc.yaml", scenario_data(max_per_class=0), N),
    _file_case("scenario", "scenario-eval-per-class-0", "sc.yaml", scenario_data(eval_per_class=0), N),
    _file_case("scenario", "scenario-unknown-key", "sc.yaml", scenario_data(tasks=3), N),
    _file_case("scenario", "scenario-empty", "sc.yaml", "", N),
    _special_case("scenario", "scenario-directory", _dir, N),
    _file_case("scenario", "scenario-train-tasks-11", "sc.yaml", scenario_data(n_tasks=11), NT),
    Case("scenario-train-missing-data", "scenario", lambda tmp: (NT(tmp, write(tmp, "sc.yaml", scenario_data(
        dataset="cifar100", data_path=str(tmp / "nowhere")))), str(tmp / "nowhere"))),
    Case("scenario-train-more-tasks-than-classes", "scenario", lambda tmp: (NT(tmp, write(tmp, "sc.yaml", scenario_data(
        dataset="cifar100", data_path=str(cifar(tmp)), n_tasks=6))), str(tmp / "sc.yaml"))),
    Case("scenario-train-folder-without-path", "scenario", lambda tmp: (NT(tmp, write(tmp, "sc.yaml", scenario_data(
        dataset="folder"))), str(tmp / "sc.yaml"))),
    Case("scenario-train-truncated-idx", "scenario", lambda tmp: (NT(tmp, write(tmp, "sc.yaml", scenario_data(
        dataset="fashion-mnist", data_path=str(fashion_with_truncated_images(tmp))))),
        str(tmp / "fm" / "train-images-idx3-ubyte"))),
    Case("scenario-search-missing-data", "scenario", lambda tmp: (search(tmp, "--scenario", str(write(
        tmp, "sc.yaml", scenario_data(dataset="cifar100", data_path=str(tmp / "nowhere"))))), str(tmp / "sc.yaml"))),
    Case("scenario-search-more-tasks-than-classes", "scenario", lambda tmp: (search(tmp, "--scenario", str(write(
        tmp, "sc.yaml", scenario_data(dataset="cifar100", data_path=str(cifar(tmp)), n_tasks=6)))), str(tmp / "sc.yaml"))),

    # -- checkpoints (rep-tune train --config with backbone/selection.checkpoint) --
    Case("checkpoint-safetensors-header-too-large", "checkpoint", lambda tmp: (train_checkpoint(
        tmp, write(tmp, "w.safetensors", safetensors_bytes(None, b"{}", length=2 ** 60))), str(tmp / "w.safetensors"))),
    Case("checkpoint-safetensors-truncated", "checkpoint", lambda tmp: (train_checkpoint(
        tmp, write(tmp, "w.safetensors", b"\x10\x00")), str(tmp / "w.safetensors"))),
    Case("checkpoint-safetensors-bad-extent", "checkpoint", lambda tmp: (train_checkpoint(
        tmp, write(tmp, "w.safetensors", safetensors_bytes({"cls_token": {"dtype": "F32", "shape": [1, 1, 96],
                                                                          "data_offsets": [0, 384]}}, b"\0" * 8))),
        str(tmp / "w.safetensors"))),
    Case("checkpoint-pth-garbage", "checkpoint", lambda tmp: (train_checkpoint(
        tmp, write(tmp, "w.pth", b"this is not a checkpoint")), str(tmp / "w.pth"))),
    Case("checkpoint-pth-code", "checkpoint", lambda tmp: (train_checkpoint(
        tmp, write(tmp, "w.pth", pickle.dumps({"w": WritesFile(tmp / "pwned")}))), str(tmp / "w.pth")),
        not_written=lambda tmp: tmp / "pwned"),
    Case("checkpoint-surrogate-garbage", "checkpoint", lambda tmp: (train_checkpoint(
        tmp, write(tmp, "s.safetensors", b"\xff" * 64), section="selection"), str(tmp / "s.safetensors"))),
    Case("checkpoint-missing", "checkpoint", lambda tmp: (train_checkpoint(tmp, tmp / "none.safetensors"),
                                                          str(tmp / "none.safetensors"))),
    Case("checkpoint-directory", "checkpoint", lambda tmp: (train_checkpoint(tmp, _dir(tmp)), str(tmp / "a_folder.yaml"))),

    # -- flags --
    Case("flag-train-threads-negative", "flags", lambda tmp: (train(tmp, "--threads", "-2"), "--threads")),
    Case("flag-train-threads-zero", "flags", lambda tmp: (train(tmp, "--threads", "0"), "--threads")),
    Case("flag-train-threads-huge", "flags", lambda tmp: (train(tmp, "--threads", "100000"), "--threads")),
    Case("flag-search-threads-negative", "flags", lambda tmp: (search(tmp, "--threads", "-2"), "--threads")),
    Case("flag-train-set-inf", "flags", lambda tmp: (train(tmp, "--set", "training.lr=.inf"), "training.lr")),
    Case("flag-train-set-unknown", "flags", lambda tmp: (train(tmp, "--set", "training.bogus=1"), "training.bogus")),
    Case("flag-train-set-no-equals", "flags", lambda tmp: (train(tmp, "--set", "training.lr"), "--set")),
    Case("flag-train-set-bad-yaml", "flags", lambda tmp: (train(tmp, "--set", "training.lr=["), "--set")),
    Case("flag-train-tasks-0", "flags", lambda tmp: (train(tmp, "--tasks", "0"), "--tasks")),
    Case("flag-train-tasks-11", "flags", lambda tmp: (train(tmp, "--tasks", "11"), "--tasks")),
    Case("flag-train-data-path-missing", "flags", lambda tmp: (train(tmp, "--dataset", "cifar100", "--data-path",
                                                                     str(tmp / "nowhere")), str(tmp / "nowhere"))),
    Case("flag-train-out-is-a-file", "flags", lambda tmp: (
        ["train", "--out", str(write(tmp, "out_file", "x")), "--quiet"], str(tmp / "out_file"))),
    Case("flag-search-n-trials-negative", "flags", lambda tmp: (search(tmp, "--n-trials", "-3"), "--n-trials")),
    Case("flag-search-timeout-negative", "flags", lambda tmp: (search(tmp, "--timeout", "-5"), "--timeout")),
    Case("flag-search-n-workers-0", "flags", lambda tmp: (search(tmp, "--n-workers", "0"), "--n-workers")),
    Case("flag-search-epochs-0", "flags", lambda tmp: (search(tmp, "--epochs", "0"), "--epochs")),
    Case("flag-search-iters-0", "flags", lambda tmp: (search(tmp, "--iters-per-task", "0"), "--iters-per-task")),
    Case("flag-search-margin-nan", "flags", lambda tmp: (search(tmp, "--margin", "nan"), "--margin")),
    Case("flag-search-latency-nanx", "flags", lambda tmp: (search(tmp, "--latency-budget", "nanx"), "--latency-budget")),
    Case("flag-search-latency-infx", "flags", lambda tmp: (search(tmp, "--latency-budget", "infx"), "--latency-budget")),
    Case("flag-search-latency-1e999", "flags", lambda tmp: (search(tmp, "--latency-budget", "1e999"), "--latency-budget")),
    Case("flag-search-memory-unit", "flags", lambda tmp: (search(tmp, "--memory-budget", "5parsecs"), "--memory-budget")),
    Case("flag-search-energy-negative", "flags", lambda tmp: (search(tmp, "--energy-budget=-1x"), "--energy-budget")),
    Case("flag-search-run-dir-is-a-file", "flags", lambda tmp: (
        search(tmp, "--run-dir", str(write(tmp, "run_file", "x"))), str(tmp / "run_file"))),
    Case("flag-search-resume-no-run-yaml", "flags", lambda tmp: (
        ["search", "--resume", str(_dir(tmp)), "--no-progress"], str(tmp / "a_folder.yaml"))),
    Case("flag-search-resume-garbage-run-yaml", "flags", lambda tmp: (
        ["search", "--resume", str(write(tmp, "r/run.yaml", b"\x00\xff garbage").parent), "--no-progress"],
        str(tmp / "r" / "run.yaml"))),
    Case("flag-search-resume-garbage-study", "flags", lambda tmp: (
        ["search", "--resume", str(_garbage_study(tmp)), "--no-progress", "--threads", "1"], str(tmp / "r" / "study.db"))),
    Case("flag-cost-margin-nan", "flags", lambda tmp: (["cost", "--device", "jetson_orin", "--margin", "nan"], "--margin")),
    Case("flag-cost-margin-negative", "flags", lambda tmp: (["cost", "--device", "jetson_orin", "--margin", "-1"], "--margin")),
    Case("flag-cost-t-negative", "flags", lambda tmp: (["cost", "--device", "jetson_orin", "--t", "-1"], "--t")),
    Case("flag-cost-iters-0", "flags", lambda tmp: (["cost", "--device", "jetson_orin", "--iters-per-task", "0"],
                                                    "--iters-per-task")),
    Case("flag-cost-bad-backbone", "flags", lambda tmp: (["cost", "--device", "jetson_orin", "--backbone", "nope"],
                                                         "--backbone")),
    Case("flag-export-out-is-a-folder", "flags", lambda tmp: (
        ["export", "--config", str(write(tmp, "valid.yaml", config_data())), "--format", "yaml", "--out", str(_dir(tmp))],
        "--out")),
    Case("flag-devices-dir-missing", "flags", lambda tmp: (["devices", "--dir", str(tmp / "nowhere")], "--dir")),
    Case("flag-profile-watts-negative", "flags", lambda tmp: (["profile", "--quick", "--watts", "-5", "--out",
                                                                str(tmp / "p.yaml")], "--watts")),
    Case("flag-profile-threads-negative", "flags", lambda tmp: (["profile", "--quick", "--threads", "-2", "--out",
                                                                  str(tmp / "p.yaml")], "--threads")),
    Case("flag-unknown-command", "flags", lambda tmp: (["trian"], "trian")),
]


def _garbage_study(tmp: Path) -> Path:
    run = tmp / "r"
    run.mkdir()
    settings = {"devices": ["jetson_orin"], "n_trials": 1, "timeout": 30.0, "progress": False,
                "overrides": {"training.epochs": 1, "training.iters_per_task": 1}}
    write(tmp, "r/run.yaml", settings)
    (run / "study.db").write_bytes(b"this is not an SQLite database" * 40)
    return run


# ---- hostile inputs (issue 19) ---------------------------------------------------------------------------

HUGE = 10 ** 400                   # past float range and the 64-bit range
DIGITS_5000 = "9" * 5000           # past Python's 4300-digit int parsing limit
SECRET = "hunter2-secret-token"    # on the line a parse error points at: must not be quoted back
BYTEARRAY_4GIB = b"\x80\x02c__builtin__\nbytearray\n\x8a\x05\x00\x00\x00\x00\x01\x85R."   # 35 bytes
BINBYTES8_4GIB = b"\x80\x04\x8e" + struct.pack("<Q", 2 ** 32) + b"abc."
MEMO_2G = b"\x80\x02]r\xff\xff\xff\x7f."    # LONG_BINPUT 2**31 - 1: the C unpickler grows its memo table to it


class NotATensor:
    """A plain class in a .pth: torch's weights-only loader refuses it (and advises weights_only=False)."""


def cifar_with(tmp: Path, name: str, blob: bytes) -> tuple[Path, Path]:
    """A valid 5-class CIFAR-100 folder with one file replaced: (data_path, the replaced file)."""
    root = cifar(tmp)
    target = root / "cifar-100-python" / name
    target.write_bytes(blob)
    return root, target


def cifar_case(id: str, name: str, blob: bytes) -> Case:
    def build(tmp: Path) -> tuple[list[str], str]:
        root, target = cifar_with(tmp, name, blob)
        sc = write(tmp, "sc.yaml", scenario_data(dataset="cifar100", data_path=str(root), n_tasks=2))
        return NT(tmp, sc), str(target)
    return Case(id, "scenario", build)


def fashion_with(tmp: Path, name: str, blob: bytes) -> Path:
    """A valid 20-image Fashion-MNIST folder whose training images are ``blob`` under ``name``."""
    root = fashion_with_truncated_images(tmp)
    (root / "train-images-idx3-ubyte").unlink()
    write(tmp, f"fm/{name}", blob)
    return root


def fashion_case(id: str, name: str, blob: Callable[[], bytes]) -> Case:
    def build(tmp: Path) -> tuple[list[str], str]:
        root = fashion_with(tmp, name, blob())
        sc = write(tmp, "sc.yaml", scenario_data(dataset="fashion-mnist", data_path=str(root), n_tasks=2))
        return NT(tmp, sc), str(root / name)
    return Case(id, "scenario", build)


def idx_gzip_bomb() -> bytes:
    """An IDX header for 20 x 28 x 28 bytes followed by 8 MiB of zeros, gzipped (8 KB)."""
    return gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">III", 20, 28, 28) + bytes(8 * 2 ** 20), 1)


def image_folder_trap(tmp: Path) -> Path:
    """Class folders holding only traps: a symlink loop to the root, a loop to itself, a FIFO named
    x.jpg (opening it blocks forever), a dangling link named y.png. No image to train on."""
    root = tmp / "imgs"
    for c in ("ant", "bee"):
        (root / c).mkdir(parents=True)
        (root / c / "up").symlink_to("..")
        (root / c / "self").symlink_to(".")
        os.mkfifo(root / c / "x.jpg")
        (root / c / "y.png").symlink_to("nowhere.png")
    return root


def folder_case(tmp: Path) -> tuple[list[str], str]:
    root = image_folder_trap(tmp)
    return NT(tmp, write(tmp, "sc.yaml", scenario_data(dataset="folder", data_path=str(root), n_tasks=2))), str(root)


def torch_file(tmp: Path, name: str, make: Callable[[Path], None]) -> Path:
    path = tmp / name
    make(path)
    return path


def pth_expanded(path: Path) -> None:
    """1.5 KB on disk; its one stored float viewed as 2**21 x 2**19: a value check would allocate 4 TiB."""
    import torch
    torch.save({"cls_token": torch.zeros(1).expand(2 ** 21, 2 ** 19)}, path)


def pth_zip_bomb(path: Path) -> None:
    """A zip checkpoint whose storage entry is deflated: 1 KB on disk, 1 MiB declared (torch inflates first)."""
    import torch
    plain = path.with_suffix(".plain")
    torch.save({"cls_token": torch.zeros(4)}, plain)
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data/0"):
                zout.writestr(info.filename, bytes(2 ** 20), compress_type=zipfile.ZIP_DEFLATED)
            else:
                zout.writestr(info, data)
    plain.unlink()


def pth_legacy_huge_storage(path: Path) -> None:
    """The legacy (non-zip) format, its storage claiming 2**60 floats: torch allocates before reading."""
    import torch
    torch.save({"cls_token": torch.zeros(4)}, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes()
    marker = b"cpuq\x06K\x04"
    assert marker in raw, "torch's legacy layout changed: rebuild this case"
    path.write_bytes(raw.replace(marker, b"cpuq\x06\x8a\x08" + struct.pack("<q", 2 ** 60), 1))


def pth_code(path: Path) -> None:
    """torch.save of a payload that runs code when unpickled without restriction (writes ``pwned``)."""
    import torch
    torch.save({"cls_token": torch.zeros(2), "x": WritesFile(path.parent / "pwned")}, path)


def pth_not_a_tensor(path: Path) -> None:
    import torch
    torch.save({"cls_token": NotATensor()}, path)


def ckpt_case(id: str, name: str, make: Callable[[Path], None], section: str = "backbone", absent: str | None = None) -> Case:
    def build(tmp: Path) -> tuple[list[str], str]:
        path = torch_file(tmp, name, make)
        return train_checkpoint(tmp, path, section), str(path)
    return Case(id, "checkpoint", build, absent=absent)


def fifo(tmp: Path, name: str) -> Path:
    path = tmp / name
    os.mkfifo(path)
    return path


def valid_config(tmp: Path) -> Path:
    return write(tmp, "valid.yaml", config_data())


def no_gpu_device() -> str:
    """A CUDA device that is not here: ``cuda`` on a machine without a GPU, else an index past the GPUs."""
    import torch
    return "cuda:4096" if torch.cuda.is_available() else "cuda"


V = lambda tmp, *extra: ["verify", "--config", str(valid_config(tmp)), "--no-progress", "--threads", "1", *extra]  # noqa: E731

HOSTILE_CASES: list[Case] = [
    # -- --set paths into values, huge ints, devices (exit 70 before) --
    Case("set-path-into-string", "flags", lambda tmp: (train(tmp, "--set", "name.x=1"), "name.x")),
    Case("set-path-into-list", "flags", lambda tmp: (train(tmp, "--set", "atom.merge.0=5"), "atom.merge.0")),
    Case("set-path-into-number", "flags", lambda tmp: (train(tmp, "--set", "training.lr.x=5"), "training.lr.x")),
    Case("set-path-into-null", "flags", lambda tmp: (train(tmp, "--set", "target.device=x"), "target.device")),
    Case("set-empty-path-part", "flags", lambda tmp: (train(tmp, "--set", "training..lr=1"), "training..lr")),
    Case("set-path-under-unknown", "flags", lambda tmp: (train(tmp, "--set", "training.bogus.x=1"), "training.bogus")),
    Case("set-int-10e400", "flags", lambda tmp: (train(tmp, "--set", f"training.epochs={HUGE}"), "training.epochs")),
    Case("set-int-5000-digits", "flags", lambda tmp: (train(tmp, "--set", f"training.lr={DIGITS_5000}"), "--set")),
    Case("set-batch-100m", "flags", lambda tmp: (train(tmp, "--set", "training.batch_size=100000000"),
                                                 "training.batch_size")),
    Case("set-method-list", "flags", lambda tmp: (train(tmp, "--set", "prompt.method=[1]"), "prompt.method")),
    Case("set-duplicate-key", "flags", lambda tmp: (train(tmp, "--set", "target={a: 1, a: 2}"), "--set")),
    Case("search-set-bad-yaml", "flags", lambda tmp: (search(tmp, "--set", "training.lr=["), "training.lr")),
    Case("search-set-duplicate-key", "flags", lambda tmp: (search(tmp, "--set", "target={a: 1, a: 2}"), "duplicate")),
    Case("train-device-tpu", "flags", lambda tmp: (train(tmp, "--device", "tpu:7"), "--device")),
    Case("train-device-cuda-absent", "flags", lambda tmp: (train(tmp, "--device", no_gpu_device()), "--device")),
    Case("train-device-empty", "flags", lambda tmp: (train(tmp, "--device", ""), "--device")),
    Case("train-device-meta", "flags", lambda tmp: (train(tmp, "--device", "meta"), "--device")),
    Case("verify-run-on-tpu", "flags", lambda tmp: (V(tmp, "--run-on", "tpu"), "--run-on")),
    Case("verify-run-on-cuda-absent", "flags", lambda tmp: (V(tmp, "--run-on", no_gpu_device()), "--run-on")),
    Case("verify-iters-negative", "flags", lambda tmp: (V(tmp, "--iters", "-1"), "--iters")),
    Case("verify-batch-10e400", "flags", lambda tmp: (V(tmp, "--batch", str(HUGE)), "--batch")),
    Case("cost-t-10e400", "flags", lambda tmp: (["cost", "--device", "jetson_orin", "--t", str(HUGE)], "--t")),
    Case("cost-iters-10e400", "flags", lambda tmp: (["cost", "--device", "jetson_orin", "--iters-per-task", str(HUGE)],
                                                    "--iters-per-task")),
    Case("cost-images-10e400", "flags", lambda tmp: (["cost", "--device", "jetson_orin", "--images-per-task",
                                                      str(HUGE)], "--images-per-task")),
    Case("train-data-path-missing-fashion", "flags", lambda tmp: (train(tmp, "--dataset", "fashion-mnist", "--data-path",
                                                                        str(tmp / "nowhere")), str(tmp / "nowhere"))),
    Case("train-data-path-missing-digits", "flags", lambda tmp: (train(tmp, "--dataset", "digits", "--data-path",
                                                                       str(tmp / "nowhere")), str(tmp / "nowhere"))),
    Case("train-out-nul", "flags", lambda tmp: (["train", "--out", "o\x00x", "--quiet"], "--out")),
    Case("train-config-path-5000", "flags", lambda tmp: (train(tmp, "--config", "x" * 5000), "--config")),
    Case("cost-config-nul", "flags", lambda tmp: (["cost", "--device", "jetson_orin", "--config", "c\x00.yaml"],
                                                  "--config")),

    # -- configs: huge ints, unhashable tags, duplicate keys, parse errors that must not quote the file --
    _file_case("config", "config-epochs-10e400", "c.yaml", f"training: {{epochs: {HUGE}}}\n", C),
    _file_case("config", "config-batch-10e400", "c.yaml", config_data(training__batch_size=HUGE), C),
    _file_case("config", "config-iters-10e400", "c.yaml", config_data(training__iters_per_task=HUGE), C),
    _file_case("config", "config-horizon-10e400", "c.yaml", config_data(ald__horizon=HUGE), C),
    _file_case("config", "config-merge-10e400", "c.yaml", config_data(atom__merge=[HUGE] * 12), C),
    _file_case("config", "config-target-int-10e400", "c.yaml", config_data(target={"x": HUGE}), C),
    _file_case("config", "config-lr-5000-digits", "c.yaml", f"training: {{lr: {DIGITS_5000}}}\n", C),
    _file_case("config", "config-json-5000-digits", "c.json", f'{{"training": {{"lr": {DIGITS_5000}}}}}', C),
    _file_case("config", "config-batch-100m", "c.yaml", config_data(training__batch_size=10 ** 8), C),
    _file_case("config", "config-method-list", "c.yaml", config_data(prompt__method=[]), C),
    _file_case("config", "config-method-mapping", "c.yaml", config_data(prompt__method={"a": 1}), C),
    _file_case("config", "config-target-device-int", "c.yaml", config_data(target={"device": 5}), C),
    _file_case("config", "config-checkpoint-nul", "c.yaml", config_data(backbone__checkpoint="w\x00.pth"), C),
    _file_case("config", "config-duplicate-section", "c.yaml", "training: {lr: 0.1}\nname: x\ntraining: {lr: 0.2}\n", C),
    _file_case("config", "config-duplicate-nested-key", "c.yaml", "training:\n  lr: 0.1\n  lr: 0.2\n", C),
    _file_case("config", "config-duplicate-json-key", "c.json", '{"name": "a", "training": {"lr": 0.1, "lr": 9}}', C),
    Case("config-parse-error-quotes-no-line", "config", lambda tmp: (C(tmp, write(
        tmp, "c.yaml", f"name: x\ntraining: {{lr: {SECRET} ]\n")), str(tmp / "c.yaml")), absent=SECRET),
    Case("config-tab-error-quotes-no-line", "config", lambda tmp: (C(tmp, write(
        tmp, "c.yaml", f"training:\n\tlr: {SECRET}\n")), str(tmp / "c.yaml")), absent=SECRET),
    Case("config-json-error-quotes-no-line", "config", lambda tmp: (C(tmp, write(
        tmp, "c.json", f'{{"name": "x",\n "token": "{SECRET}" "oops"}}')), str(tmp / "c.json")), absent=SECRET),
    _special_case("config", "config-fifo", lambda tmp: fifo(tmp, "c.yaml"), C),

    # -- device profiles --
    _file_case("profile", "profile-budget-10e400", "p.yaml", profile_data(budgets__latency_ms=HUGE), P),
    _file_case("profile", "profile-budget-minus-10e400", "p.yaml", profile_data(budgets__energy_j=-HUGE), P),
    _file_case("profile", "profile-budget-batch-10e400", "p.yaml", profile_data(budgets__batch_size=HUGE), P),
    _file_case("profile", "profile-peak-10e400", "p.yaml", profile_data(spec__peak_tflops__fp16=HUGE), P),
    _file_case("profile", "profile-limits-list", "p.yaml", profile_data(budgets__limits=[1, 2]), P),
    _file_case("profile", "profile-limits-unknown-metric", "p.yaml", profile_data(budgets__limits={"bogus": 1.0}), P),
    _file_case("profile", "profile-duplicate-key", "p.yaml", "name: a\nkind: gpu\nname: b\n", P),
    _special_case("profile", "profile-fifo", lambda tmp: fifo(tmp, "p.yaml"), P),

    # -- search spaces and scenarios --
    _file_case("space", "space-high-10e400", "s.yaml",
               space_data({"training.batch_size": {"type": "int", "low": 1, "high": HUGE}}), S),
    _file_case("space", "space-duplicate-key", "s.yaml", "name: l2p\nversion: 1\nname: x\n", S),
    _file_case("scenario", "scenario-max-per-class-10e400", "sc.yaml", scenario_data(max_per_class=HUGE), N),
    _file_case("scenario", "scenario-duplicate-key", "sc.yaml", "dataset: digits\nn_tasks: 2\nn_tasks: 5\n", N),
    _file_case("scenario", "scenario-data-path-nul", "sc.yaml", scenario_data(data_path="a\x00b"), N),
    Case("scenario-train-digits-missing-data-path", "scenario", lambda tmp: (NT(tmp, write(tmp, "sc.yaml", scenario_data(
        dataset="digits", data_path=str(tmp / "nowhere")))), str(tmp / "nowhere"))),
    Case("scenario-train-fashion-missing-data-path", "scenario", lambda tmp: (NT(tmp, write(tmp, "sc.yaml", scenario_data(
        dataset="fashion-mnist", data_path=str(tmp / "nowhere")))), str(tmp / "nowhere"))),

    # -- data readers: pickles, IDX, image folders --
    cifar_case("cifar-train-bytearray-4gib", "train", BYTEARRAY_4GIB),
    cifar_case("cifar-meta-binbytes8-4gib", "meta", BINBYTES8_4GIB),
    cifar_case("cifar-test-memo-index-2g", "test", MEMO_2G),
    cifar_case("cifar-train-huge-dtype", "train", b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
                                                  b"K\x01\x85U\x03V99\x87R."),
    fashion_case("idx-header-claims-85gb", "train-images-idx3-ubyte",
                 lambda: bytes([0, 0, 8, 3]) + struct.pack(">III", 20, 2 ** 16, 2 ** 16) + bytes(64)),
    fashion_case("idx-gzip-longer-than-header", "train-images-idx3-ubyte.gz", idx_gzip_bomb),
    fashion_case("idx-gzip-header-beyond-deflate", "train-images-idx3-ubyte.gz",
                 lambda: gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">III", 20, 4096, 4096))),
    Case("folder-symlink-loops-and-fifo", "scenario", folder_case),

    # -- checkpoints: sizes the file cannot back, code, special files --
    ckpt_case("pth-broadcast-view-4tib", "w.pth", pth_expanded),
    ckpt_case("pth-zip-bomb", "w.pth", pth_zip_bomb),
    ckpt_case("pth-legacy-storage-2e60", "w.pth", pth_legacy_huge_storage),
    ckpt_case("pth-object-no-advice", "w.pth", pth_not_a_tensor, absent="weights_only"),
    ckpt_case("pth-code-no-advice", "w.pth", lambda p: pth_code(p), absent="weights_only"),
    ckpt_case("pth-fifo", "w.pth", lambda p: os.mkfifo(p)),
    Case("safetensors-claims-4tib", "checkpoint", lambda tmp: (train_checkpoint(tmp, write(tmp, "w.safetensors", safetensors_bytes(
        {"cls_token": {"dtype": "F32", "shape": [2 ** 21, 2 ** 19], "data_offsets": [0, 2 ** 43]}}, b"\0" * 8))),
        str(tmp / "w.safetensors"))),
    Case("safetensors-duplicate-tensor", "checkpoint", lambda tmp: (train_checkpoint(tmp, write(
        tmp, "w.safetensors", struct.pack("<Q", 2 * len(TENSOR_ENTRY) + 3) + b"{" + TENSOR_ENTRY + b"," + TENSOR_ENTRY
        + b"}" + b"\0" * 8)), str(tmp / "w.safetensors"))),
]
TENSOR_ENTRY = b'"cls_token": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}'

CASES += HOSTILE_CASES


# ---- running one case -----------------------------------------------------------------------------------

@dataclass
class Outcome:
    rc: int | None
    text: str
    escaped: BaseException | None = None
    work_started: bool = False
    notes: list[str] = field(default_factory=list)
    hung: bool = False
    seconds: float = 0.0

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.text or \
            (self.escaped is not None and not self.work_started and not self.hung)

    @property
    def accepted(self) -> bool:
        return self.work_started or self.rc in (0, 1)


CASE_TIMEOUT_S = 30.0   # a case is a hang past this (the slowest takes ~3 s on a busy 2-core machine)
FIFO_WAIT_S = 0.3       # rep_tune.schema.FIFO_WAIT_S (5 s) in the suite: how long a writer-less FIFO is waited on


class CaseHang(BaseException):
    """Raised by the hang guard's timer: the case ran past CASE_TIMEOUT_S (a blocking read, a loop)."""


@contextlib.contextmanager
def hang_guard(seconds: float = CASE_TIMEOUT_S):
    """Interrupt the case after ``seconds`` (SIGALRM: a blocking open/read of a FIFO is interrupted too).
    Only in the main thread (signals); elsewhere the case runs unguarded."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def fire(signum, frame):
        raise CaseHang()
    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_case(case: Case, tmp: Path) -> tuple[Outcome, str]:
    """Build the case's inputs under ``tmp`` and run the CLI on them in-process, tripwires armed."""
    argv, needle = case.build(tmp)
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(tmp)
    # log handlers (optuna's) hold the stderr of their creation: point them at the capture too
    handlers = [h for lg in [logging.getLogger(), *map(logging.getLogger, logging.root.manager.loggerDict)]
                for h in getattr(lg, "handlers", []) if isinstance(h, logging.StreamHandler)
                and getattr(h.stream, "name", None) == "<stderr>"]
    streams = [h.setStream(err) for h in handlers]
    start = time.perf_counter()
    try:
        with mock.patch("rep_tune.runtime.learner.train_step", _tripwire), \
                mock.patch("rep_tune.profiler.device_profile.profile_device", _tripwire), \
                mock.patch("rep_tune.schema.FIFO_WAIT_S", FIFO_WAIT_S), \
                contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                with hang_guard():
                    outcome = Outcome(main(argv), "")
            except WorkStarted:
                outcome = Outcome(None, "", work_started=True)
            except CaseHang as e:
                outcome = Outcome(None, "", escaped=e, hung=True)
            except SystemExit as e:            # what the console script would exit with
                outcome = Outcome(e.code if isinstance(e.code, int) else 1, "")
            except BaseException as e:  # noqa: BLE001 - an escaped exception is a traceback in a real run
                outcome = Outcome(None, "", escaped=e)
    finally:
        os.chdir(cwd)
        for h, stream in zip(handlers, streams):
            h.setStream(stream)
    outcome.text = out.getvalue() + err.getvalue()
    outcome.seconds = time.perf_counter() - start
    return outcome, needle


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.owner)]
                                               if c.owner else []) for c in CASES])
def test_malformed_input_is_refused(case: Case, tmp_path: Path) -> None:
    outcome, needle = run_case(case, tmp_path)
    assert not outcome.hung, f"hung: still running after {CASE_TIMEOUT_S} s:\n{outcome.text[-2000:]}"
    assert not outcome.accepted, f"accepted (rc {outcome.rc}, work started {outcome.work_started}):\n{outcome.text[-2000:]}"
    assert not outcome.traceback, f"traceback:\n{outcome.text[-3000:]}\n{outcome.escaped!r}"
    assert outcome.rc == 2, f"exit {outcome.rc}:\n{outcome.text[-2000:]}"
    assert needle in outcome.text, f"message does not name {needle!r}:\n{outcome.text[-2000:]}"
    if case.not_written is not None:
        assert not case.not_written(tmp_path).exists()
    if case.absent is not None:
        assert case.absent not in outcome.text, f"the message relays {case.absent!r}:\n{outcome.text[-2000:]}"
    assert not (tmp_path / "pwned").exists()


def test_suite_size() -> None:
    kinds = {c.kind for c in CASES}
    assert len(CASES) >= 60 and kinds == {"config", "profile", "space", "scenario", "checkpoint", "flags"}
    assert len({c.id for c in CASES}) == len(CASES)
    assert len(HOSTILE_CASES) >= 40 and {c.kind for c in HOSTILE_CASES} == kinds


# ---- outputs: a symlink at an output's name is replaced, never followed ------------------------------------

def test_outputs_replace_a_symlink_instead_of_writing_through_it(tmp_path):
    """train writes config.yaml and scenario.yaml before its first step: links planted there (to a file the
    user can write, say ~/.bashrc) are replaced by the outputs; the link targets are untouched."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    for name in ("config.yaml", "scenario.yaml"):
        (out / name).symlink_to(victim)
    case = Case("symlinked-outputs", "flags", lambda tmp: (train(tmp, "--dataset", "digits", "--tasks", "2"), ""))
    outcome, _ = run_case(case, tmp_path)
    assert outcome.work_started, outcome.text[-2000:]          # the outputs were written, training began
    assert victim.read_text() == "keep me"
    for name in ("config.yaml", "scenario.yaml"):
        assert not (out / name).is_symlink() and (out / name).read_text().strip()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]   # no temporary file left behind


def test_write_mapping_is_atomic_and_link_safe(tmp_path):
    from rep_tune.schema import atomic_write_text, write_mapping
    victim = tmp_path / "victim.yaml"
    victim.write_text("keep: me\n")
    (tmp_path / "best_local.yaml").symlink_to(victim)
    write_mapping({"a": 1}, tmp_path / "best_local.yaml")
    assert victim.read_text() == "keep: me\n" and yaml.safe_load((tmp_path / "best_local.yaml").read_text()) == {"a": 1}
    (tmp_path / "trials.csv").symlink_to(tmp_path / "dangling-target.csv")
    atomic_write_text(tmp_path / "trials.csv", "a,b\n1,2\n", newline="")
    assert not (tmp_path / "dangling-target.csv").exists() and (tmp_path / "trials.csv").read_text() == "a,b\n1,2\n"
    with pytest.raises(IsADirectoryError):
        write_mapping({"a": 1}, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_local.yaml", "trials.csv", "victim.yaml"]


def test_a_named_pipe_with_a_writer_is_read_and_one_without_is_refused_promptly(tmp_path):
    from rep_tune.schema import SchemaError, read_mapping
    pipe = tmp_path / "c.yaml"
    os.mkfifo(pipe)
    writer = threading.Thread(target=lambda: (time.sleep(0.2), pipe.write_text("name: piped\n")))
    writer.start()                                # the writer opens after the reader, as a slow producer would
    try:
        assert read_mapping(pipe) == {"name": "piped"}
    finally:
        writer.join()
    start = time.perf_counter()
    with mock.patch("rep_tune.schema.FIFO_WAIT_S", 0.2), pytest.raises(SchemaError, match="nobody writes to"):
        read_mapping(pipe)
    assert time.perf_counter() - start < 5


# ---- the dispatcher: --debug, internal errors --------------------------------------------------------------

def test_debug_shows_the_traceback_of_a_user_error(tmp_path, capsys):
    path = write(tmp_path, "c.yaml", config_data(training__lr=float("inf")))
    assert main(["cost", "--config", str(path), "--device", "jetson_orin"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main(["--debug", "cost", "--config", str(path), "--device", "jetson_orin"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "SchemaError" in err
    assert err.rstrip().endswith(f"rep-tune cost: error: {path}: field 'training.lr': expected a finite number, found inf")


def test_a_bug_is_one_line_without_debug_and_a_traceback_with_it(monkeypatch, capsys):
    def broken(entries):
        raise TypeError("unsupported operand")
    monkeypatch.setattr("rep_tune.profiler.catalog.render", broken)
    assert main(["devices"]) == 70
    err = capsys.readouterr().err
    assert err == "rep-tune devices: internal error: TypeError: unsupported operand (rerun with --debug for the traceback)\n"
    assert main(["devices", "--debug"]) == 70
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in broken" in err


def test_devices_lists_every_profile_even_broken_ones(tmp_path, capsys):
    d = tmp_path / "profiles_in"
    write(d, "good.yaml", profile_data(name="good_one"))
    write(d, "noname.yaml", profile_data(name=DELETE))
    write(d, "empty.yaml", "")
    write(d, "negeff.yaml", profile_data(calibration=_with(CALIBRATION, {"efficiency.matmul": -0.5})))
    write(d, "deep.yaml", f"a: {nested(3000)}\n")
    assert main(["devices", "--dir", str(d)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert "INVALID" not in lines["good_one"] and "jetson" in lines["good_one"]
    assert "field 'name': expected a value (str; required), found 'nothing (field missing)'" in lines["noname"]
    assert "field '<top>': expected a mapping, found 'an empty document'" in lines["empty"]
    assert "calibration.efficiency.matmul" in lines["negeff"] and "-0.5" in lines["negeff"]
    assert "nesting at most 32 levels" in lines["deep"]


# ---- counts for the record: python tests/test_fuzz.py --------------------------------------------------------

def summary(verbose: bool = False) -> dict[str, int]:
    counts = {"cases": 0, "hostile (issue 19)": 0, "exit 2": 0, "exit 70": 0, "accepted": 0, "hangs": 0,
              "traceback": 0, "names file/flag": 0, "relays absent text": 0, "xfail (owner)": 0}
    failures = []
    hostile = {c.id for c in HOSTILE_CASES}
    start = time.perf_counter()
    for case in CASES:
        with tempfile.TemporaryDirectory() as d:
            outcome, needle = run_case(case, Path(d).resolve())
        if verbose:
            last = (outcome.text.strip().splitlines() or ["<nothing printed>"])[-1]
            print(f"{case.id}: rc {outcome.rc}{' HUNG' if outcome.hung else ''} ({outcome.seconds:.2f} s): {last[:240]}")
        leaked = case.absent is not None and case.absent in outcome.text
        counts["cases"] += 1
        counts["hostile (issue 19)"] += case.id in hostile
        counts["exit 2"] += outcome.rc == 2
        counts["exit 70"] += outcome.rc == 70
        counts["accepted"] += outcome.accepted
        counts["hangs"] += outcome.hung
        counts["traceback"] += outcome.traceback
        counts["names file/flag"] += needle in outcome.text
        counts["relays absent text"] += leaked
        counts["xfail (owner)"] += case.owner is not None
        ok = outcome.rc == 2 and not outcome.traceback and not outcome.accepted and needle in outcome.text \
            and not leaked and not outcome.hung
        if not ok:
            failures.append(f"  {case.id}: rc {outcome.rc}, traceback {outcome.traceback}, accepted {outcome.accepted}, "
                            f"hung {outcome.hung}{'' if case.owner else '  (NOT marked xfail)'}")
    print("\n".join(f"{k:>20}: {v}" for k, v in counts.items()))
    print(f"{'seconds':>20}: {time.perf_counter() - start:.1f}")
    print("not yet refused cleanly:\n" + ("\n".join(failures) or "  none"))
    return counts


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    summary(verbose="-v" in sys.argv)
