"""Datasets: embedded, user files, torchvision when present.

A :class:`Dataset` holds every sample as tensors; :func:`dataset_shape` tells its size, sample
shape and class count without loading it. :func:`make_federated` loads a dataset and splits it
among nodes with :func:`privlab.partition.partition`; the names of :mod:`privlab.partition`
are re-exported here. All randomness comes from streams of the seed's tree (``privlab.rng``).
"""

from __future__ import annotations

import importlib
import inspect
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from privlab.errors import PrivlabError, check, is_integer
from privlab.partition import (
    FederatedData,
    Partitioner,
    PartitionOptions,
    available_partitions,
    partition,
    partitions,
)
from privlab.registry import Registry
from privlab.rng import derive_seed

__all__ = [
    "SYNTHETIC_MAX",
    "Dataset",
    "DatasetShape",
    "FederatedData",
    "Loader",
    "PartitionOptions",
    "Partitioner",
    "available_datasets",
    "available_partitions",
    "dataset_shape",
    "datasets",
    "load_dataset",
    "make_federated",
    "partition",
    "partitions",
]

Loader = Callable[..., "Dataset"]

datasets: Registry[Loader] = Registry("dataset")

_FILE_SUFFIXES = {".npz": "npz", ".csv": "csv"}
_TORCHVISION = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}
_TORCHVISION_SHAPES = {  # (train size, test size, image shape); 10 classes each
    "mnist": (60000, 10000, (1, 28, 28)),
    "fashion_mnist": (60000, 10000, (1, 28, 28)),
    "cifar10": (50000, 10000, (3, 32, 32)),
}
SYNTHETIC_MAX = 2**31 - 1
"""Largest ``num_samples`` and ``dimension`` of the synthetic dataset."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """All samples of a classification task: ``X`` float32 ``[N, *input_shape]``, ``y`` int64."""

    name: str
    X: torch.Tensor
    y: torch.Tensor
    num_classes: int

    def __post_init__(self) -> None:
        check(self.X.dtype == torch.float32, "X", "float32", self.X.dtype)
        check(self.X.dim() >= 2, "X", "of shape [N, *input_shape]", tuple(self.X.shape))
        check(self.y.dtype == torch.int64, "y", "int64", self.y.dtype)
        check(
            self.y.shape == self.X.shape[:1], "y", f"of shape [{len(self.X)}]", tuple(self.y.shape)
        )
        check(self.num_classes >= 1, "num_classes", ">= 1", self.num_classes)
        if len(self.y):
            low, high = int(self.y.min()), int(self.y.max())
            check(
                low >= 0 and high < self.num_classes,
                "y",
                f"labels in 0..{self.num_classes - 1}",
                (low, high),
            )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample."""
        return tuple(self.X.shape[1:])

    def __len__(self) -> int:
        return len(self.y)


# --------------------------------------------------------------------------- loading


def available_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset` (a path to a .npz or .csv file works too)."""
    return datasets.names()


def load_dataset(
    name: str | Path, *, root: str | Path | None = None, seed: int = 0, **options
) -> Dataset:
    """Load the dataset ``name`` (a registered name or a path to a .npz/.csv file).

    ``root`` is the folder of torchvision files (privlab never downloads) and the base of
    relative ``path`` options; ``seed`` drives generated datasets. Other keyword
    arguments are the dataset's options; an unknown one is an error listing valid ones.
    """
    name, options = _resolve_name(name, options)
    loader = datasets.with_options(name, options, reserved=("root", "seed"))
    return _call(loader, root, seed, options)


class DatasetShape(NamedTuple):
    """What a dataset holds, known without loading it."""

    num_samples: int
    input_shape: tuple[int, ...]
    num_classes: int


def dataset_shape(
    name: str | Path, *, root: str | Path | None = None, seed: int = 0, **options
) -> DatasetShape:
    """``(num_samples, input_shape, num_classes)`` of what :func:`load_dataset` would load.

    Built-in datasets answer without loading: known constants, the synthetic options, the
    array headers of a .npz file (plus its labels), the label column of a .csv file.
    Options are checked as the loader checks them. A dataset registered elsewhere is
    loaded.
    """
    name, options = _resolve_name(name, options)
    loader = datasets.with_options(name, options, reserved=("root", "seed"))
    if loader in _SHAPES:
        return _call(_SHAPES[loader], root, seed, options)
    dataset = _call(loader, root, seed, options)
    return DatasetShape(len(dataset), dataset.input_shape, dataset.num_classes)


_SHAPES: dict[Callable, Callable[..., DatasetShape]] = {}
"""Shape functions of the built-in loaders, keyed by the loader."""


def _shape_of(loader: Loader) -> Callable:
    def register(shape: Callable[..., DatasetShape]) -> Callable[..., DatasetShape]:
        _SHAPES[loader] = shape
        return shape

    return register


def _resolve_name(name: str | Path, options: dict) -> tuple[str, dict]:
    """A .npz/.csv path given as the name becomes that loader with a ``path`` option."""
    suffix = Path(name).suffix.lower()
    if isinstance(name, Path) or suffix in _FILE_SUFFIXES:
        check(suffix in _FILE_SUFFIXES, "name", "a dataset name or a .npz/.csv path", str(name))
        check(
            "path" not in options,
            "data.options.path",
            "given once (the name is already a path)",
            options.get("path"),
        )
        return _FILE_SUFFIXES[suffix], {**options, "path": name}
    return str(name), options


def _call(function: Callable, root: str | Path | None, seed: int, options: dict):
    """Call a loader or shape function with the context parameters it takes."""
    params = inspect.signature(function).parameters
    context = {"root": None if root is None else Path(root), "seed": seed}
    return function(**{k: v for k, v in context.items() if k in params}, **options)


def _option(name: str) -> str:
    """The config path of a dataset option."""
    return f"data.options.{name}"


@datasets.register("digits")
def _digits() -> Dataset:
    """UCI handwritten digits via scikit-learn: ``[1797, 1, 8, 8]`` in [0, 1], 10 classes."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    X = torch.tensor(bunch.data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return Dataset("digits", X, torch.tensor(bunch.target, dtype=torch.int64), 10)


@_shape_of(_digits)
def _digits_shape() -> DatasetShape:
    return DatasetShape(1797, (1, 8, 8), 10)


@datasets.register("breast_cancer")
def _breast_cancer() -> Dataset:
    """Wisconsin breast cancer via scikit-learn: 30 features, 2 classes.

    Features are z-scored with the mean and standard deviation of the whole set
    (test samples included), a negligible leak for a fixed benchmark.
    """
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    features = (bunch.data - bunch.data.mean(0)) / bunch.data.std(0)
    X = torch.tensor(features, dtype=torch.float32)
    return Dataset("breast_cancer", X, torch.tensor(bunch.target, dtype=torch.int64), 2)


@_shape_of(_breast_cancer)
def _breast_cancer_shape() -> DatasetShape:
    return DatasetShape(569, (30,), 2)


@datasets.register("synthetic")
def _synthetic(
    seed: int,
    num_samples: int = 2000,
    dimension: int = 20,
    num_classes: int = 4,
    separation: float = 2.0,
) -> Dataset:
    """Gaussian mixture: class means ~ N(0, separation^2 I), samples ~ N(mean, I).

    Classes are balanced (sizes differ by at most one); ``seed`` fixes everything.
    """
    shape = _synthetic_shape(num_samples, dimension, num_classes, separation)
    num_samples, (dimension,), num_classes = shape
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=separation, size=(num_classes, dimension))
    y = rng.permutation(np.arange(num_samples) % num_classes)
    X = means[y] + rng.normal(size=(num_samples, dimension))
    return Dataset(
        "synthetic", torch.tensor(X, dtype=torch.float32), torch.from_numpy(y), num_classes
    )


@_shape_of(_synthetic)
def _synthetic_shape(
    num_samples: int = 2000, dimension: int = 20, num_classes: int = 4, separation: float = 2.0
) -> DatasetShape:
    """The synthetic dataset's shape, after checking its options."""
    num_samples = _in_range(num_samples, "num_samples", 2, SYNTHETIC_MAX)
    dimension = _in_range(dimension, "dimension", 1, SYNTHETIC_MAX)
    num_classes = _in_range(num_classes, "num_classes", 2, num_samples)
    ok = isinstance(separation, Real) and np.isfinite(separation) and separation >= 0
    check(ok, _option("separation"), "a finite number >= 0", separation)
    return DatasetShape(num_samples, (dimension,), num_classes)


def _in_range(value: object, name: str, low: int, high: int) -> int:
    ok = is_integer(value) and low <= value <= high
    check(ok, _option(name), f"an integer in [{low}, {high}]", value)
    return int(value)


def _existing_file(path: str | Path | None, root: Path | None, what: str) -> Path:
    check(
        path is not None,
        _option("path"),
        f"the path to {what}, absolute or relative to data.root (else to the working folder)",
        path,
    )
    path = Path(path).expanduser()
    if root is not None and not path.is_absolute():
        path = root / path
    if not path.is_file():
        raise PrivlabError(f"path {str(path)!r} is not an existing file")
    return path


def _check_array_shapes(features: tuple[int, ...], labels: tuple[int, ...], path: Path) -> None:
    if len(features) < 2 or len(labels) < 1 or features[0] != labels[0]:
        n = labels[0] if labels else 0
        raise PrivlabError(
            f"{path}: X must have shape [N, ...] with N = len(y) = {n}, got {features}"
        )


def _from_arrays(name: str, features: np.ndarray, labels: np.ndarray, path: Path) -> Dataset:
    """Build a dataset from user arrays; labels become their rank among the distinct labels."""
    _check_array_shapes(features.shape, labels.shape, path)
    try:
        X = np.asarray(features, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise PrivlabError(f"{path}: features must be numeric ({error})") from None
    if not np.isfinite(X).all():
        raise PrivlabError(f"{path}: features must be finite (found NaN or inf)")
    codes, classes = pd.factorize(pd.Series(labels.reshape(-1)), sort=True)
    if (codes < 0).any():
        raise PrivlabError(f"{path}: labels must not be missing")
    return Dataset(
        name, torch.from_numpy(X), torch.from_numpy(codes.astype(np.int64)), max(len(classes), 1)
    )


@datasets.register("npz")
def _npz(root: Path | None, path: str | Path | None = None) -> Dataset:
    """Arrays ``X`` (``[N, ...]``, any numeric dtype) and ``y`` (``[N]`` labels) of a .npz file.

    Labels are remapped to 0..C-1 in sorted order (identity when they already are 0..C-1).
    """
    path = _existing_file(path, root, _NPZ)
    with np.load(path, allow_pickle=False) as archive:
        _check_npz_members(archive.files, path)
        return _from_arrays(path.stem, archive["X"], archive["y"], path)


_NPZ = "an .npz file with arrays X [N, ...] and y [N]"


def _check_npz_members(files: list[str], path: Path) -> None:
    missing = sorted({"X", "y"} - set(files))
    if missing:
        raise PrivlabError(f"{path}: missing array(s) {missing}; found {files}")


@_shape_of(_npz)
def _npz_shape(root: Path | None, path: str | Path | None = None) -> DatasetShape:
    """Shapes from the .npy headers inside the archive; only the labels are read."""
    path = _existing_file(path, root, _NPZ)
    try:
        with zipfile.ZipFile(path) as archive:
            shapes = {
                member.removesuffix(".npy"): _npy_shape(archive, member)
                for member in archive.namelist()
                if member.endswith(".npy")
            }
    except zipfile.BadZipFile:
        raise PrivlabError(f"{path}: not an .npz archive") from None
    _check_npz_members(sorted(shapes), path)
    _check_array_shapes(shapes["X"], shapes["y"], path)
    with np.load(path, allow_pickle=False) as archive:
        num_classes = pd.Series(archive["y"].reshape(-1)).nunique()
    return DatasetShape(shapes["X"][0], shapes["X"][1:], max(num_classes, 1))


def _npy_shape(archive: zipfile.ZipFile, member: str) -> tuple[int, ...]:
    """The shape in a .npy member's header, reading nothing past the header."""
    with archive.open(member) as file:
        version = np.lib.format.read_magic(file)
        if version == (1, 0):
            return tuple(np.lib.format.read_array_header_1_0(file)[0])
        if version == (2, 0):
            return tuple(np.lib.format.read_array_header_2_0(file)[0])
        return np.lib.format.read_array(file, allow_pickle=False).shape


@datasets.register("csv")
def _csv(
    root: Path | None, path: str | Path | None = None, label_column: str | None = None
) -> Dataset:
    """Numeric feature columns and one label column of a .csv file with a header row.

    The label column is ``label_column``, else ``"label"`` when present, else the last
    column. Labels (numbers or strings) are remapped to 0..C-1 in sorted order.
    """
    path = _existing_file(path, root, _CSV)
    frame = pd.read_csv(path)
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    label_column = _label_column(columns, label_column)
    features = frame.drop(columns=[label_column])
    text = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if text or features.shape[1] == 0:
        raise PrivlabError(
            f"{path}: feature columns must be numeric and non-empty; non-numeric: {text}"
        )
    return _from_arrays(path.stem, features.to_numpy(), frame[label_column].to_numpy(), path)


_CSV = "a .csv file with a header row"


def _label_column(columns: list[str], label_column: str | None) -> str:
    if label_column is None:
        label_column = "label" if "label" in columns else columns[-1]
    check(label_column in columns, _option("label_column"), f"one of {columns}", label_column)
    return label_column


@_shape_of(_csv)
def _csv_shape(
    root: Path | None, path: str | Path | None = None, label_column: str | None = None
) -> DatasetShape:
    """Columns from the header; samples and classes from the label column alone."""
    path = _existing_file(path, root, _CSV)
    columns = [str(c) for c in pd.read_csv(path, nrows=0).columns]
    label_column = _label_column(columns, label_column)
    labels = pd.read_csv(path, usecols=[label_column]).iloc[:, 0]
    return DatasetShape(len(labels), (len(columns) - 1,), max(labels.nunique(), 1))


def _torchvision_loader(name: str) -> Loader:
    def load(root: Path | None, split: str = "train") -> Dataset:
        _check_split(split)
        try:
            tv_datasets = importlib.import_module("torchvision.datasets")
        except ImportError:
            raise PrivlabError(
                f"dataset {name!r} needs torchvision: pip install torchvision"
            ) from None
        _check_root(name, root)
        try:
            source = getattr(tv_datasets, _TORCHVISION[name])(
                str(root), train=split == "train", download=False
            )
        except (RuntimeError, FileNotFoundError):
            raise PrivlabError(
                f"no {name} files under root {str(root)!r}; privlab never downloads: fetch "
                f"them once with torchvision.datasets.{_TORCHVISION[name]}(root, download=True)"
            ) from None
        images = torch.as_tensor(np.asarray(source.data))
        images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
        X = images.to(torch.float32).div_(255.0).contiguous()
        y = torch.as_tensor(np.asarray(source.targets), dtype=torch.int64)
        return Dataset(name, X, y, len(source.classes))

    load.__doc__ = f"torchvision {_TORCHVISION[name]} from files under ``root``, [N, C, H, W]."
    return load


def _torchvision_shape(name: str) -> Callable[..., DatasetShape]:
    def shape(root: Path | None, split: str = "train") -> DatasetShape:
        _check_split(split)
        _check_root(name, root)
        train, test, image = _TORCHVISION_SHAPES[name]
        return DatasetShape(train if split == "train" else test, image, 10)

    return shape


def _check_split(split: str) -> None:
    check(split in ("train", "test"), _option("split"), "'train' or 'test'", split)


def _check_root(name: str, root: Path | None) -> None:
    if root is None:
        raise PrivlabError(
            f"dataset {name!r} needs root=<folder holding its files>; privlab never downloads"
        )


for _name in _TORCHVISION:
    _loader = datasets.register(_name)(_torchvision_loader(_name))
    _shape_of(_loader)(_torchvision_shape(_name))


# ------------------------------------------------------------- loading and partitioning


def make_federated(
    name: str | Path,
    num_nodes: int,
    scheme: str = "iid",
    *,
    root: str | Path | None = None,
    seed: int = 0,
    dataset_options: dict | None = None,
    **partition_kw,
) -> FederatedData:
    """:func:`load_dataset` then :func:`partition`, with seeds derived from ``seed``'s tree
    (streams "dataset" and "partition", ``privlab.rng.derive_seed``)."""
    dataset_seed, partition_seed = derive_seed(seed, "dataset"), derive_seed(seed, "partition")
    dataset = load_dataset(name, root=root, seed=dataset_seed, **(dataset_options or {}))
    return partition(dataset, num_nodes, scheme, seed=partition_seed, **partition_kw)
