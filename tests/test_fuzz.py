"""Fuzzing the path of `privlab run`: generated `--set` values (wrong types, extremes, NaN,
huge, negative, unicode) either run a round or end in one error line with exit status 2,
never another exception, and never allocate beyond the memory estimate's limit."""

from __future__ import annotations

import resource

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privlab.cli import main

MEMORY_LIMIT = 1 << 30  # PRIVLAB_MEMORY_LIMIT for the fuzzed runs: 1 GiB

KEYS = [
    "nodes",
    "seed",
    "eval_every",
    "name",
    "engine",
    "data.dataset",
    "data.partition",
    "data.alpha",
    "data.shards_per_node",
    "data.test_fraction",
    "data.nonmember_fraction",
    "data.options.num_samples",
    "data.options.dimension",
    "data.options.num_classes",
    "data.options.separation",
    "model.name",
    "model.hidden",
    "model.activation",
    "topology.name",
    "topology.degree",
    "topology.fanout",
    "topology.p",
    "topology.weights",
    "protocol.name",
    "training.lr",
    "training.momentum",
    "training.weight_decay",
    "training.batch_size",
    "training.local_steps",
    "observer.curious_nodes",
    "observer.colluding",
    "observer.eavesdropped_links",
    "observer.rounds",
    "colour",
    "training.colour",
]

NAMES = ["digits", "breast_cancer", "synthetic", "npz", "csv", "mnist", "mlp", "cnn", "logreg"]
NAMES += ["ring", "regular", "complete", "el-oracle", "el-local", "small_world", "torus"]
NAMES += ["erdos_renyi", "dpsgd", "epidemic", "iid", "dirichlet", "shards", "loop", "vectorized"]

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
overrides = st.lists(
    st.tuples(
        st.sampled_from(KEYS),
        st.one_of(values.map(lambda v: yaml.safe_dump(v, default_flow_style=True)), raw_text),
    ),
    min_size=1,
    max_size=4,
)


@pytest.fixture(scope="module")
def memory_limit():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRIVLAB_MEMORY_LIMIT", str(MEMORY_LIMIT))
        yield


@settings(
    max_examples=60,
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
