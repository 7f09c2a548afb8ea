"""Every protocol and gradient mechanism runs on a GPU device: checked on a simulated
CUDA device on the CPU (``simulated_device``), where a tensor left on the CPU raises as
it would on a GPU, and on a real GPU where one is present.

Each registered protocol (and each toy protocol of ``toy_protocols``, written like a
user's plugin) and each registered gradient mechanism runs ``ROUNDS`` rounds with an
observer and an evaluation, with ``device="cuda"``; the parameters, the reports (bytes,
losses, emitted metrics), the evaluation and the observations must be those of the CPU
run. A new registered component is covered without a new test.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import numpy as np
import pytest
import torch
from simulated_device import simulated_cuda
from test_contract import (
    COALITION,
    MECHANISM_CASES,
    MODEL_NEEDS,
    PROTOCOL_CASES,
    assert_same_reports,
    run,
    topology_for,
    training_protocol,
)
from test_engine import TOLERANCE

from privlab.errors import PrivlabError
from privlab.gradient import GRADIENT_MECHANISMS
from privlab.observe import Observer, threat_model_from


def observe(dim: int) -> Observer:
    threat = threat_model_from(curious_nodes=COALITION, colluding=True)
    return Observer(threat, 8, dim)


def device_run(device: str, factory, topology, **kwargs):
    """``run`` on ``device``, then an evaluation; what is compared comes back on the CPU."""
    result = run("vectorized", factory, topology, observe=observe, device=device, **kwargs)
    evaluation = result.engine.evaluate()
    observations = list(result.engine.observer.log.observations)
    return result.params.cpu(), result.reports, evaluation, observations


@contextmanager
def simulated_gpu(monkeypatch):
    """A CUDA device simulated on the CPU (torch is told that one GPU is visible); yields
    the patcher, whose further patches are undone with these (never patch
    ``torch.cuda`` with the test's own ``monkeypatch`` inside: it would restore the
    simulated functions at teardown)."""
    with monkeypatch.context() as patch:
        patch.setattr(torch.cuda, "is_available", lambda: True)
        patch.setattr(torch.cuda, "device_count", lambda: 1)
        patch.setattr(torch.cuda, "get_device_name", lambda device=None: "simulated GPU")
        patch.setattr(torch.cuda, "mem_get_info", lambda device=None: (2**36, 2**36))
        with simulated_cuda():
            yield patch


@pytest.fixture(params=["simulated", "real"])
def on_gpu(request, monkeypatch):
    """What enters the GPU: the simulated one, or this machine's (skipped without one)."""
    if request.param == "real":
        if not torch.cuda.is_available():
            pytest.skip("no GPU on this machine")
        return nullcontext
    return lambda: simulated_gpu(monkeypatch)


def tolerance() -> float:
    """The simulated device computes on the CPU (``TOLERANCE``, as between the engines); a
    real GPU's kernels reassociate, and the differences grow over rounds."""
    return 1e-4 if torch.cuda.is_available() else TOLERANCE


def assert_same_runs(gpu, on_cpu) -> None:
    """Equal up to floating-point reassociation (GPU kernels, torch's sparse product)."""
    params, reports, evaluation, observations = gpu
    cpu_params, cpu_reports, cpu_evaluation, cpu_observations = on_cpu
    assert params.device.type == "cpu"
    torch.testing.assert_close(params, cpu_params, rtol=0, atol=tolerance())
    assert_same_reports(reports, cpu_reports, exact=False)
    assert set(evaluation) == set(cpu_evaluation)
    for name, values in evaluation.items():
        assert values.device.type == "cpu"
        torch.testing.assert_close(values, cpu_evaluation[name], rtol=0, atol=1e-4)
    assert len(observations) == len(cpu_observations)
    for seen, cpu_seen in zip(observations, cpu_observations):
        assert (seen.round, seen.exchange) == (cpu_seen.round, cpu_seen.exchange)
        assert torch.equal(seen.true_sender, cpu_seen.true_sender)
        assert seen.payload.device.type == "cpu"
        torch.testing.assert_close(seen.payload, cpu_seen.payload, rtol=0, atol=tolerance())


@pytest.mark.parametrize("name", sorted(PROTOCOL_CASES))
def test_every_protocol_runs_on_the_gpu_as_on_the_cpu(name, on_gpu):
    factory = PROTOCOL_CASES[name]
    topology = topology_for(name, factory)
    on_cpu = device_run("cpu", factory, topology)
    with on_gpu():
        gpu = device_run("cuda", factory, topology)
    assert_same_runs(gpu, on_cpu)


@pytest.mark.parametrize("name", MECHANISM_CASES, ids=lambda name: name or "none")
def test_every_gradient_mechanism_runs_on_the_gpu_as_on_the_cpu(name, on_gpu):
    protocol = training_protocol()
    factory, topology = PROTOCOL_CASES[protocol], topology_for(protocol, PROTOCOL_CASES[protocol])

    def mechanism():
        return None if name is None else GRADIENT_MECHANISMS[name]()

    model = MODEL_NEEDS.get(name)
    on_cpu = device_run("cpu", factory, topology, gradient=mechanism(), model=model)
    with on_gpu():
        gpu = device_run("cuda", factory, topology, gradient=mechanism(), model=model)
    assert_same_runs(gpu, on_cpu)


def test_the_simulated_device_catches_a_tensor_left_on_the_cpu(monkeypatch):
    """The check above can fail: a protocol that adds CPU noise to device states raises."""
    from toy_protocols import PerReceiverNoise

    class CpuNoise(PerReceiverNoise):
        def send(self, state, plan, round, exchange):
            return super().send(state + torch.zeros(state.shape[1]), plan, round, exchange)

    topology = topology_for("toy-noise", PerReceiverNoise)
    with simulated_gpu(monkeypatch), pytest.raises(RuntimeError, match="same device"):
        run("vectorized", CpuNoise, topology, device="cuda")


def test_a_state_returned_on_the_cpu_is_named_as_a_broken_contract(monkeypatch):
    from toy_protocols import PerReceiverNoise

    class CpuState(PerReceiverNoise):
        def receive(self, params, messages, plan, round, exchange):
            return super().receive(params, messages, plan, round, exchange).cpu()

    topology = topology_for("toy-noise", PerReceiverNoise)
    message = "receive returned a state on cpu, the run is on cuda:0"
    with simulated_gpu(monkeypatch), pytest.raises(PrivlabError, match=message):
        run("vectorized", CpuState, topology, device="cuda")


RUN = {
    "nodes": 8,
    "rounds": 3,
    "eval_every": 2,
    "model": {"name": "mlp", "hidden": [16]},
    "training": {"batch_size": 8, "local_steps": 2},
    "observer": {"curious_nodes": [0, 5]},
}
"""A whole run: metrics, ledger, observations and models written like any run."""
WHOLE_RUNS = {
    "dp-sgd": {"gradient": {"name": "dp-sgd", "noise_multiplier": 1.0}},
    "zipdl": {"protocol": {"name": "zipdl", "noise_multiplier": 0.5}},
    "cesar": {"protocol": {"name": "cesar", "sparsifier": "topk"}},
}


@pytest.mark.parametrize("name", sorted(WHOLE_RUNS))
def test_a_whole_run_on_the_gpu_writes_the_cpu_runs_folder(name, on_gpu, tmp_path):
    from privlab.config import parse_config
    from privlab.experiment import run as run_experiment
    from privlab.results import load_run

    config = {**RUN, **WHOLE_RUNS[name]}
    on_cpu = run_experiment(parse_config(config), progress=False)
    with on_gpu():
        gpu = run_experiment(parse_config({**config, "device": "cuda"}), progress=False)
    if isinstance(on_gpu(), nullcontext):
        assert gpu.summary["device"].startswith("cuda:0 (")
    else:
        assert gpu.summary["device"] == "cuda:0 (simulated GPU)"
    gpu.save(tmp_path)
    saved = load_run(tmp_path)
    assert saved.models["params"].device.type == "cpu"
    models = saved.models["params"], on_cpu.models["params"]
    torch.testing.assert_close(*models, rtol=0, atol=tolerance())
    cpu_metrics = on_cpu.metrics.set_index(["round", "node", "metric"])["value"]
    gpu_metrics = saved.metrics.set_index(["round", "node", "metric"])["value"]
    assert set(gpu_metrics.index) == set(cpu_metrics.index)
    assert (gpu_metrics - cpu_metrics).abs().max() < 1e-4
    assert len(saved.observations) == len(on_cpu.observations)


def test_the_distributed_engine_keeps_its_tensors_on_the_gpu(monkeypatch, tmp_path):
    """One rank of the distributed engine (a process group of one, in this process): its
    exchange, gathers and reductions run on the simulated GPU as on the CPU, with an
    observer, for a protocol of device messages (Zip-DL) and one of CPU messages (CESAR)."""
    import torch.distributed as dist

    import privlab.distributed  # noqa: F401 (registers the engine)
    from privlab.launch import join
    from privlab.protocol import PROTOCOLS

    if dist.is_initialized():
        pytest.skip("a process group is already up in this process")
    threads = torch.get_num_threads()  # join sets the rank's share; restored below
    join(timeout=30, init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world=1)
    try:
        from conftest import make_engine

        def final_params(device: str, protocol=lambda: PROTOCOLS["zipdl"]()) -> torch.Tensor:
            engine = make_engine("distributed", protocol(), nodes=8, device=device)
            engine._threat = threat_model_from(curious_nodes=[0])  # what rank 0 records
            for t in range(1, 4):
                engine.run_round(t)
            engine.evaluate()
            assert engine.non_finite_nodes() == 0 and not engine.agree_to_stop(False)
            return engine.params.cpu()

        def cesar():
            return PROTOCOLS["cesar"](sparsifier="topk")

        on_cpu, cesar_on_cpu = final_params("cpu"), final_params("cpu", cesar)
        with simulated_gpu(monkeypatch) as patch:
            patch.setattr(torch.cuda, "set_device", lambda device: None)
            gpu, cesar_on_gpu = final_params("cuda"), final_params("cuda", cesar)
            # NCCL takes one process per GPU: two processes here need two GPUs
            patch.setenv("LOCAL_WORLD_SIZE", "2")
            with pytest.raises(PrivlabError, match="one process per GPU: 2 processes"):
                final_params("cuda")
            patch.setattr(torch.cuda, "device_count", lambda: 2)
            with pytest.raises(PrivlabError, match="device 'cuda:0'; use --procs 2"):
                final_params("cuda:0")
        torch.testing.assert_close(gpu, on_cpu, rtol=0, atol=1e-5)
        torch.testing.assert_close(cesar_on_gpu, cesar_on_cpu, rtol=0, atol=1e-5)
    finally:
        dist.destroy_process_group()
        torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", ["dirac", "natural", "mislabelled"])
def test_an_audit_on_the_gpu_scores_the_canaries_of_the_cpu_audit(kind, on_gpu):
    from privlab.attacks.audit_run import AuditSettings, run_audit
    from privlab.config import parse_config

    config = {
        **RUN,
        "nodes": 8,
        "rounds": 2,
        "gradient": {"name": "dp-sgd", "noise_multiplier": 2.0, "max_grad_norm": 1.0},
    }
    config.pop("observer")
    settings = AuditSettings(kind=kind, canaries=20)
    on_cpu = run_audit(parse_config(config), settings, progress=False)
    with on_gpu():
        gpu = run_audit(parse_config({**config, "device": "cuda"}), settings, progress=False)
    assert gpu.statistic == on_cpu.statistic
    np.testing.assert_array_equal(gpu.scores["labels"], on_cpu.scores["labels"])
    np.testing.assert_allclose(gpu.scores["scores"], on_cpu.scores["scores"], atol=1e-4)
