"""``simulated_device``: a stray CPU tensor next to a (simulated) CUDA tensor raises on the
CPU as it would on a GPU, what CUDA accepts passes, and nothing is left behind."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from simulated_device import simulated_cuda, to_simulated
from torch.func import functional_call, grad, vmap

_REAL_FROM_NUMPY = torch.from_numpy

MIXED = "Expected all tensors to be on the same device"
CUDA = torch.device("cuda", 0)


def dev_tensor() -> torch.Tensor:
    """A [2, 3] tensor on the simulated device (inside ``simulated_cuda()``)."""
    return to_simulated(torch.arange(6.0).reshape(2, 3))


# -- (a) what CUDA refuses raises ---------------------------------------------------------


@pytest.mark.parametrize(
    "stray",
    [
        pytest.param(lambda dev: dev + torch.zeros(3), id="add-a-cpu-tensor"),
        pytest.param(lambda dev: torch.zeros(2, 3).add_(dev), id="in-place-on-a-cpu-tensor"),
        pytest.param(lambda dev: torch.tensor(0.0).add_(dev.sum()), id="in-place-on-cpu-0-dim"),
        pytest.param(lambda dev: dev.index_select(0, torch.tensor([1])), id="index-select"),
        pytest.param(lambda dev: dev.index_select(0, torch.tensor(1)), id="index-select-0-dim"),
        pytest.param(lambda dev: dev.gather(1, torch.zeros(2, 1, dtype=torch.long)), id="gather"),
        pytest.param(
            lambda dev: dev.scatter_add(0, torch.zeros(1, 3, dtype=torch.long), dev[:1]),
            id="scatter-add",
        ),
        pytest.param(
            lambda dev: dev.index_add_(0, torch.tensor([0]), dev[:1]), id="index-add-in-place"
        ),
        pytest.param(lambda dev: torch.stack([dev.sum(), torch.tensor(1.0)]), id="stack-0-dim"),
        pytest.param(lambda dev: torch.cat([dev, torch.ones(1, 3)]), id="cat"),
        pytest.param(lambda dev: dev @ torch.ones(3, 2), id="matmul"),
        pytest.param(
            lambda dev: torch.sparse.mm(
                torch.sparse_coo_tensor(
                    torch.tensor([[0, 1], [1, 2]]), torch.ones(2), (3, 3), check_invariants=True
                ),
                to_simulated(torch.ones(3, 2)),
            ),
            id="sparse-mm-cpu-sparse",
        ),
        pytest.param(
            lambda dev: torch.sparse_coo_tensor(torch.tensor([[0, 1]]), dev[0, :2], (3,)),
            id="sparse-coo-cpu-indices",
        ),
        pytest.param(
            lambda dev: dev.__setitem__(torch.tensor([0]), torch.ones(1, 3)),
            id="advanced-setitem-cpu-value",
        ),
    ],
)
def test_a_cpu_tensor_where_cuda_wants_the_device_raises_naming_the_call(stray):
    with simulated_cuda():
        dev = dev_tensor()
        with pytest.raises(RuntimeError, match=f"{MIXED}.*simulated cuda"):
            stray(dev)


def test_the_error_names_the_function_and_the_stray_tensor():
    with simulated_cuda():
        dev = dev_tensor()
        with pytest.raises(
            RuntimeError, match=r"torch\.Tensor\.add got a CPU tensor of shape \(3,\)"
        ):
            dev + torch.zeros(3)


def test_a_cpu_tensor_indexed_by_device_indices_raises():
    with simulated_cuda():
        index = to_simulated(torch.tensor([0]))
        with pytest.raises(RuntimeError, match="indices should be either on cpu or on the same"):
            torch.zeros(2, 3)[index]


def test_numpy_of_a_device_tensor_raises_a_type_error_as_on_cuda():
    with simulated_cuda():
        dev = dev_tensor()
        with pytest.raises(TypeError, match="can't convert cuda:0 device type tensor to numpy"):
            dev.numpy()
        with pytest.raises(TypeError, match="can't convert cuda:0"):
            np.asarray(dev)
        assert dev.numpy(force=True).tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_a_cpu_generator_cannot_fill_a_device_tensor():
    generator = torch.Generator().manual_seed(0)
    with simulated_cuda():
        dev = dev_tensor()
        with pytest.raises(RuntimeError, match="Expected a 'cuda' device type for generator"):
            dev.normal_(generator=generator)
        with pytest.raises(RuntimeError, match="Expected a 'cuda' device type for generator"):
            torch.randn(3, device="cuda", generator=generator)
        # drawing on the CPU and copying over is the supported way
        moved = torch.randn(3, generator=generator).to(dev.device)
        assert moved.device == CUDA


def test_a_stray_cpu_tensor_inside_vmap_raises():
    with simulated_cuda():
        params = to_simulated(torch.randn(4, 3))
        weights = torch.ones(3)  # meant to be on the device
        with pytest.raises(RuntimeError, match=MIXED):
            vmap(grad(lambda w: (w * weights).sum()))(params)


# -- (b) what CUDA accepts passes ---------------------------------------------------------


def test_what_cuda_accepts_passes_with_the_numbers_of_the_cpu():
    with simulated_cuda():
        dev = dev_tensor()
        index, mask = torch.tensor([1, 0]), torch.tensor([True, False])
        assert (dev + torch.zeros(3, device=dev.device)).tolist() == dev.tolist()
        assert dev[index].tolist() == [[3.0, 4.0, 5.0], [0.0, 1.0, 2.0]]
        assert dev[mask].tolist() == [[0.0, 1.0, 2.0]]
        assert (dev * 2.0)[1].tolist() == [6.0, 8.0, 10.0]
        assert (dev + torch.tensor(2.0))[0].tolist() == [2.0, 3.0, 4.0]
        assert dev.sum().item() == 15.0
        assert int(dev[1, 2]) == 5 and bool(dev[0, 1])
        assert dev.cpu().numpy().sum() == 15.0
        assert torch.zeros(2, 3).copy_(dev).sum().item() == 15.0


def test_cpu_values_go_in_through_copy_slices_and_0_dim_tensors():
    with simulated_cuda():
        dev = dev_tensor()
        dev[0:1] = torch.ones(1, 3)  # basic indexing copies across devices
        dev[torch.tensor([1])] = torch.tensor(7.0)  # advanced indexing, a 0-dim value
        dev[:, 0] += torch.tensor(1.0)
        copied = to_simulated(torch.zeros(2, 3)).copy_(dev.cpu())
        assert dev.tolist() == copied.tolist() == [[2.0, 1.0, 1.0], [8.0, 7.0, 7.0]]
        assert dev.device == copied.device == CUDA


def test_tensors_from_before_the_mode_are_unknown_and_never_raise():
    before = torch.ones(3)
    with simulated_cuda() as sim:
        dev = dev_tensor()
        assert sim.placement(before) is None
        assert (dev + before)[0].tolist() == [1.0, 2.0, 3.0]
        assert sim.placement(torch.ones(3)) == "cpu"
        assert sim.placement(dev) == "cuda"


def test_vmap_of_grad_over_device_parameters_gives_the_cpu_numbers_on_the_device():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3))
    shapes = {name: p.shape for name, p in net.named_parameters()}
    sizes = [p.numel() for p in net.parameters()]
    params, x, y = torch.randn(6, sum(sizes)), torch.randn(6, 8, 5), torch.randint(0, 3, (6, 8))

    def loss(row, x, y):
        tensors = {n: t.view(s) for (n, s), t in zip(shapes.items(), row.split(sizes))}
        return torch.nn.functional.cross_entropy(functional_call(net, tensors, (x,)), y)

    per_node = vmap(grad(loss))
    expected = per_node(params, x, y)
    with simulated_cuda():
        dev_params, dev_x, dev_y = (to_simulated(t) for t in (params, x, y))
        grads = per_node(dev_params, dev_x, dev_y)
        stepped = dev_params - 0.1 * grads
        assert grads.device == CUDA and stepped.device == CUDA
        assert torch.equal(grads.cpu(), expected)


def test_autograd_and_a_module_moved_to_cuda_work_on_the_device():
    with simulated_cuda():
        w = to_simulated(torch.tensor([1.0, 2.0, 3.0])).requires_grad_()
        (w * w).sum().backward()
        assert w.grad.device == CUDA and w.grad.tolist() == [2.0, 4.0, 6.0]
        layer = torch.nn.Linear(3, 2).to("cuda")
        assert layer.weight.device == CUDA
        assert layer(to_simulated(torch.ones(4, 3))).device == CUDA
        with pytest.raises(RuntimeError, match=MIXED):
            layer(torch.ones(4, 3))


# -- (c) device tensors look like CUDA tensors, and so do their results -------------------


def test_a_device_tensor_reports_cuda_and_its_results_stay_there():
    with simulated_cuda():
        dev = dev_tensor()
        assert dev.device.type == "cuda" and dev.device == CUDA
        assert dev.is_cuda and not dev.is_cpu and dev.get_device() == 0
        results = {
            "add": dev + 1,
            "sum": dev.sum(),
            "view": dev.T,
            "row": dev[0],
            "to-dtype": dev.to(torch.float64),
            "new-zeros": dev.new_zeros(4),
            "zeros-like": torch.zeros_like(dev),
            "where": torch.where(dev > 2, dev, torch.tensor(0.0)),
            "in-place": dev.mul_(2),
        }
        assert {k: v.device.type for k, v in results.items()} == dict.fromkeys(results, "cuda")
        assert [row.device.type for row in dev] == ["cuda", "cuda"]
        assert [part.device.type for part in dev.split(1)] == ["cuda", "cuda"]


def test_every_way_to_ask_for_cuda_gives_a_device_tensor():
    with simulated_cuda():
        cpu = torch.ones(3)
        made = [
            torch.zeros(3, device="cuda"),
            torch.zeros(3, device="cuda:0"),
            torch.arange(3, device=CUDA),
            torch.ones(3, device=0),
            torch.full_like(cpu, 2.0, device="cuda"),
            cpu.new_ones(2, device="cuda"),
            cpu.to("cuda"),
            cpu.to(device=CUDA, dtype=torch.float64),
            cpu.cuda(),
            cpu.to(torch.zeros(1, device="cuda")),
            torch.as_tensor(cpu, device="cuda"),
        ]
        with torch.device("cuda"):
            made.append(torch.empty(2))
        assert [t.device.type for t in made] == ["cuda"] * len(made)
        assert cpu.device.type == "cpu"  # moving copied: the CPU tensor stays on the CPU


def test_moving_back_to_the_cpu_copies_and_leaves_the_device_tensor_there():
    with simulated_cuda():
        dev = dev_tensor()
        for back in (dev.cpu(), dev.to("cpu"), torch.as_tensor(dev, device="cpu")):
            assert back.device.type == "cpu" and back is not dev
            assert back.tolist() == dev.tolist()
        assert dev.device == CUDA
        assert dev.to("cuda") is dev and dev.cuda() is dev
        with pytest.raises(RuntimeError, match=MIXED):
            dev + dev.cpu()


def test_cuda_is_still_unavailable_and_the_mode_does_not_nest():
    available = torch.cuda.is_available()
    with simulated_cuda():
        assert torch.cuda.is_available() == available
        with pytest.raises(RuntimeError, match="does not nest"), simulated_cuda():
            pass


# -- (d) after the context ---------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="a real GPU takes device='cuda'")
def test_everything_is_back_to_normal_after_the_context_even_after_an_error():
    with pytest.raises(RuntimeError, match=MIXED), simulated_cuda():
        dev = dev_tensor()
        dev + torch.zeros(3)
    assert dev.device.type == "cpu" and not dev.is_cuda
    assert (dev + torch.zeros(3)).sum().item() == 15.0
    assert dev.numpy().sum() == 15.0
    with pytest.raises((RuntimeError, AssertionError), match="CUDA"):
        torch.zeros(2, device="cuda")  # no CUDA on this machine: refused again
    with pytest.raises(RuntimeError, match="needs an active simulated_cuda"):
        to_simulated(torch.ones(2))
    with simulated_cuda() as again:  # a fresh mode knows nothing of the old tensors
        assert again.placement(dev) is None


def test_a_tensor_from_numpy_is_known_to_be_on_the_cpu():
    with simulated_cuda():
        dev = to_simulated(torch.ones(3))
        with pytest.raises(RuntimeError, match="same device"):
            dev + torch.from_numpy(np.zeros(3, dtype=np.float32))
        assert torch.equal(dev.cpu() + torch.from_numpy(np.zeros(3, dtype=np.float32)), dev.cpu())
    assert torch.from_numpy is _REAL_FROM_NUMPY
