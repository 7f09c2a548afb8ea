"""Datasets, file loaders, the torchvision bridge and partitions among nodes."""

from __future__ import annotations

import io
import json
import sys
import types
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from privlab.data import (
    Dataset,
    FederatedData,
    available_datasets,
    available_partitions,
    dataset_shape,
    datasets,
    load_dataset,
    make_federated,
    partition,
)
from privlab.errors import PrivlabError, UnknownNameError
from privlab.rng import derive_seed


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def _entropy(fed: FederatedData) -> float:
    """Mean over nodes of the entropy (nats) of the node's label distribution."""
    hist = np.array(fed.summary()["node_label_histogram"], dtype=float)
    p = hist / hist.sum(1, keepdims=True)
    return float(-(p * np.log(np.where(p > 0, p, 1))).sum(1).mean())


def _same_nodes(a: FederatedData, b: FederatedData) -> bool:
    pairs = zip(a.node_indices, b.node_indices, strict=True)
    return all(np.array_equal(x, y) for x, y in pairs)


# ----------------------------------------------------------------------------- datasets


def test_registries_list_names():
    assert available_datasets() == [
        "breast_cancer",
        "cifar10",
        "csv",
        "digits",
        "fashion_mnist",
        "mnist",
        "npz",
        "synthetic",
    ]
    assert available_partitions() == ["dirichlet", "iid", "shards"]


def test_digits(digits):
    assert digits.name == "digits" and len(digits) == 1797
    assert digits.X.dtype == torch.float32 and digits.y.dtype == torch.int64
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert digits.X.min() == 0.0 and digits.X.max() == 1.0
    assert sorted(digits.y.unique().tolist()) == list(range(10))


def test_breast_cancer_is_zscored():
    data = load_dataset("breast_cancer")
    assert tuple(data.X.shape) == (569, 30) and data.num_classes == 2
    assert data.X.dtype == torch.float32 and data.y.dtype == torch.int64
    assert torch.allclose(data.X.mean(0), torch.zeros(30), atol=1e-5)
    assert torch.allclose(data.X.std(0, unbiased=False), torch.ones(30), atol=1e-4)
    assert data.y.bincount().tolist() == [212, 357]


def test_synthetic_options_and_seed():
    data = load_dataset("synthetic", seed=3, num_samples=101, dimension=5, num_classes=3)
    assert tuple(data.X.shape) == (101, 5) and data.num_classes == 3
    assert data.y.bincount().tolist() == [34, 34, 33]
    again = load_dataset("synthetic", seed=3, num_samples=101, dimension=5, num_classes=3)
    other = load_dataset("synthetic", seed=4, num_samples=101, dimension=5, num_classes=3)
    assert torch.equal(data.X, again.X) and torch.equal(data.y, again.y)
    assert not torch.equal(data.X, other.X)
    assert tuple(load_dataset("synthetic").X.shape) == (2000, 20)


def test_synthetic_separation_controls_difficulty():
    def nearest_mean_accuracy(separation: float) -> float:
        data = load_dataset("synthetic", seed=0, separation=separation)
        means = torch.stack([data.X[data.y == c].mean(0) for c in range(4)])
        return (torch.cdist(data.X, means).argmin(1) == data.y).float().mean().item()

    assert nearest_mean_accuracy(4.0) > 0.99
    assert nearest_mean_accuracy(0.0) < 0.45  # chance is 0.25; means fitted in-sample


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dimension": 0}, r"dimension must be an integer in \[1, 2147483647\]"),
        ({"num_classes": 1}, r"num_classes must be an integer in \[2, 2000\]"),
        ({"num_samples": 3, "num_classes": 4}, r"num_classes must be an integer in \[2, 3\]"),
        ({"num_classes": 10**9}, r"num_classes must be an integer in \[2, 2000\]"),
        ({"num_samples": 10**10}, r"num_samples must be an integer in \[2, 2147483647\]"),
        ({"num_samples": 1}, "num_samples must be an integer in"),
        ({"separation": -1.0}, "separation must be a finite number >= 0"),
        ({"dimension": 2.5}, "dimension must be an integer"),
    ],
)
def test_synthetic_bad_options_name_the_field(options, message):
    for check in (load_dataset, dataset_shape):  # refused before anything is allocated
        with pytest.raises(PrivlabError, match=f"^data.options.{message}"):
            check("synthetic", **options)


def test_unknown_dataset_and_option():
    with pytest.raises(UnknownNameError, match="unknown dataset 'mnits'; valid: .*digits.*mnist"):
        load_dataset("mnits")
    with pytest.raises(
        PrivlabError,
        match="unknown option 'dim' for dataset 'synthetic'; valid: dimension, num_classes",
    ):
        load_dataset("synthetic", dim=3)
    with pytest.raises(PrivlabError, match="unknown option 'path' for dataset 'digits'"):
        load_dataset("digits", path="x.npz")


def test_dataset_validates_its_tensors():
    with pytest.raises(PrivlabError, match="^X must be float32"):
        Dataset("d", torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, dtype=torch.int64), 2)
    with pytest.raises(PrivlabError, match="^y must be labels in 0..1"):
        Dataset("d", torch.zeros(3, 2), torch.tensor([0, 1, 2]), 2)
    with pytest.raises(PrivlabError, match=r"^y must be of shape \[3\]"):
        Dataset("d", torch.zeros(3, 2), torch.tensor([0, 1]), 2)


# ------------------------------------------------------------------------- user files


def test_npz_round_trip_remaps_labels(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 255, size=(12, 2, 3)).astype(np.uint8)
    y = np.array([10, 3, 7, -1] * 3)
    np.savez(tmp_path / "mine.npz", X=X, y=y)
    data = load_dataset("npz", path=tmp_path / "mine.npz")
    assert data.name == "mine" and data.input_shape == (2, 3) and data.num_classes == 4
    assert data.X.dtype == torch.float32
    assert torch.equal(data.X, torch.tensor(X, dtype=torch.float32))
    assert data.y.tolist() == [3, 1, 2, 0] * 3
    direct = load_dataset(str(tmp_path / "mine.npz"))
    assert torch.equal(direct.y, data.y)
    relative = load_dataset("mine.npz", root=tmp_path)
    assert torch.equal(relative.X, data.X)


def test_npz_errors(tmp_path):
    for load in (load_dataset, dataset_shape):
        with pytest.raises(
            PrivlabError,
            match="^data.options.path must be the path to an .npz file with arrays X .* and y "
            r".*, absolute or relative to data.root \(else to the working folder\), got None",
        ):
            load("npz")
    with pytest.raises(PrivlabError, match="nowhere.npz"):
        load_dataset(tmp_path / "nowhere.npz")
    np.savez(tmp_path / "bad.npz", X=np.zeros((3, 2)))
    with pytest.raises(PrivlabError, match=r"missing array\(s\) \['y'\]"):
        load_dataset(tmp_path / "bad.npz")
    np.savez(tmp_path / "short.npz", X=np.zeros((3, 2)), y=np.zeros(2))
    with pytest.raises(PrivlabError, match="N = len"):
        load_dataset(tmp_path / "short.npz")
    np.savez(tmp_path / "nan.npz", X=np.full((2, 2), np.nan), y=np.zeros(2))
    with pytest.raises(PrivlabError, match="finite"):
        load_dataset(tmp_path / "nan.npz")
    with pytest.raises(PrivlabError, match="^name must be a dataset name or a .npz/.csv path"):
        load_dataset(tmp_path / "data.txt")


def test_csv_label_column_choices(tmp_path):
    frame = pd.DataFrame(
        {"a": [1.0, 2.0, 3.0, 4.0], "label": ["cat", "dog", "cat", "eel"], "b": [5, 6, 7, 8]}
    )
    frame.to_csv(tmp_path / "pets.csv", index=False)
    data = load_dataset(tmp_path / "pets.csv")
    assert data.name == "pets" and data.input_shape == (2,) and data.num_classes == 3
    assert data.y.tolist() == [0, 1, 0, 2]
    assert data.X.tolist() == [[1, 5], [2, 6], [3, 7], [4, 8]]

    frame.drop(columns="label").to_csv(tmp_path / "nolabel.csv", index=False)
    last = load_dataset("csv", path=tmp_path / "nolabel.csv")  # falls back to the last column
    assert last.X.tolist() == [[1], [2], [3], [4]] and last.y.tolist() == [0, 1, 2, 3]
    chosen = load_dataset(tmp_path / "nolabel.csv", label_column="a")
    assert chosen.X.tolist() == [[5], [6], [7], [8]]
    with pytest.raises(PrivlabError, match="^data.options.label_column must be one of"):
        load_dataset(tmp_path / "nolabel.csv", label_column="zzz")
    frame.to_csv(tmp_path / "text.csv", index=False)
    with pytest.raises(PrivlabError, match=r"non-numeric: \['label'\]"):
        load_dataset(tmp_path / "text.csv", label_column="a")


# ---------------------------------------------------------------------- dataset_shape


def test_dataset_shape_of_builtin_sets_without_loading(digits):
    assert (
        dataset_shape("digits")
        == (1797, (1, 8, 8), 10)
        == (
            len(digits),
            digits.input_shape,
            digits.num_classes,
        )
    )
    cancer = load_dataset("breast_cancer")
    assert dataset_shape("breast_cancer") == (len(cancer), cancer.input_shape, 2)
    synthetic = load_dataset("synthetic", num_samples=101, dimension=5, num_classes=3)
    assert (
        dataset_shape("synthetic", num_samples=101, dimension=5, num_classes=3)
        == (
            101,
            (5,),
            3,
        )
        == (len(synthetic), synthetic.input_shape, synthetic.num_classes)
    )
    assert dataset_shape("synthetic", num_samples=10**9, dimension=10**6).num_samples == 10**9


def test_dataset_shape_of_files_matches_the_loader(tmp_path):
    np.savez_compressed(tmp_path / "a.npz", X=np.zeros((12, 2, 3), np.uint8), y=[5, 7, 9] * 4)
    pd.DataFrame({"a": range(7), "b": range(7), "label": list("xyzxyzq")}).to_csv(
        tmp_path / "b.csv", index=False
    )
    for name in ("a.npz", "b.csv"):
        loaded = load_dataset(name, root=tmp_path)
        shape = dataset_shape(name, root=tmp_path)
        assert shape == (len(loaded), loaded.input_shape, loaded.num_classes)
    assert dataset_shape(tmp_path / "b.csv", label_column="a") == (7, (2,), 7)
    with pytest.raises(PrivlabError, match="^data.options.label_column must be one of"):
        dataset_shape(tmp_path / "b.csv", label_column="c")


def test_npz_shape_reads_only_the_header_of_X(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**6, 32)}
    )
    labels = io.BytesIO()
    np.save(labels, np.arange(10**6) % 3)
    with zipfile.ZipFile(tmp_path / "big.npz", "w") as archive:
        archive.writestr("X.npy", header.getvalue())  # a header and no data
        archive.writestr("y.npy", labels.getvalue())
    assert dataset_shape(tmp_path / "big.npz") == (10**6, (32,), 3)
    np.savez(tmp_path / "short.npz", X=np.zeros((3, 2)), y=np.zeros(2))
    with pytest.raises(PrivlabError, match="N = len"):
        dataset_shape(tmp_path / "short.npz")
    np.savez(tmp_path / "bad.npz", X=np.zeros((3, 2)))
    with pytest.raises(PrivlabError, match=r"missing array\(s\) \['y'\]"):
        dataset_shape(tmp_path / "bad.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(PrivlabError, match="not an .npz archive"):
        dataset_shape(tmp_path / "text.npz")


def test_dataset_shape_of_torchvision_sets_needs_no_files(tmp_path):
    assert dataset_shape("mnist", root=tmp_path) == (60000, (1, 28, 28), 10)
    assert dataset_shape("cifar10", root=tmp_path, split="test") == (10000, (3, 32, 32), 10)
    with pytest.raises(PrivlabError, match="needs root="):
        dataset_shape("fashion_mnist")
    with pytest.raises(PrivlabError, match="^data.options.split must be"):
        dataset_shape("mnist", root=tmp_path, split="val")


def test_dataset_shape_loads_a_dataset_registered_without_one(monkeypatch, digits):
    monkeypatch.setitem(datasets._entries, "tiny", lambda: digits)
    assert dataset_shape("tiny") == (1797, (1, 8, 8), 10)


# ------------------------------------------------------------------------ torchvision


def test_torchvision_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(PrivlabError, match="dataset 'mnist' needs torchvision: pip install"):
        load_dataset("mnist", root=tmp_path)


def _fake_torchvision(monkeypatch, data: np.ndarray | None) -> None:
    """Install a stand-in torchvision whose datasets hold ``data`` (None: files missing)."""

    class Source:
        classes = [str(i) for i in range(10)]

        def __init__(self, root: str, train: bool, download: bool):
            assert download is False
            if data is None:
                raise RuntimeError("Dataset not found. You can use download=True to download it")
            self.data, self.targets = data, list(range(len(data)))

    module = types.ModuleType("torchvision.datasets")
    module.MNIST = module.FashionMNIST = module.CIFAR10 = Source
    package = types.ModuleType("torchvision")
    package.datasets = module
    monkeypatch.setitem(sys.modules, "torchvision", package)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", module)


def test_torchvision_files_missing_never_downloads(monkeypatch, tmp_path):
    _fake_torchvision(monkeypatch, None)
    with pytest.raises(PrivlabError, match="no cifar10 files under root .*never downloads"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(PrivlabError, match="needs root="):
        load_dataset("mnist")


def test_torchvision_images_become_nchw_in_unit_range(monkeypatch, tmp_path):
    _fake_torchvision(monkeypatch, np.full((4, 32, 32, 3), 255, dtype=np.uint8))
    cifar = load_dataset("cifar10", root=tmp_path)
    assert cifar.input_shape == (3, 32, 32) and cifar.X.dtype == torch.float32
    assert cifar.X.max() == 1.0 and cifar.y.tolist() == [0, 1, 2, 3] and cifar.num_classes == 10
    _fake_torchvision(monkeypatch, np.zeros((2, 28, 28), dtype=np.uint8))
    mnist = load_dataset("fashion_mnist", root=tmp_path, split="test")
    assert mnist.input_shape == (1, 28, 28) and mnist.X.max() == 0.0
    with pytest.raises(PrivlabError, match="^data.options.split must be 'train' or 'test'"):
        load_dataset("mnist", root=tmp_path, split="val")


# ------------------------------------------------------------------------- partitions


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partition_disjoint_covering_deterministic(digits, scheme):
    fed = partition(digits, 7, scheme, seed=5)
    nodes = np.concatenate(fed.node_indices)
    every = np.concatenate([nodes, fed.nonmember_indices, fed.test_indices])
    assert len(every) == len(digits) and set(every.tolist()) == set(range(len(digits)))
    assert fed.num_nodes == 7 and fed.node_sizes().min() >= 1
    assert len(fed.test_indices) == round(0.2 * 1797) == len(fed.nonmember_indices)
    assert all(idx.dtype == np.int64 and not idx.flags.writeable for idx in fed.node_indices)
    again = partition(digits, 7, scheme, seed=5)
    assert _same_nodes(fed, again)
    assert np.array_equal(fed.test_indices, again.test_indices)
    other = partition(digits, 7, scheme, seed=6)
    assert not np.array_equal(fed.test_indices, other.test_indices)


def test_split_is_stratified(digits):
    fed = partition(digits, 2, test_fraction=0.3, nonmember_fraction=0.1)
    labels = digits.y.numpy()
    overall = np.bincount(labels) / len(labels)
    for idx in (fed.test_indices, fed.nonmember_indices):
        assert np.abs(np.bincount(labels[idx], minlength=10) / len(idx) - overall).max() < 0.01
    assert len(fed.test_indices) == 539 and len(fed.nonmember_indices) == 180
    assert len(partition(digits, 2, test_fraction=0.0).test_indices) == 0


def test_iid_sizes_are_near_equal(digits):
    sizes = partition(digits, 10, "iid").node_sizes()
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == 1797 - 2 * 359


def test_dirichlet_skew_follows_alpha(digits):
    iid = np.mean([_entropy(partition(digits, 10, "iid", seed=s)) for s in range(3)])
    skewed = np.mean(
        [_entropy(partition(digits, 10, "dirichlet", alpha=0.1, seed=s)) for s in range(3)]
    )
    mild = np.mean(
        [_entropy(partition(digits, 10, "dirichlet", alpha=100.0, seed=s)) for s in range(3)]
    )
    assert iid > np.log(10) - 0.05
    assert skewed < 0.6 * iid
    assert skewed < mild and abs(mild - iid) < 0.05


def test_dirichlet_repair_fills_every_node():
    data = load_dataset("synthetic", num_samples=60, num_classes=2)
    for seed in range(10):
        fed = partition(
            data, 30, "dirichlet", alpha=0.01, seed=seed, test_fraction=0.0, nonmember_fraction=0.0
        )
        assert fed.node_sizes().min() >= 1 and fed.node_sizes().sum() == 60


@pytest.mark.parametrize("per_node", [1, 2, 3])
def test_shards_limit_labels_per_node(digits, per_node):
    # shards (of 54, 27, 18 samples) are smaller than every class (~108), as in McMahan et al.
    fed = partition(digits, 20, "shards", shards_per_node=per_node, seed=1)
    labels = digits.y.numpy()
    counts = [len(np.unique(labels[idx])) for idx in fed.node_indices]
    assert max(counts) <= 2 * per_node
    assert np.mean(counts) < 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_nodes": 1}, "^num_nodes must be an integer >= 2"),
        ({"num_nodes": 2000}, r"^num_nodes must be <= the training pool size \(1079\)"),
        ({"scheme": "dirichlet", "alpha": 0.0}, "^alpha must be > 0"),
        ({"scheme": "shards", "shards_per_node": 0}, "^shards_per_node must be an integer >= 1"),
        ({"scheme": "shards", "shards_per_node": 300}, "^shards_per_node must be <="),
        ({"test_fraction": 1.0}, r"^test_fraction must be in \[0, 1\)"),
        ({"nonmember_fraction": -0.1}, r"^nonmember_fraction must be in \[0, 1\)"),
        (
            {"test_fraction": 0.5, "nonmember_fraction": 0.5},
            "^test_fraction \\+ nonmember_fraction must be < 1",
        ),
    ],
)
def test_partition_bad_values_name_the_field(digits, kwargs, message):
    kwargs = {"num_nodes": 5, **kwargs}
    with pytest.raises(PrivlabError, match=message):
        partition(digits, **kwargs)


def test_unknown_partition_lists_names(digits):
    with pytest.raises(
        UnknownNameError, match="unknown partition 'nonidd'; valid: dirichlet, iid, shards"
    ):
        partition(digits, 4, "nonidd")


def test_padded_node_indices_and_summary(digits):
    fed = partition(digits, 3, "dirichlet", alpha=0.3, seed=2)
    padded, sizes = fed.padded_node_indices()
    assert padded.dtype == sizes.dtype == torch.int64
    assert padded.shape == (3, int(sizes.max())) and sizes.tolist() == fed.node_sizes().tolist()
    for row, size, idx in zip(padded, sizes, fed.node_indices, strict=True):
        assert row[:size].tolist() == idx.tolist() and (row[size:] == -1).all()
    summary = json.loads(json.dumps(fed.summary()))
    assert summary["num_nodes"] == 3 and summary["n_train"] == int(sizes.sum())
    assert summary["node_size_min"] == int(sizes.min()) and summary["n_test"] == 359
    assert [sum(h) for h in summary["node_label_histogram"]] == sizes.tolist()


def test_federated_data_rejects_overlap(digits):
    with pytest.raises(PrivlabError, match="disjoint"):
        FederatedData(digits, (np.array([0, 1]), np.array([1, 2])), np.array([3]), np.array([4]))
    with pytest.raises(PrivlabError, match="non-empty for every node"):
        FederatedData(
            digits, (np.array([0]), np.array([], dtype=np.int64)), np.array([3]), np.array([4])
        )


def test_make_federated_loads_and_partitions():
    fed = make_federated(
        "synthetic",
        4,
        "shards",
        seed=1,
        dataset_options={"num_samples": 100},
        shards_per_node=1,
        test_fraction=0.1,
    )
    assert len(fed.dataset) == 100 and len(fed.test_indices) == 10 and fed.num_nodes == 4
    same = partition(  # both seeds come from the seed's tree
        load_dataset("synthetic", seed=derive_seed(1, "dataset"), num_samples=100),
        4,
        "shards",
        seed=derive_seed(1, "partition"),
        shards_per_node=1,
        test_fraction=0.1,
    )
    assert _same_nodes(fed, same)


@settings(max_examples=25, deadline=None)
@given(
    scheme=st.sampled_from(["iid", "dirichlet", "shards"]),
    num_nodes=st.integers(2, 40),
    seed=st.integers(0, 2**32 - 1),
    test_fraction=st.floats(0, 0.4),
)
def test_partition_invariants(scheme, num_nodes, seed, test_fraction):
    data = load_dataset("synthetic", num_samples=150, dimension=2, num_classes=3)
    fed = partition(
        data,
        num_nodes,
        scheme,
        seed=seed,
        alpha=0.2,
        shards_per_node=1,
        test_fraction=test_fraction,
    )
    nodes = np.concatenate(fed.node_indices)
    assert fed.node_sizes().min() >= 1 and len(np.unique(nodes)) == len(nodes)
    assert len(nodes) + len(fed.nonmember_indices) + len(fed.test_indices) == 150
