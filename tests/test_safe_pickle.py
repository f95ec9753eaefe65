"""Data files that are pickles never run code: the restricted unpickler, CIFAR-100's reader, checkpoints."""
from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch

from rep_tune import safe_pickle
from rep_tune.checkpoints import CheckpointError, read_checkpoint
from rep_tune.cli import main
from rep_tune.data import cifar100
from rep_tune.data.scenario import Scenario


class WritesFile:
    """A pickle payload: unpickling it with plain ``pickle.load`` writes ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').write('pwned')",)


class Py2Pickler(pickle._Pickler):
    """Writes pickles as Python 2's cPickle did for CIFAR-100: str as byte strings, numpy.core globals."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        n = len(raw)
        self.write(pickle.SHORT_BINSTRING + bytes([n]) + raw if n < 256 else pickle.BINSTRING + struct.pack("<i", n) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def _py2_dumps(obj) -> bytes:
    import io
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def _cifar(root, n_train=20, n_test=10, classes=5, train_bytes=None):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for split, n in (("train", n_train), ("test", n_test)):
        d = {"data": rng.randint(0, 256, (n, 3072)).astype(np.uint8), "fine_labels": [i % classes for i in range(n)]}
        (folder / split).write_bytes(pickle.dumps(d))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(classes)]}))
    if train_bytes is not None:
        (folder / "train").write_bytes(train_bytes)
    return folder


# ---- the proof: a pickle that would write a file is refused, through the CLI -------------------

def test_cifar_pickle_payload_is_refused_through_the_cli(tmp_path, capsys):
    live = tmp_path / "live.txt"
    pickle.loads(pickle.dumps(WritesFile(live)))          # the payload is real: plain pickle runs it
    assert live.read_text() == "pwned"

    marker = tmp_path / "pwned.txt"
    payload = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "fine_labels": [0, 1], "x": WritesFile(marker)})
    folder = _cifar(tmp_path / "data", train_bytes=payload)
    rc = main(["train", "--dataset", "cifar100", "--data-path", str(tmp_path / "data"), "--tasks", "2",
               "--out", str(tmp_path / "out"), "--quiet", "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert not marker.exists()
    assert f"{folder / 'train'}: refused to unpickle this CIFAR-100 file: global builtins.exec is not allowed" in err
    assert "Traceback" not in err
    print(err)   # the refusal message, for the record (pytest -s)


# ---- the restricted unpickler --------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_reads_plain_containers_and_numpy_arrays(tmp_path, protocol):
    obj = {"data": np.arange(24, dtype=np.uint8).reshape(2, 12), "f": np.linspace(0, 1, 5, dtype=np.float32),
           "labels": [1, 2, 3], "s": np.int64(7), "set": {1, 2}, "t": (b"raw", "text", 1.5, None, True)}
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    got = safe_pickle.load(path)
    assert got["data"].dtype == np.uint8 and np.array_equal(got["data"], obj["data"])
    assert np.array_equal(got["f"], obj["f"]) and got["f"].dtype == np.float32
    assert got["labels"] == [1, 2, 3] and got["s"] == 7 and got["set"] == {1, 2}
    assert got["t"] == (b"raw", "text", 1.5, None, True)


def test_reads_python2_cifar_pickles(tmp_path):
    data = np.random.RandomState(1).randint(0, 256, (6, 3072)).astype(np.uint8)
    blob = _py2_dumps({"data": data, "fine_labels": [0, 1, 2, 0, 1, 2], "batch_label": "training batch 1 of 1"})
    assert b"numpy.core.multiarray\n_reconstruct" in blob and b"U\x04data" in blob   # really Python 2's layout
    ref = pickle.loads(blob, encoding="latin1")
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(blob)
    (folder / "test").write_bytes(blob)
    (folder / "meta").write_bytes(_py2_dumps({"fine_label_names": ["a", "b", "c"]}))
    raw = cifar100.load(Scenario(dataset="cifar100", data_path=str(tmp_path), n_tasks=3))
    assert np.array_equal(raw.train.images.numpy().reshape(6, -1), ref["data"])
    assert raw.class_names == ["a", "b", "c"] and raw.train.labels.tolist() == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("payload, refused", [
    (lambda p: WritesFile(p), "builtins.exec"),
    (lambda p: __import__("os").system, "posix.system"),
    (lambda p: np.array([WritesFile(p)], dtype=object), "dtype object"),     # refused before its items load
    (lambda p: np.array([1, "a"], dtype=object), "dtype object"),
    (lambda p: torch.zeros(2), "torch._utils._rebuild_tensor_v2"),
])
def test_refuses_everything_else(tmp_path, payload, refused):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps({"x": payload(marker)}))
    with pytest.raises(safe_pickle.UnsafePickleError, match="refused") as e:
        safe_pickle.load(path)
    assert str(path) in str(e.value) and refused in str(e.value)
    assert not marker.exists()


def test_refuses_a_huge_initial_array(tmp_path):
    # _reconstruct(ndarray, (10**12,), 'b') would try to allocate a terabyte before any data is read
    blob = b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n\x8a\x05\x00\x10\xa5\xd4\xe8\x85U\x01b\x87R."
    path = tmp_path / "big.pkl"
    path.write_bytes(blob)
    with pytest.raises(safe_pickle.UnsafePickleError, match="empty initial shape"):
        safe_pickle.load(path)


@pytest.mark.parametrize("blob", [b"", b"garbage", pickle.dumps({"a": 1})[:-3], b"\x80\x05\x95"])
def test_corrupt_pickles_name_the_file(tmp_path, blob):
    path = tmp_path / "bad.pkl"
    path.write_bytes(blob)
    with pytest.raises(ValueError, match="bad.pkl: not a readable pickle"):
        safe_pickle.load(path)


@pytest.mark.parametrize("split, expected", [
    ({"data": np.zeros((3, 3072), np.uint8), "fine_labels": [0, 1, 9]}, r"fine_labels: expected class ids in \[0, 4\]"),
    ({"data": np.zeros((3, 100), np.uint8), "fine_labels": [0, 1, 2]}, "data: expected a uint8 array of 3 x 3072"),
    ({"data": np.zeros((3, 3072), np.float64), "fine_labels": [0, 1, 2]}, "data: expected a uint8 array"),
    ({"fine_labels": [0, 1, 2]}, "data: expected a uint8 array"),
    ({"data": np.zeros((3, 3072), np.uint8)}, "fine_labels: expected a non-empty list"),
    ([1, 2, 3], "expected a CIFAR-100 mapping"),
])
def test_cifar_content_is_checked(tmp_path, split, expected):
    folder = _cifar(tmp_path, train_bytes=pickle.dumps(split))
    with pytest.raises(ValueError, match=expected) as e:
        cifar100.load(Scenario(dataset="cifar100", data_path=str(tmp_path), n_tasks=5))
    assert str(folder / "train") in str(e.value)


# ---- checkpoints ---------------------------------------------------------------------------------------

def _st(header: dict, data_bytes: int) -> bytes:
    import json
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"\0" * data_bytes


def _state():
    return {"blocks.0.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "cls_token": torch.ones(1, 1, 3)}


def test_read_checkpoint_round_trips(tmp_path):
    from safetensors.torch import save_file
    save_file(_state(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in _state().items()}, "epoch": 3}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        got = read_checkpoint(tmp_path / name)
        assert sorted(got) == sorted(_state()) and torch.equal(got["blocks.0.weight"], _state()["blocks.0.weight"])


def test_torch_checkpoint_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        torch.save({"weight": torch.zeros(2), "x": WritesFile(marker)}, f)
    with pytest.raises(CheckpointError, match="evil.pth: refused: it contains code or objects that are not plain "
                                              r"tensors \(Unsupported global: GLOBAL exec was not an allowed global\)") as e:
        read_checkpoint(path)
    assert "weights_only" not in str(e.value) and "trust" not in str(e.value)   # torch's advice is not relayed
    assert not marker.exists()


@pytest.mark.parametrize("name, blob, expected", [
    ("huge.safetensors", struct.pack("<Q", 2 ** 62) + b"{}", "header length 4611686018427387904 exceeds"),
    ("short.safetensors", b"\x01\x02", "shorter than its 8-byte header length"),
    ("json.safetensors", struct.pack("<Q", 5) + b"nope!", "header is not JSON"),
    ("extent.safetensors", _st({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 8),
     "tensor 'w' has a bad dtype, shape or data extent"),
    ("dtype.safetensors", _st({"w": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, 8),
     "tensor 'w' has a bad dtype"),
    ("garbage.pth", b"not a checkpoint at all", "not a readable PyTorch checkpoint"),
])
def test_corrupt_checkpoints_name_the_file(tmp_path, name, blob, expected):
    (tmp_path / name).write_bytes(blob)
    with pytest.raises(CheckpointError, match=expected) as e:
        read_checkpoint(tmp_path / name)
    assert str(tmp_path / name) in str(e.value)


def test_checkpoint_values_must_be_finite_tensors(tmp_path):
    torch.save({"w": torch.tensor([1.0, float("nan")])}, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="nan.pth: tensor 'w' holds NaN"):
        read_checkpoint(tmp_path / "nan.pth")
    torch.save({"w": [1, 2]}, tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="entry 'w': expected a tensor, found list"):
        read_checkpoint(tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="found a directory"):
        read_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.pth: no such file"):
        read_checkpoint(tmp_path / "missing.pth")


# ---- sizes the file cannot back (issue 19) ------------------------------------------------------------

@pytest.mark.parametrize("blob, expected", [
    (b"\x80\x02c__builtin__\nbytearray\n\x8a\x05\x00\x00\x00\x00\x01\x85R.", "builtins.bytearray|__builtin__.bytearray"),
    (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x01\x85U\x03V99\x87R.", "empty initial shape"),
])
def test_constructors_sized_by_the_file_are_refused(tmp_path, blob, expected):
    path = tmp_path / "p.pkl"
    path.write_bytes(blob)
    with pytest.raises(safe_pickle.UnsafePickleError, match=expected):
        safe_pickle.load(path)


@pytest.mark.parametrize("blob, expected", [
    (b"\x80\x04\x8e" + struct.pack("<Q", 2 ** 32) + b"abc.", "BINBYTES8 at byte 2 claims 4,294,967,296 bytes; 4 remain"),
    (b"\x80\x05\x96" + struct.pack("<Q", 2 ** 40) + b".", "BYTEARRAY8 at byte 2 claims"),
    (b"\x80\x02X" + struct.pack("<I", 2 ** 31) + b"..", "BINUNICODE at byte 2 claims"),
    (b"\x80\x04\x95" + struct.pack("<Q", 2 ** 40) + b"N.", "FRAME at byte 2 claims"),
    (b"\x80\x02]r\xff\xff\xff\x7f.", "memo index 2,147,483,647 out of sequence"),
    (b"\x80\x02N", "without STOP"),
])
def test_claims_beyond_the_file_are_refused_before_allocation(tmp_path, blob, expected):
    import resource
    path = tmp_path / "p.pkl"
    path.write_bytes(blob)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match=expected):
        safe_pickle.load(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024   # KiB: nothing large was touched


def test_a_fifo_is_not_waited_on(tmp_path):
    import os
    os.mkfifo(tmp_path / "train")
    with pytest.raises(ValueError, match="train: cannot read this data file: not a regular file"):
        safe_pickle.load(tmp_path / "train")


def test_checkpoint_sizes_are_checked_before_values(tmp_path):
    import time
    import zipfile
    torch.save({"w": torch.zeros(1).expand(2 ** 21, 2 ** 19)}, tmp_path / "view.pth")   # 4 TiB over one float
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="view.pth: tensor 'w' .* claims 4,398,046,511,104 bytes over 4 stored"):
        read_checkpoint(tmp_path / "view.pth")
    assert time.perf_counter() - start < 2.0
    tied = torch.arange(6, dtype=torch.float32)
    torch.save({"a": tied, "b": tied.view(2, 3), "c": tied[2:]}, tmp_path / "tied.pth")     # shared storage: fine
    assert set(read_checkpoint(tmp_path / "tied.pth")) == {"a", "b", "c"}
    torch.save({"w": torch.zeros(4)}, tmp_path / "plain.pth")
    with zipfile.ZipFile(tmp_path / "plain.pth") as zin, zipfile.ZipFile(tmp_path / "bomb.pth", "w") as zout:
        for info in zin.infolist():
            if info.filename.endswith("/data/0"):
                zout.writestr(info.filename, bytes(2 ** 20), compress_type=zipfile.ZIP_DEFLATED)
            else:
                zout.writestr(info, zin.read(info))
    with pytest.raises(CheckpointError, match="bomb.pth: .*zip entries declare 1,048,.* bytes in a"):
        read_checkpoint(tmp_path / "bomb.pth")


def test_safetensors_header_with_a_tensor_named_twice_is_refused(tmp_path):
    entry = b'"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}'
    text = b"{" + entry + b"," + entry + b"}"
    (tmp_path / "d.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 8)
    with pytest.raises(CheckpointError, match="d.safetensors: .*duplicate key 'w'"):
        read_checkpoint(tmp_path / "d.safetensors")
