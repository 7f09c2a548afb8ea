"""Memory estimates refuse runs that cannot fit, before anything big is built."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

import privlab
from privlab.config import ExperimentConfig, parse_config
from privlab.errors import PrivlabError
from privlab.resources import (
    ENV,
    Estimate,
    available_memory,
    check_fits,
    estimate,
    format_size,
    parse_size,
)

GiB = 2**30
DEFAULT = yaml.safe_load((Path(privlab.__file__).parent / "configs" / "default.yaml").read_text())


def config(**overrides) -> ExperimentConfig:
    """The packaged default config with ``overrides`` merged in, section by section."""
    raw = {
        key: {**DEFAULT.get(key, {}), **value} if isinstance(value, dict) else value
        for key, value in overrides.items()
    }
    return parse_config({**DEFAULT, **raw})


def synthetic(**options) -> dict:
    return {"dataset": "synthetic", "options": options}


def max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


REPORTED = [
    ({"model": {"hidden": [10**6]}}, "reduce nodes or model.hidden"),
    ({"data": synthetic(num_samples=10**10)}, "^data.options.num_samples must be an integer in"),
    ({"data": synthetic(dimension=10**9)}, "reduce .*data.options.dimension"),
    ({"data": synthetic(num_classes=10**9)}, "^data.options.num_classes must be an integer in"),
    ({"data": {"dataset": "npz"}}, "^data.options.path must be the path to an .npz file"),
    ({"nodes": 100000, "data": synthetic(num_samples=200000)}, r"largest: node state \[100000"),
]


def test_reported_inputs_are_refused_quickly_without_allocating():
    check_fits(estimate(config()), available=8 * GiB)  # warm up imports
    before = max_rss()
    for overrides, message in REPORTED:
        start = time.perf_counter()
        with pytest.raises(PrivlabError, match=message) as error:
            check_fits(estimate(config(**overrides)), available=8 * GiB)
        assert time.perf_counter() - start < 1.0, overrides
        assert "\n" not in str(error.value)
    assert max_rss() - before < 200 * 2**20


def test_the_environment_variable_sets_the_memory_available(monkeypatch):
    big = estimate(config(nodes=100000, data=synthetic(num_samples=200000)))
    monkeypatch.setenv(ENV, "4G")
    with pytest.raises(PrivlabError) as error:
        check_fits(big)
    message = str(error.value)
    assert message.startswith("run needs about ") and "of the 4.0 GiB available" in message
    assert f"reduce nodes or model.hidden (or set {ENV})" in message
    monkeypatch.setenv(ENV, "1T")
    check_fits(big)


@pytest.mark.parametrize("batch_size", [10**6, 10**12])
def test_huge_batches_cost_no_more_than_the_whole_data(batch_size):
    whole = estimate(config(training={"batch_size": 10**4}))
    huge = estimate(config(training={"batch_size": batch_size}))
    assert huge.parts == whole.parts and huge.total < 200 * 2**20
    check_fits(huge, available=1 * GiB)


def test_estimate_names_parts_and_what_shrinks_them():
    e = estimate(config(observer={"curious_nodes": [0, 1]}, rounds=10))
    assert e.total == sum(e.parts.values())
    assert set(e.parts) == set(e.details) == set(e.remedies)
    assert e.details["node state"] == "[16, 6570] x 6 buffers"  # MLP 64-64-32-10, momentum
    assert e.disk == 10 * 2 * 4 * (6570 * 4 + 32)  # rounds x nodes x degree x message
    assert e.parts["observer buffer"] == e.disk  # under one chunk: all of it in memory
    loop = estimate(config(engine="loop"))
    assert "loop engine models" in loop.parts and "loop engine models" not in e.parts
    cnn = estimate(
        parse_config({**DEFAULT, "model": {"name": "cnn", "channels": [8], "groups": 2}})
    )
    assert cnn.parts["node state"] < e.parts["node state"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_estimate_of_the_default_config_is_within_a_factor_2_of_the_peak():
    """Peak resident memory of a build and a few rounds, over a process that only imports.

    The peak is ``VmHWM``: a child's ``ru_maxrss`` would start from its parent's.
    """
    prelude = "import torch, privlab.experiment, privlab.resources\n"
    work = textwrap.dedent(
        """
        import yaml
        from pathlib import Path
        from privlab.config import parse_config
        raw = yaml.safe_load((Path(privlab.__file__).parent / "configs/default.yaml").read_text())
        engine = privlab.experiment.build(parse_config(raw)).engine
        for t in range(1, 4):
            engine.run_round(t)
        engine.evaluate()
        """
    )
    report = "print(next(s.split()[1] for s in open('/proc/self/status') if s.startswith('VmHWM')))"
    runs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for code in (prelude + report, prelude + work + report)
    ]
    baseline, peak = (1024 * int(run.communicate(timeout=300)[0]) for run in runs)  # kB
    needed = estimate(config()).total
    assert needed / 2 <= peak - baseline <= 2 * needed, (peak - baseline, needed)


def test_check_fits_message_names_the_largest_part():
    e = Estimate(
        parts={"dataset": 2 * GiB, "node state": 15 * GiB},
        details={"dataset": "[9, 9]", "node state": "[100000, 2410] x 4 buffers"},
        remedies={"dataset": "data.dataset", "node state": "nodes or model.hidden"},
        disk=0,
    )
    assert e.largest == "node state" and e.total == 17 * GiB
    check_fits(e, available=22 * GiB)
    with pytest.raises(PrivlabError) as error:
        check_fits(e, available=20 * GiB)  # 17 GiB is over 80% of 20 GiB
    assert str(error.value) == (
        "run needs about 17.0 GiB (largest: node state [100000, 2410] x 4 buffers, 15.0 GiB), "
        f"more than 80% of the 20.0 GiB available; reduce nodes or model.hidden (or set {ENV})"
    )


@pytest.mark.parametrize(
    ("text", "size"),
    [("123", 123), ("2G", 2 * GiB), ("512M", 512 * 2**20), ("1.5GiB", 3 * 2**29), ("8 kb", 8192)],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "2X"])
def test_parse_size_refuses_what_is_not_a_size(text):
    with pytest.raises(PrivlabError, match=f"^{ENV} must be a positive number of bytes"):
        parse_size(text)


def test_format_size():
    assert [format_size(s) for s in (5, 2048, 17.5 * GiB, 3 * 2**50)] == [
        "5 B",
        "2.0 KiB",
        "17.5 GiB",
        "3.0 PiB",
    ]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_available_memory_reads_meminfo_and_cgroups(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    _write(proc / "meminfo", "MemTotal: 9000000 kB\nMemAvailable:    4000000 kB\n")
    assert available_memory(proc=proc, cgroup=cgroup) == 4000000 * 1024
    _write(proc / "self" / "cgroup", "0::/jobs/one\n")
    _write(cgroup / "jobs" / "one" / "memory.max", "max\n")
    _write(cgroup / "jobs" / "memory.max", f"{GiB}\n")
    _write(cgroup / "jobs" / "memory.current", f"{600 * 2**20}\n")
    _write(cgroup / "jobs" / "memory.stat", f"anon 1\ninactive_file {100 * 2**20}\n")
    assert available_memory(proc=proc, cgroup=cgroup) == 524 * 2**20  # 1024 - 600 + 100
    v1 = tmp_path / "v1"
    _write(v1 / "memory" / "memory.limit_in_bytes", f"{GiB}\n")
    _write(v1 / "memory" / "memory.usage_in_bytes", f"{GiB - 2**20}\n")
    assert available_memory(proc=proc, cgroup=v1) == 2**20
    _write(v1 / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")  # unlimited
    assert available_memory(proc=proc, cgroup=v1) == 4000000 * 1024
    monkeypatch.setenv(ENV, "3G")
    assert available_memory(proc=proc, cgroup=cgroup) == 3 * GiB


def test_available_memory_without_proc_asks_the_system(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert 0 < available_memory(proc=tmp_path / "none", cgroup=tmp_path / "none") < 2**60
