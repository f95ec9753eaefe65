"""Dataset loaders on tiny files in the real on-disk formats, class order, task split, rendering."""
import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from rep_tune.data.scenario import Scenario
from rep_tune.data.tasks import backbone_normalization, build_tasks, class_order, split_classes


def test_class_order_natural_and_seeded():
    assert class_order(5, -1) == [0, 1, 2, 3, 4]
    a, b = class_order(10, 3), class_order(10, 3)
    assert a == b and sorted(a) == list(range(10)) and a != list(range(10))


def test_split_classes_even():
    assert split_classes(10, 5) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert [len(g) for g in split_classes(10, 3)] == [4, 3, 3]
    with pytest.raises(ValueError, match="n_tasks"):
        split_classes(3, 4)


def test_digits_rendered_like_fmnist_pretraining():
    ts = build_tasks(Scenario(dataset="digits", n_tasks=5, class_order_seed=-1), 32, cache=False)
    assert ts.num_classes == 10 and ts.n_tasks == 5 and ts.class_order == list(range(10))
    n_train = sum(len(t.train) for t in ts)
    n_test = sum(len(t.test) for t in ts)
    assert n_train + n_test == 1797 and abs(n_test - 0.2 * 1797) <= 1
    x, y, ids = ts[0].train.batch(torch.arange(len(ts[0].train)))
    assert x.shape[1:] == (3, 32, 32)
    assert torch.equal(x[:, 0], x[:, 1])                         # grayscale replicated
    assert float(x.min()) == -1.0 and float(x.max()) <= 1.0       # [-1, 1] after mean/std 0.5
    assert torch.all(x[:, :, :2, :] == -1.0) and torch.all(x[:, :, :, -2:] == -1.0)   # 2 px pad
    assert set(y.tolist()) == {0, 1}
    # ids are unique across train and test and stable between builds
    all_ids = torch.cat([torch.cat([t.train.ids, t.test.ids]) for t in ts])
    assert len(set(all_ids.tolist())) == 1797
    again = build_tasks(Scenario(dataset="digits", n_tasks=5, class_order_seed=-1), 32, cache=False)
    assert torch.equal(again[0].train.ids, ts[0].train.ids)


def test_digits_split_is_stratified_and_seeded():
    s = Scenario(dataset="digits", n_tasks=2, class_order_seed=-1, test_fraction=0.5, seed=1)
    ts = build_tasks(s, 32, cache=False)
    counts = np.bincount(torch.cat([t.test.labels for t in ts]).numpy())
    assert counts.min() >= 85 and counts.max() <= 92      # ~half of ~180 per class
    other = build_tasks(Scenario(dataset="digits", n_tasks=2, class_order_seed=-1, test_fraction=0.5, seed=2), 32,
                        cache=False)
    assert not torch.equal(other[0].test.ids, ts[0].test.ids)


def test_resize_and_cache():
    s = Scenario(dataset="digits", n_tasks=2, max_per_class=5)
    a = build_tasks(s, 64)
    assert a is build_tasks(s, 64)                                      # cached per process
    assert all(len(t.train) == 5 * len(t.classes) for t in a)
    x, _, _ = a[1].train.batch(torch.tensor([0, 1]))
    assert x.shape == (2, 3, 64, 64)
    assert a[0].classes == [0, 1, 2, 3, 4]
    # renumbered labels map back to dataset classes through class_order
    assert a.class_order == class_order(10, 0)


def _write_idx(path, arr: np.ndarray, code: int):
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())


def test_fashion_mnist_idx(tmp_path):
    rng = np.random.RandomState(0)
    for split, n in (("train", 40), ("t10k", 20)):
        _write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.randint(0, 256, (n, 28, 28)).astype(np.uint8), 0x08)
        _write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8), 0x08)
    ts = build_tasks(Scenario(dataset="fashion-mnist", data_path=str(tmp_path), n_tasks=2, class_order_seed=-1),
                     32, cache=False)
    assert [len(t.train) for t in ts] == [20, 20] and [len(t.test) for t in ts] == [10, 10]
    x, y, ids = ts[1].test.batch(torch.arange(10))
    assert x.shape == (10, 3, 32, 32) and set(y.tolist()) == {5, 6, 7, 8, 9}
    assert ids.min() >= 1 << 32                                 # test ids never collide with train ids
    # pixel (0,0) of the first training image, read back through padding and normalisation
    raw = np.frombuffer(gzip.open(tmp_path / "train-images-idx3-ubyte.gz").read()[16:], np.uint8).reshape(40, 28, 28)
    x0, _, _ = ts[0].train.batch(torch.tensor([0]))
    assert float(x0[0, 0, 2, 2]) == pytest.approx(raw[0, 0, 0] / 255 * 2 - 1, abs=1e-6)
    assert float(x0[0, 0, 0, 0]) == -1.0


def test_cifar100_pickles(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.RandomState(0)
    for split, n in (("train", 30), ("test", 10)):
        data = rng.randint(0, 256, (n, 3072)).astype(np.uint8)
        labels = [i % 5 for i in range(n)]
        with open(root / split, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels, "coarse_labels": labels}, f)
    with open(root / "meta", "wb") as f:
        pickle.dump({"fine_label_names": ["apple", "bee", "cat", "dog", "eel"]}, f)
    s = Scenario(dataset="cifar100", data_path=str(tmp_path), n_tasks=5, class_order_seed=1)
    ts = build_tasks(s, 32, cache=False)
    order = class_order(5, 1)
    assert ts.class_order == order and ts.class_names == [["apple", "bee", "cat", "dog", "eel"][c] for c in order]
    assert all(len(t.train) == 6 and len(t.test) == 2 for t in ts)
    # task 0 holds dataset class order[0]: its first training image is sample order[0] of the file
    x, y, ids = ts[0].train.batch(torch.tensor([0]))
    assert int(ids[0]) == order[0] and int(y[0]) == 0
    with open(root / "train", "rb") as f:
        img = pickle.load(f)["data"][order[0]].reshape(3, 32, 32)
    assert torch.allclose(x[0], torch.from_numpy(img).float() / 255 * 2 - 1, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="cifar-100-python"):
        build_tasks(Scenario(dataset="cifar100", data_path=str(tmp_path / "nowhere")), 32, cache=False)


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((10, 12, 3), value, np.uint8)).save(path)


def test_image_folder_split_by_fraction(tmp_path):
    for c, name in enumerate(["ant", "bird", "cow", "dog"]):
        for i in range(5):
            _png(tmp_path / name / f"{i}.png", 40 * c + i)
    s = Scenario(dataset="imagenet-r", data_path=str(tmp_path), n_tasks=2, class_order_seed=-1, test_fraction=0.4)
    ts = build_tasks(s, 16, cache=False)
    assert ts.class_names == ["ant", "bird", "cow", "dog"]
    assert [len(t.train) for t in ts] == [6, 6] and [len(t.test) for t in ts] == [4, 4]
    x, y, ids = ts[1].test.batch(torch.arange(4))
    assert x.shape == (4, 3, 16, 16) and set(y.tolist()) == {2, 3}
    # a uniform image stays uniform: value/255 normalised with 0.5/0.5
    v = 40 * int(y[0]) + int(ids[0]) % 5
    assert torch.allclose(x[0], torch.full((3, 16, 16), v / 255 * 2 - 1), atol=1e-5)


def test_image_folder_train_test_subfolders(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for name in ("a", "b"):
            for i in range(n):
                _png(tmp_path / split / name / f"{i}.png", 100)
    ts = build_tasks(Scenario(dataset="folder", data_path=str(tmp_path), n_tasks=2, class_order_seed=-1), 8,
                     cache=False)
    assert [len(t.train) for t in ts] == [3, 3] and [len(t.test) for t in ts] == [2, 2]
    assert len({int(i) for t in ts for i in torch.cat([t.train.ids, t.test.ids])}) == 10


def test_backbone_normalization():
    assert backbone_normalization("vit_micro_patch4_32.fmnist") == ((0.5,) * 3, (0.5,) * 3)
    mean, std = backbone_normalization("vit_base_patch16_224.orig_in21k")
    assert len(mean) == 3 and len(std) == 3
