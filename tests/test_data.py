"""Dataset registry: real offline sources, deterministic splits/subsets, clear errors."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
import torch

import lib.data as D
from lib.errors import ConfigError


def test_mnist5k_is_real_stratified_and_deterministic(mnist):
    assert mnist.shape == (1, 28, 28) and len(mnist.train) == 4000 and len(mnist.test) == 1000
    assert mnist.train.x.dtype == torch.uint8 and mnist.train.y.bincount().tolist() == [400] * 10
    again = D.load("mnist5k", prepared_dir=None)
    assert torch.equal(again.test.x, mnist.test.x)


def test_fashion_mnist_from_debian_files_is_the_standard_dataset():
    ds = D.load("fashion_mnist", prepared_dir=None)
    assert (len(ds.train), len(ds.test)) == (60000, 10000)
    assert ds.train.y[:5].tolist() == [9, 0, 0, 3, 0]  # the well-known first training labels
    assert ds.train.y.bincount().tolist() == [6000] * 10


def test_foolbox_samples_give_real_cifar_shapes():
    ds = D.load("cifar10_samples20", prepared_dir=None)
    assert ds.shape == (3, 32, 32) and len(ds.train) == 20
    assert ds.train.y[:4].tolist() == [3, 8, 8, 0]  # the CIFAR-10 test set's first labels


def test_subset_is_deterministic_and_sized(mnist):
    a, b = D.subset(mnist.train, 100, 3), D.subset(mnist.train, 100, 3)
    assert len(a) == 100 and torch.equal(a.y, b.y)
    assert not torch.equal(a.y, D.subset(mnist.train, 100, 4).y)
    assert D.subset(mnist.train, None, 0) is mnist.train


def test_as_float_range(mnist):
    x, _ = D.tensors(D.subset(mnist.test, 10, 0))
    assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1


def test_prepared_round_trip_and_corrupt_file(tmp_path, mnist):
    D.save_prepared(mnist, tmp_path)
    back = D.load("mnist5k", tmp_path)
    assert torch.equal(back.train.x, mnist.train.x) and back.source == mnist.source
    (tmp_path / "mnist5k.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="corrupt"):
        D.load("mnist5k", tmp_path)


def test_unknown_dataset_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown dataset 'imagenet'"):
        D.load("imagenet")


def test_missing_dataset_offline_names_folder_and_offline_profile(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(D, "RAW_DIR", tmp_path)
    with pytest.raises(ConfigError) as err:
        D.load("cifar10", prepared_dir=None)
    message = str(err.value)
    assert "cifar10" in message and str(tmp_path) in message and "'cpu' profile" in message


def test_sizes_beyond_the_data_are_errors_naming_both_sizes(mnist):
    assert D.subset(mnist.train, None, 0) is mnist.train and len(D.subset(mnist.train, len(mnist.train), 0)) == len(
        mnist.train
    )
    with pytest.raises(ConfigError, match=r"4001 examples asked of mnist5k train, which has 4000 \(null means all\)"):
        D.subset(mnist.train, 4001, 0, "mnist5k train")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="must be a positive integer or null"):
            D.subset(mnist.train, bad, 0)
    with pytest.raises(ConfigError, match="limit 6000 asks for more examples than mnist5k has"):
        D.train_val_test(mnist, (0.7, 0.1, 0.2), 0, limit=6000)
    with pytest.raises(ConfigError, match="1001 example images asked of a split of 1000"):
        D.examples(mnist.test, 1001, 0)


def test_hold_out_is_stratified_disjoint_and_checked():
    split = D.Split(torch.arange(1000).view(1000, 1, 1, 1).to(torch.uint8).repeat(1, 1, 2, 2), torch.arange(1000) % 10)
    keep, val = D.hold_out(split, 100, seed=0)
    assert (len(keep), len(val)) == (900, 100) and torch.bincount(val.y).tolist() == [10] * 10
    assert D.hold_out(split, 100, seed=0)[1].y.tolist() == val.y.tolist()  # deterministic
    with pytest.raises(
        ConfigError, match="a validation split of 1000 examples asked of the training split, which has 1000"
    ):
        D.hold_out(split, 1000, seed=0)
