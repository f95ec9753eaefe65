"""Dataset loaders on tiny files in the real on-disk formats, class order, task split, rendering."""
import gzip
import math
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from rep_tune.data import fashion_mnist
from rep_tune.data.idx import load_idx_split
from rep_tune.data.scenario import Scenario
from rep_tune.data.tasks import build_tasks, class_order, eval_subset, sampling_error, split_classes
from rep_tune.runtime.backbone import backbone_normalization


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
    ts = build_tasks(Scenario(dataset="digits", n_tasks=5, class_order_seed=-1), 28, cache=False)
    assert ts.num_classes == 10 and ts.n_tasks == 5 and ts.class_order == list(range(10))
    n_train = sum(len(t.train) for t in ts)
    n_test = sum(len(t.test) for t in ts)
    assert n_train + n_test == 1797 and abs(n_test - 0.2 * 1797) <= 1
    x, y, ids = ts[0].train.batch(torch.arange(len(ts[0].train)))
    assert x.shape[1:] == (3, 28, 28)                            # the Fashion-MNIST canvas, unpadded
    assert torch.equal(x[:, 0], x[:, 1])                         # grayscale replicated
    assert float(x.min()) == -1.0 and float(x.max()) <= 1.0       # [-1, 1] after mean/std 0.5
    assert float((x == -1.0).float().mean()) > 0.3                # dark background, like Fashion-MNIST
    assert set(y.tolist()) == {0, 1}
    # ids are unique across train and test and stable between builds
    all_ids = torch.cat([torch.cat([t.train.ids, t.test.ids]) for t in ts])
    assert len(set(all_ids.tolist())) == 1797
    again = build_tasks(Scenario(dataset="digits", n_tasks=5, class_order_seed=-1), 28, cache=False)
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


def _write_idx(path, arr: np.ndarray, code: int = 0x08):
    """An IDX file as Debian's dataset-fashion-mnist ships it (gzipped when the name ends in .gz)."""
    data = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


def _fake_fashion_mnist(folder, n_train=40, n_test=20, gz=True):
    """Tiny Fashion-MNIST in Debian's file names; returns (train images, train labels, test images, test labels)."""
    rng = np.random.RandomState(0)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.randint(0, 256, (n, 28, 28)).astype(np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if gz else ""
        _write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", x)
        _write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", y)
        out += [x, y]
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_trains_on_held_out_images_only(tmp_path, monkeypatch, gz):
    monkeypatch.setattr(fashion_mnist, "HOLDOUT_PER_CLASS", 2)          # 4 per class in the file: 2 held out
    xtr, ytr, xte, yte = _fake_fashion_mnist(tmp_path, gz=gz)
    s = Scenario(dataset="fashion-mnist", data_path=str(tmp_path), n_tasks=2, class_order_seed=-1,
                 eval_per_class=None)
    ts = build_tasks(s, 28, cache=False)
    pretrain, held = fashion_mnist.holdout_split(ytr)
    assert len(held) == 20 and len(pretrain) == 20
    train_ids = torch.cat([t.train.ids for t in ts]).numpy()
    assert sorted(train_ids.tolist()) == held.tolist()                 # ids = positions in the official file
    assert not set(train_ids.tolist()) & set(pretrain.tolist())
    assert [len(t.train) for t in ts] == [10, 10] and [len(t.test) for t in ts] == [10, 10]
    assert ts.eval_size == 20
    x, y, ids = ts[1].test.batch(torch.arange(10))
    assert x.shape == (10, 3, 28, 28) and set(y.tolist()) == {5, 6, 7, 8, 9}
    assert ids.min() >= 1 << 32                                 # test ids never collide with train ids
    # a training image read back through the stream: native 28x28, value/255 normalised with 0.5/0.5
    x0, y0, id0 = ts[0].train.batch(torch.tensor([3]))
    assert torch.allclose(x0[0, 0], torch.from_numpy(xtr[int(id0)]).float() / 255 * 2 - 1, atol=1e-6)
    assert int(y0) == int(ytr[int(id0)])
    t0, _, tid = ts[0].test.batch(torch.tensor([0]))
    assert torch.allclose(t0[0, 2], torch.from_numpy(xte[int(tid) - (1 << 32)]).float() / 255 * 2 - 1, atol=1e-6)


def test_holdout_split_is_disjoint_balanced_and_fixed():
    labels = np.random.RandomState(1).permutation(np.repeat(np.arange(10), 6000))
    pre, held = fashion_mnist.holdout_split(labels)
    assert len(pre) == 50_000 and len(held) == 10_000
    assert not set(pre.tolist()) & set(held.tolist()) and len(np.union1d(pre, held)) == 60_000
    assert np.bincount(labels[held]).tolist() == [1000] * 10
    again_pre, again_held = fashion_mnist.holdout_split(labels)
    assert np.array_equal(held, again_held) and np.array_equal(pre, again_pre)


@pytest.mark.skipif(fashion_mnist.find() is None, reason="Fashion-MNIST not installed (make data)")
def test_real_fashion_mnist_split_and_eval_subset():
    """The installed data: 10,000 held-out training images, none of them pre-training images."""
    root = fashion_mnist.find()
    _, ytr = load_idx_split(root, "train")
    pre, held = fashion_mnist.holdout_split(ytr)
    ts = build_tasks(Scenario(dataset="fashion-mnist", eval_per_class=100), 28, cache=False)
    ids = torch.cat([t.train.ids for t in ts]).numpy()
    assert len(ids) == 10_000 and np.array_equal(np.sort(ids), held) and not np.isin(ids, pre).any()
    assert ts.eval_size == 1000 and all(len(t.test) == 200 for t in ts)


@pytest.mark.skipif(fashion_mnist.find() is None, reason="Fashion-MNIST not installed (make data)")
def test_validation_split_is_held_out_of_training_and_apart_from_test_and_pretraining():
    """The search's split: 50 per class out of the 10,000 held-out training images; never trained on,
    never a test image, never a pre-training image; fixed for a seed, another for another seed."""
    root = fashion_mnist.find()
    _, ytr = load_idx_split(root, "train")
    pre, held = fashion_mnist.holdout_split(ytr)
    sc = Scenario(dataset="fashion-mnist", eval_per_class=50, val_per_class=50, eval_split="val")
    ts = build_tasks(sc, 28, cache=False)
    val = torch.cat([t.val.ids for t in ts]).numpy()
    train = torch.cat([t.train.ids for t in ts]).numpy()
    test = torch.cat([t.test.ids for t in ts]).numpy()
    assert len(val) == 500 and len(train) == 9_500 and np.bincount(ytr[val]).tolist() == [50] * 10
    assert not np.isin(val, train).any() and not np.isin(val, pre).any() and np.isin(val, held).all()
    assert not np.isin(val, test).any() and test.min() >= 1 << 32        # test ids live apart
    assert ts.eval_split == "val" and ts.eval_size == 500 and ts.eval_of(0) is ts[0].val
    assert "500 validation images" in ts.eval_note(0.8)
    again = torch.cat([t.val.ids for t in build_tasks(sc, 28, cache=False)]).numpy()
    other = torch.cat([t.val.ids for t in build_tasks(Scenario(val_per_class=50, eval_split="val", seed=1), 28,
                                                       cache=False)]).numpy()
    assert np.array_equal(np.sort(val), np.sort(again)) and not np.array_equal(np.sort(val), np.sort(other))
    with pytest.raises(Exception, match="eval_split"):
        Scenario(eval_split="val").validate()          # scoring on a validation split needs one


def test_eval_subset_is_fixed_nested_and_balanced(tmp_path):
    _fake_fashion_mnist(tmp_path, n_test=100)
    def test_ids(per_class, seed=0):
        s = Scenario(dataset="fashion-mnist", data_path=str(tmp_path), n_tasks=5, eval_per_class=per_class, seed=seed)
        ts = build_tasks(s, 28, cache=False)
        return ts, set(torch.cat([t.test.ids for t in ts]).tolist())
    ts3, three = test_ids(3)
    assert ts3.eval_size == 30 and all(np.bincount(t.test.labels.numpy()).max() == 3 for t in ts3)
    assert test_ids(3)[1] == three                                     # the same images every time
    assert three < test_ids(6)[1]                                      # a bigger subset contains it
    assert test_ids(3, seed=1)[1] != three                             # seeded
    assert len(test_ids(None)[1]) == 100 and len(test_ids(50)[1]) == 100   # at most per class
    with pytest.raises(ValueError, match="eval_per_class"):
        eval_subset(np.arange(10) % 2, 0, 0)


def test_sampling_error_and_eval_note():
    assert sampling_error(0.75, 2000) == pytest.approx(0.009682, abs=1e-6)
    assert sampling_error(1.0, 100) == 0.0 and math.isnan(sampling_error(0.5, 0))
    ts = build_tasks(Scenario(dataset="digits", n_tasks=5), 32, cache=False)
    assert ts.eval_size == sum(len(t.test) for t in ts) == 360
    assert ts.eval_note(0.5) == f"on 360 test images, sampling error ±{100 * (0.25 / 360) ** 0.5:.2f} points"


def test_fashion_mnist_is_the_default_scenario():
    s = Scenario()
    assert (s.dataset, s.n_tasks, s.eval_per_class) == ("fashion-mnist", 5, 200)


def test_missing_fashion_mnist_names_both_ways(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")
    monkeypatch.delenv("REP_TUNE_FASHION_MNIST", raising=False)
    monkeypatch.setenv("REP_TUNE_DATA", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError) as e:
        build_tasks(Scenario(dataset="fashion-mnist"), 28, cache=False)
    assert "apt-get install -y dataset-fashion-mnist" in str(e.value) and "torchvision" in str(e.value)
    assert str(tmp_path / "no-debian") in str(e.value)
    assert fashion_mnist.main(["--check"]) == 1 and "dataset-fashion-mnist" in capsys.readouterr().err
    # a folder named by the environment is found, plain or gzipped
    _fake_fashion_mnist(tmp_path / "mine", gz=False)
    monkeypatch.setenv("REP_TUNE_FASHION_MNIST", str(tmp_path / "mine"))
    assert fashion_mnist.main(["--check"]) == 0 and str(tmp_path / "mine") in capsys.readouterr().out


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
    assert backbone_normalization("vit_micro_patch2_28.fmnist") == ((0.5,) * 3, (0.5,) * 3)
    mean, std = backbone_normalization("vit_base_patch16_224.orig_in21k")
    assert len(mean) == 3 and len(std) == 3


# ---- hostile data (issue 19): readers have bounds -------------------------------------------------------

def test_image_folder_lists_as_torchvision_and_survives_loops_and_fifos(tmp_path):
    import os

    from torchvision.datasets import ImageFolder

    from rep_tune.data import folder
    for name, sub in (("ant", ""), ("ant", "deep/"), ("bee", ""), ("cow", "x/")):
        for i in range(2):
            _png(tmp_path / name / f"{sub}{i}.png", 10 * i)
    (tmp_path / "cow" / "notes.txt").write_text("not an image")
    paths, labels, classes = folder._list(tmp_path)
    ref = ImageFolder(str(tmp_path))
    assert paths == [p for p, _ in ref.samples] and labels.tolist() == [c for _, c in ref.samples]
    assert classes == ref.classes
    # traps torchvision's walk falls into: loops (to the root, to a folder itself), a FIFO named .jpg, a dangling link
    (tmp_path / "ant" / "up").symlink_to("..")
    (tmp_path / "bee" / "self").symlink_to(".")
    os.mkfifo(tmp_path / "bee" / "blocks.jpg")
    (tmp_path / "cow" / "gone.png").symlink_to("nowhere.png")
    assert folder._list(tmp_path)[0] == paths          # the same images, once each; nothing opened
    ts = build_tasks(Scenario(dataset="folder", data_path=str(tmp_path), n_tasks=3, class_order_seed=-1), 8, cache=False)
    assert sum(len(t.train) + len(t.test) for t in ts) == len(paths)


def test_image_folder_of_traps_only_is_refused_naming_the_classes(tmp_path):
    import os

    from rep_tune.data import folder
    for c in ("ant", "bee"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "up").symlink_to("..")
        os.mkfifo(tmp_path / c / "x.jpg")
    with pytest.raises(FileNotFoundError, match="no image files .* for the classes ant, bee"):
        folder._list(tmp_path)


def test_file_images_refuse_a_fifo_without_blocking(tmp_path):
    import os

    from rep_tune.data.images import FileImages, Rendering
    os.mkfifo(tmp_path / "x.jpg")
    with pytest.raises(ValueError, match="x.jpg: cannot read this image .*not a regular image file"):
        FileImages([str(tmp_path / "x.jpg")], Rendering(8)).batch(torch.tensor([0]))


def test_idx_sizes_are_checked_against_the_header_before_reading(tmp_path, monkeypatch):
    from rep_tune.data import idx
    header = bytes([0, 0, 8, 3]) + struct.pack(">III", 20, 28, 28)
    (tmp_path / "ok.gz").write_bytes(gzip.compress(header + bytes(20 * 784)))
    assert idx.read_idx(tmp_path / "ok.gz").shape == (20, 28, 28)
    # a header claiming far more than rep-tune reads, from a tiny file
    (tmp_path / "huge").write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">III", 20, 2 ** 16, 2 ** 16))
    with pytest.raises(ValueError, match="huge: header shape .* declares 85,899,345,920 bytes"):
        idx.read_idx(tmp_path / "huge")
    # a gzip stream that expands past its header: read up to header size + 1 byte, never more
    (tmp_path / "bomb.gz").write_bytes(gzip.compress(header + bytes(4 * 2 ** 20), 1))
    reads = []
    real = idx._read
    monkeypatch.setattr(idx, "_read", lambda path, n: reads.append(n) or real(path, n))
    with pytest.raises(ValueError, match=r"bomb.gz: header shape \(20, 28, 28\) needs 15680 values, found more"):
        idx.read_idx(tmp_path / "bomb.gz")
    assert max(reads) == len(header) + 20 * 784 + 1
    # a gzip header claiming more than deflate can expand the file to
    (tmp_path / "liar.gz").write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">III", 20, 4096, 4096)))
    with pytest.raises(ValueError, match="liar.gz: .* more than a .*-byte gzip file can hold"):
        idx.read_idx(tmp_path / "liar.gz")


def test_a_given_fashion_mnist_path_is_the_only_place_looked(tmp_path, monkeypatch):
    _fake_fashion_mnist(tmp_path / "elsewhere")
    monkeypatch.setenv("REP_TUNE_FASHION_MNIST", str(tmp_path / "elsewhere"))
    assert fashion_mnist.find() == tmp_path / "elsewhere"
    assert fashion_mnist.find(str(tmp_path / "typo")) is None            # never the other copy
    from rep_tune.schema import SchemaError
    with pytest.raises(SchemaError, match="typo"):
        Scenario(dataset="fashion-mnist", data_path=str(tmp_path / "typo"), n_tasks=2).check_reachable("--data-path")
    with pytest.raises(SchemaError, match="field 'data_path': expected an existing folder"):
        Scenario(dataset="digits", data_path=str(tmp_path / "typo"), n_tasks=2).check_reachable("--data-path")


# ---- the dataset registry ----------------------------------------------------------------------------
def test_every_consumer_reads_the_registry():
    """Scenario's check, train --dataset, the search's head width and load_raw: one table."""
    import argparse

    from rep_tune.cli.train import add_arguments
    from rep_tune.data.registry import DATASETS, dataset_names, known_classes
    from rep_tune.schema import SchemaError
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert next(a for a in p._actions if a.dest == "dataset").choices == dataset_names()
    assert dataset_names() == ("fashion-mnist", "digits", "cifar100", "imagenet-r", "core50", "folder")
    assert [known_classes(n) for n in dataset_names()] == [10, 10, 100, 200, 50, None]
    with pytest.raises(SchemaError, match="dataset") as e:
        Scenario(dataset="mnist").validate("s.yaml")
    assert "one of fashion-mnist, digits, cifar100, imagenet-r, core50, folder" in str(e.value)
    with pytest.raises(SchemaError, match="n_tasks"):
        Scenario(dataset="core50", n_tasks=51).validate()           # more tasks than CORe50's 50 objects
    assert all(":" in s.probe and ":" in s.load for s in DATASETS.values())


def test_core50_is_an_image_folder_entry(tmp_path):
    """CORe50 in the image-folder layout (o1..o50/<frames>): one registry entry, the folder loader."""
    from rep_tune.schema import SchemaError
    for c in range(3):
        for i in range(4):
            _png(tmp_path / f"o{c + 1}" / f"C_01_{c + 1:02d}_{i:03d}.png", 60 * c + i)
    s = Scenario(dataset="core50", data_path=str(tmp_path), n_tasks=3, class_order_seed=-1, test_fraction=0.25)
    assert s.check_reachable() == 3
    ts = build_tasks(s, 16, cache=False)
    assert ts.class_names == ["o1", "o2", "o3"] and [len(t.train) for t in ts] == [3, 3, 3]
    with pytest.raises(SchemaError, match="n_tasks"):
        Scenario(dataset="core50", data_path=str(tmp_path), n_tasks=4).check_reachable()   # 3 objects here
