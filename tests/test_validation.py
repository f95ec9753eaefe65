"""Validation before work: the schema's finite numbers and required fields, file shape limits,
scenario reachability, IDX files, and the CLI's argparse types."""
from __future__ import annotations

import argparse
import gzip
import os
import pickle
import struct
from dataclasses import dataclass, field

import numpy as np
import pytest

from rep_tune.cli.common import float_range, non_negative_float, positive_int, threads_int
from rep_tune.data import idx
from rep_tune.data.scenario import Scenario
from rep_tune.schema import AnyFloat, SchemaError, from_dict, read_mapping


@dataclass
class Inner:
    rate: float = 1.0
    loose: AnyFloat = 0.0
    table: dict[str, float] = field(default_factory=dict)


@dataclass
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)
    limit: float | None = None


@pytest.mark.parametrize("data, where, expected", [
    ({"name": "x", "inner": {"rate": float("nan")}}, "inner.rate", "a finite number"),
    ({"name": "x", "inner": {"table": {"fp32": float("inf")}}}, "inner.table.fp32", "a finite number"),
    ({"name": "x", "limit": float("-inf")}, "limit", "a finite number"),
    ({"name": "x", "inner": {"rate": 10 ** 400}}, "inner.rate", "a finite number"),
    ({"inner": {}}, "name", "a value (str; required)"),
    ({"name": "x", 3: 1}, "3", "a field name (string) of Outer"),
])
def test_schema_refuses(data, where, expected):
    with pytest.raises(SchemaError) as e:
        from_dict(Outer, data, source="f.yaml")
    assert e.value.source == "f.yaml" and e.value.field == where and e.value.expected.startswith(expected)


def test_schema_accepts_finite_numbers_and_explicit_nonfinite_fields():
    o = from_dict(Outer, {"name": "x", "inner": {"rate": 2, "loose": float("inf"), "table": {"a": 1}}, "limit": None})
    assert o.inner.rate == 2.0 and isinstance(o.inner.rate, float) and o.inner.loose == float("inf")
    assert o.inner.table == {"a": 1.0} and o.limit is None


def test_read_mapping_limits(tmp_path):
    (tmp_path / "bom.yaml").write_bytes("\ufeffname: café\n".encode("utf-8"))
    assert read_mapping(tmp_path / "bom.yaml") == {"name": "café"}
    (tmp_path / "deep.json").write_text("{\"a\": " * 5000 + "1" + "}" * 5000)
    with pytest.raises(SchemaError, match="deep.json: field '<file>': expected nesting at most 32"):
        read_mapping(tmp_path / "deep.json")
    (tmp_path / "shared.yaml").write_text("a: &x [1, 2]\nb: *x\nc: *x\n")   # shared, not cyclic: fine
    assert read_mapping(tmp_path / "shared.yaml")["c"] == [1, 2]
    os.mkfifo(tmp_path / "fifo.yaml")
    pid = os.fork()
    if pid == 0:                                   # a writer for the pipe (process substitution)
        with open(tmp_path / "fifo.yaml", "w") as f:
            f.write("name: piped\n")
        os._exit(0)
    try:
        assert read_mapping(tmp_path / "fifo.yaml") == {"name": "piped"}
    finally:
        os.waitpid(pid, 0)


# ---- scenario reachability -------------------------------------------------------------------------------

def _cifar(root, classes=5):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        (folder / split).write_bytes(pickle.dumps({"data": np.zeros((10, 3072), np.uint8),
                                                   "fine_labels": [i % classes for i in range(10)]}))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(classes)]}))


def _idx(path, arr, code=0x08):
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())


def _fashion(root, classes=3):
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 12), ("t10k", 6)):
        _idx(root / f"{split}-images-idx3-ubyte.gz", np.zeros((n, 28, 28), np.uint8))
        _idx(root / f"{split}-labels-idx1-ubyte.gz", (np.arange(n) % classes).astype(np.uint8))


def test_check_reachable_counts_classes_and_names_the_file(tmp_path):
    assert Scenario(dataset="digits", n_tasks=10).check_reachable() == 10
    _cifar(tmp_path / "c")
    path = tmp_path / "s.yaml"
    Scenario(dataset="cifar100", data_path=str(tmp_path / "c"), n_tasks=6).save(path)
    with pytest.raises(SchemaError) as e:
        Scenario.load(path).check_reachable()
    assert e.value.source == str(path) and e.value.field == "n_tasks" and e.value.found == 6
    assert "int in [1, 5] (the classes of cifar100 at" in e.value.expected
    assert Scenario(dataset="cifar100", data_path=str(tmp_path / "c"), n_tasks=5).check_reachable() == 5


def test_check_reachable_refuses_missing_or_corrupt_data(tmp_path):
    with pytest.raises(SchemaError, match="field 'data_path'.*nowhere: no cifar-100-python/train"):
        Scenario(dataset="cifar100", data_path=str(tmp_path / "nowhere")).check_reachable("s.yaml")
    assert Scenario(dataset="cifar100", data_path=str(tmp_path / "nowhere"), download=True).check_reachable() == 100
    with pytest.raises(SchemaError, match="needs data_path"):
        Scenario(dataset="folder").check_reachable()
    for c in ("ant", "bee", "cow"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
    assert Scenario(dataset="folder", data_path=str(tmp_path / "imgs"), n_tasks=3).check_reachable() == 3
    _fashion(tmp_path / "fm")
    assert Scenario(dataset="fashion-mnist", data_path=str(tmp_path / "fm"), n_tasks=3).check_reachable() == 3
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(SchemaError, match="t10k-labels-idx1-ubyte.gz: cannot read this IDX file"):
        Scenario(dataset="fashion-mnist", data_path=str(tmp_path / "fm"), n_tasks=3).check_reachable()


def test_a_given_fashion_mnist_path_is_never_replaced(tmp_path, monkeypatch):
    _fashion(tmp_path / "elsewhere")
    monkeypatch.setenv("REP_TUNE_FASHION_MNIST", str(tmp_path / "elsewhere"))
    assert idx.find_fashion_mnist() == tmp_path / "elsewhere"
    with pytest.raises(FileNotFoundError, match="typo: Fashion-MNIST folder not found"):
        idx.find_fashion_mnist(tmp_path / "typo")


@pytest.mark.parametrize("blob, expected", [
    (b"\x00\x00\x08\x03\x00\x00", "IDX header truncated"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", r"header shape \(5,\) needs 5 values, found 3"),
    (b"PK\x03\x04", "not an IDX file"),
])
def test_read_idx_names_the_file(tmp_path, blob, expected):
    (tmp_path / "x-idx").write_bytes(blob)
    with pytest.raises(ValueError, match=expected) as e:
        idx.read_idx(tmp_path / "x-idx")
    assert str(tmp_path / "x-idx") in str(e.value)


# ---- argparse types ----------------------------------------------------------------------------------------

def _parse(kind, text):
    p = argparse.ArgumentParser(prog="t", exit_on_error=False)
    p.add_argument("--x", type=kind)
    return p.parse_args(["--x", text]).x


@pytest.mark.parametrize("kind, text, message", [
    (positive_int, "0", "expected an int >= 1, found '0'"),
    (positive_int, "2.5", "expected an int, found '2.5'"),
    (threads_int, "100000", "expected an int in [1, 1024], found '100000'"),
    (non_negative_float, "nan", "expected a finite number, found 'nan'"),
    (non_negative_float, "1e999", "expected a finite number, found '1e999'"),
    (non_negative_float, "-0.1", "expected a finite number >= 0, found '-0.1'"),
    (float_range(0.0, 1.0, low_open=True), "0", "expected a finite number in (0, 1], found '0'"),
])
def test_argparse_types_refuse(kind, text, message):
    with pytest.raises(argparse.ArgumentError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        _parse(kind, text)


def test_argparse_types_accept():
    assert _parse(positive_int, "3") == 3 and _parse(non_negative_float, "0") == 0.0 and _parse(threads_int, "1024") == 1024
