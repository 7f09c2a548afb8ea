"""Fuzzing the path of `privlab run`: generated `--set` values (wrong types, extremes, NaN,
huge, negative, unicode) either run a round or end in one error line with exit status 2,
never another exception, and never allocate beyond the memory estimate's limit."""

from __future__ import annotations

import resource

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from privlab.cli import main

MEMORY_LIMIT = 1 << 30  # PRIVLAB_MEMORY_LIMIT for the fuzzed runs: 1 GiB

NAMES = ["digits", "breast_cancer", "synthetic", "npz", "csv", "mnist", "mlp", "cnn", "logreg"]
NAMES += ["ring", "regular", "complete", "el-oracle", "el-local", "small_world", "torus"]
NAMES += [
    "erdos_renyi",
    "dpsgd",
    "d-psgd",
    "epidemic",
    "iid",
    "dirichlet",
    "shards",
    "loop",
    "vectorized",
]

scalars = st.one_of(
    st.integers(min_value=-(10**12), max_value=10**12),
    st.sampled_from([0, 1, 2, 3, 7, 10**9, 10**18, 2**63, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 1e300, 0.5, 1.0, 1e10]),
    st.booleans(),
    st.none(),
    st.sampled_from(NAMES),
    st.text(max_size=12),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.lists(st.lists(st.integers(-3, 40), max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=5), scalars, max_size=2),
)
raw_text = st.sampled_from(
    ["[1,", "{a: 1", "- 1", ": :", "\u00e9\u00e8", "a: b: c", "!!python/none"]
)
fraction = st.floats(0, 0.6)
# per key, values a user might plausibly write (so that many examples run a round) ...
PLAUSIBLE = {
    "nodes": st.integers(2, 40),
    "seed": st.integers(0, 2**63 - 1),
    "eval_every": st.integers(1, 3),
    "name": st.text(max_size=20),
    "engine": st.sampled_from(["vectorized", "loop"]),
    "data.dataset": st.sampled_from(["digits", "breast_cancer", "synthetic"]),
    "data.partition": st.sampled_from(["iid", "dirichlet", "shards"]),
    "data.alpha": st.floats(1e-3, 100),
    "data.shards_per_node": st.integers(1, 6),
    "data.test_fraction": fraction,
    "data.nonmember_fraction": fraction,
    "data.options.num_samples": st.integers(2, 600),
    "data.options.dimension": st.integers(1, 64),
    "data.options.num_classes": st.integers(2, 12),
    "data.options.separation": st.floats(0, 10),
    "model.name": st.sampled_from(["mlp", "logreg", "cnn"]),
    "model.hidden": st.lists(st.integers(1, 64), max_size=3),
    "model.activation": st.sampled_from(["relu", "tanh", "sigmoid", "gelu"]),
    "topology.name": st.sampled_from(NAMES[9:16] + ["erdos_renyi"]),
    "topology.degree": st.integers(1, 12),
    "topology.fanout": st.integers(1, 12),
    "topology.p": st.floats(0, 1),
    "topology.weights": st.sampled_from(["metropolis", "uniform"]),
    "protocol.name": st.sampled_from(["d-psgd", "epidemic"]),
    "training.lr": st.floats(1e-6, 1e3),
    "training.momentum": st.floats(0, 0.999),
    "training.weight_decay": st.floats(0, 1),
    "training.batch_size": st.integers(1, 5000),
    "training.local_steps": st.integers(1, 4),
    "observer.curious_nodes": st.lists(st.integers(0, 40), max_size=3),
    "observer.colluding": st.booleans(),
    "observer.eavesdropped_links": st.lists(
        st.lists(st.integers(0, 40), min_size=2, max_size=2), max_size=2
    ),
    "observer.rounds": st.lists(st.integers(0, 2), max_size=2),
    "colour": scalars,
    "training.colour": scalars,
}
# ... and anything at all: wrong types, extremes, NaN, huge, negative, unicode, bad YAML.
wild = st.one_of(values.map(lambda v: yaml.safe_dump(v, default_flow_style=True)), raw_text)


def override(key: str) -> st.SearchStrategy[tuple[str, str]]:
    plausible = PLAUSIBLE[key].map(lambda v: yaml.safe_dump(v, default_flow_style=True))
    choice = st.sampled_from(range(8)).flatmap(lambda i: wild if i == 7 else plausible)
    return st.tuples(st.just(key), choice)


overrides = st.lists(st.sampled_from(sorted(PLAUSIBLE)).flatmap(override), min_size=1, max_size=5)


@pytest.fixture(scope="module")
def memory_limit():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRIVLAB_MEMORY_LIMIT", str(MEMORY_LIMIT))
        yield


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sets=overrides)
def test_any_set_runs_a_round_or_fails_in_one_line(sets, tmp_path_factory, capfd, memory_limit):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    args = [f"--set={key}={value.strip()}" for key, value in sets]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    code = main(["run", "default", "--quiet", "--out", str(out), *args, "--set=rounds=1"])
    err = capfd.readouterr().err
    event(f"exit status {code}")
    if code == 0:
        assert (out / "summary.json").exists()
    else:
        assert code in (2, 3), (code, err)
        lines = [line for line in err.splitlines() if line.startswith("privlab: error: ")]
        assert len(lines) == 1 and "Traceback" not in err, err
        if code == 2:
            assert not (out / "summary.json").exists()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert grown <= MEMORY_LIMIT, f"peak memory grew by {grown / 2**20:.0f} MiB with {args}"
