"""``device: auto|cpu|cuda``: what the config accepts, what this machine resolves it to,
and the clear refusals (a GPU that is not there, the loop engine on a GPU). The runs on
a device other than the CPU are in ``test_device_runs.py``."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from conftest import make_engine

from privlab.config import parse_config
from privlab.devices import on_device, resolve_device
from privlab.errors import PrivlabError
from privlab.experiment import build, run
from privlab.plan import CommPlan
from privlab.protocol import PROTOCOLS

SMALL = {"nodes": 6, "rounds": 2, "eval_every": 1, "model": {"name": "mlp", "hidden": [8]}}


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine on which torch sees two CUDA GPUs (for resolution only: nothing runs)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_cpu_is_the_default_and_auto_is_the_cpu_without_a_gpu():
    assert parse_config({}).device == "cpu"
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")


def test_auto_and_cuda_take_a_visible_gpu(two_gpus):
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(PrivlabError, match=r"one of the 2 visible GPUs \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "cuda:01", "cpu:0", "CUDA", ""])
def test_a_malformed_device_is_refused_at_parse_naming_the_field(bad):
    with pytest.raises(PrivlabError, match=r"device must be 'auto', 'cpu', 'cuda' or 'cuda:K'"):
        parse_config({"device": bad})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused_before_any_work():
    config = parse_config({**SMALL, "device": "cuda"})
    assert config.device == "cuda"  # a config written for a GPU machine parses anywhere
    with pytest.raises(PrivlabError, match="torch sees no CUDA GPU here"):
        build(config)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_the_cli_refuses_cuda_without_a_gpu_with_status_2_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "privlab", "run", "default", "--device", "cuda", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "device is 'cuda' but torch sees no CUDA GPU" in done.stderr
    assert not out.exists()


def test_auto_on_a_cpu_machine_runs_the_cpu_run():
    if torch.cuda.is_available():
        pytest.skip("auto is the GPU here")
    on_cpu = run(parse_config(SMALL), progress=False)
    on_auto = run(parse_config({**SMALL, "device": "auto"}), progress=False)
    assert torch.equal(on_cpu.models["params"], on_auto.models["params"])
    assert on_auto.models["params"].device.type == "cpu"
    assert on_auto.summary["device"] == on_cpu.summary["device"] == "cpu"


def test_the_loop_engine_refuses_a_gpu_and_takes_auto_as_the_cpu(two_gpus):
    with pytest.raises(PrivlabError, match="engine 'loop' .* runs on the CPU only"):
        make_engine("loop", PROTOCOLS["d-psgd"](), device="cuda")
    assert make_engine("loop", PROTOCOLS["d-psgd"](), device="auto").device.type == "cpu"


@dataclasses.dataclass(frozen=True)
class OwnPlan:
    num_nodes: int
    target: torch.Tensor
    labels: tuple[torch.Tensor, torch.Tensor]


def test_on_device_moves_a_protocols_own_plan_type_field_by_field():
    own = OwnPlan(3, torch.tensor([1, 2, -1]), (torch.zeros(2), torch.ones(2)))
    assert on_device(own, torch.device("cpu")) is own  # already there: the same object
    moved = on_device(own, torch.device("meta"))
    assert moved.num_nodes == 3
    assert moved.target.device.type == "meta" and moved.target.shape == (3,)
    assert all(t.device.type == "meta" for t in moved.labels)
    assert isinstance(moved.labels, tuple)
    plan = CommPlan.from_edges(3, [0, 1], [1, 2], [0.5, 0.5], [1.0, 0.5, 0.5])
    assert on_device(plan, torch.device("cpu")) is plan  # a CommPlan moves by its ``to``


def test_a_run_that_does_not_fit_the_gpus_free_memory_is_refused_naming_it():
    from privlab.resources import ON_DEVICE, check_fits_device, estimate

    needs = estimate(parse_config({"nodes": 4096, "model": {"name": "mlp", "hidden": [256]}}))
    assert set(ON_DEVICE) <= set(needs.parts)
    gpu = torch.device("cuda", 0)
    check_fits_device(needs, torch.device("cpu"), free=1)  # the CPU: check_fits's business
    check_fits_device(needs, gpu, free=2**40)
    with pytest.raises(PrivlabError, match=r"on cuda:0 \(largest: node state .* free; reduce"):
        check_fits_device(needs, gpu, free=2**20)
