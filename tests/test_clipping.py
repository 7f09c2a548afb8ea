"""Per-sample clipped gradient sums (DP-SGD) against autograd, ``__call__`` and Opacus."""

from __future__ import annotations

from functools import cache

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer

from privlab import training
from privlab.models import build_model
from privlab.state import ParamSpec
from privlab.training import BatchedSequentialGrad, VmapGrad, clipped_grad_autograd

N, B = 3, 5  # nodes, samples per node

MODELS = {
    "mlp-relu": (lambda: build_model("mlp", (64,), 10, hidden=[32, 16]), (64,)),
    "mlp-tanh": (lambda: build_model("mlp", (64,), 10, hidden=[32, 16], activation="tanh"), (64,)),
    "cnn": (lambda: build_model("cnn", (1, 8, 8), 10, channels=[4, 8], groups=2), (1, 8, 8)),
}
PATHS = {
    "mlp-relu": (BatchedSequentialGrad, VmapGrad),
    "mlp-tanh": (BatchedSequentialGrad, VmapGrad),
    "cnn": (VmapGrad,),
}


def setup(name: str, seed: int = 0):
    """A model, its spec, per-node parameters (perturbed per node) and batches."""
    torch.manual_seed(seed)
    build, shape = MODELS[name]
    model = build()
    spec = ParamSpec.of(model)
    params = spec.flatten(model).repeat(N, 1) + 0.05 * torch.randn(N, spec.dim)
    x, y = torch.randn(N, B, *shape), torch.randint(0, 10, (N, B))
    return model, spec, params, x, y


def mask_with_empty_row() -> torch.Tensor:
    mask = (torch.rand(N, B) < 0.6).float()
    mask[:, 0] = 1.0
    mask[1] = 0.0  # node 1 has no sample at all
    return mask


def reference(model, spec, params, x, y, weights, clip_norm):
    """Per-node ``clipped_grad_autograd``: sums [n, D] and losses [n]."""
    sums, losses = [], []
    for node in range(params.shape[0]):
        spec.load(model, params[node])
        w = None if weights is None else weights[node]
        losses.append(clipped_grad_autograd(model, x[node], y[node], w, clip_norm))
        sums.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    return torch.stack(sums), torch.stack(losses)


def sample_norms(model, spec, params, x, y) -> torch.Tensor:
    """Per-sample gradient norms [n, B], one sample at a time (an infinite bound clips none)."""
    norms = torch.empty(params.shape[0], x.shape[1])
    for node in range(params.shape[0]):
        spec.load(model, params[node])
        for b in range(x.shape[1]):
            clipped_grad_autograd(model, x[node, b : b + 1], y[node, b : b + 1], None, float("inf"))
            norms[node, b] = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).norm()
    return norms


@cache
def case(name: str):
    """``setup(name)`` and its per-sample gradient norms, computed once per model."""
    model, spec, params, x, y = setup(name)
    return model, spec, params, x, y, sample_norms(model, spec, params, x, y)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("masked", [False, True], ids=["unweighted", "masked"])
@pytest.mark.parametrize("regime", ["all-clipped", "none-clipped", "some-clipped"])
def test_clipped_sum_equals_autograd_reference(name, masked, regime):
    model, spec, params, x, y, norms = case(name)
    torch.manual_seed(1)
    weights = mask_with_empty_row() if masked else None
    clip_norm = {
        "all-clipped": 0.5 * norms.min().item(),
        "none-clipped": 2.0 * norms.max().item(),
        "some-clipped": norms.median().item(),
    }[regime]
    expected_sums, expected_losses = reference(model, spec, params, x, y, weights, clip_norm)
    assert expected_sums.abs().max() > 0
    if regime == "all-clipped":  # every clipped sample has norm C: ||sum|| <= C * sum w
        count = torch.full((N,), float(B)) if weights is None else weights.sum(dim=1)
        assert torch.all(expected_sums.norm(dim=1) <= clip_norm * count + 1e-6)
    scale = expected_sums.abs().max().item()
    for path_type in PATHS[name]:
        path = path_type(model, spec)
        out = torch.full_like(params, float("nan"))
        sums, losses = path.clipped_sum(params, x, y, weights, clip_norm, out=out)
        assert sums.data_ptr() == out.data_ptr()
        torch.testing.assert_close(sums, expected_sums, rtol=1e-5, atol=1e-5 * scale)
        torch.testing.assert_close(losses, expected_losses, rtol=1e-5, atol=1e-6)
        if regime == "some-clipped":  # without ``out``: a fresh tensor, the same values
            fresh, _ = path.clipped_sum(params, x, y, weights, clip_norm)
            torch.testing.assert_close(fresh, sums, rtol=0, atol=0)
        if masked:  # the node without samples gets exactly 0, no NaN
            assert torch.all(sums[1] == 0) and losses[1] == 0
        if regime == "none-clipped":  # unclipped sums are B x the mean (or weighted) gradient
            grads, plain_losses = path(params, x, y, weights)
            factor = B if weights is None else 1
            torch.testing.assert_close(sums, factor * grads, rtol=1e-5, atol=1e-5 * scale)
            if weights is None:
                torch.testing.assert_close(losses, plain_losses, rtol=1e-6, atol=1e-6)


def opacus_clipped_sum(model, x, y, clip_norm) -> torch.Tensor:
    """Opacus's own clipping (``DPOptimizer.clip_and_accumulate``) of per-sample gradients
    from ``GradSampleModule``, flattened in parameter order."""
    sample_module = GradSampleModule(model, loss_reduction="sum")
    params = list(model.parameters())
    optimizer = DPOptimizer(
        torch.optim.SGD(params, lr=0.0),
        noise_multiplier=0.0,
        max_grad_norm=clip_norm,
        expected_batch_size=x.shape[0],
        loss_reduction="sum",
    )
    optimizer.zero_grad()
    F.cross_entropy(sample_module(x), y, reduction="sum").backward()
    optimizer.clip_and_accumulate()
    summed = torch.cat([p.summed_grad.reshape(-1) for p in params])
    sample_module._close()
    return summed


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize(
    ("name", "path_type"), [("mlp-relu", BatchedSequentialGrad), ("cnn", VmapGrad)]
)
def test_clipped_sum_matches_opacus(name, path_type):
    model, spec, params, x, y = setup(name, seed=3)
    norms = sample_norms(model, spec, params[:1], x[:1], y[:1])[0]
    clip_norm = norms.median().item()  # some samples clipped, some not
    mask = torch.ones(1, B)
    mask[0, 2] = 0.0  # privlab masks sample 2 out; Opacus never sees it
    keep = mask[0].bool()
    spec.load(model, params[0])
    expected = opacus_clipped_sum(model, x[0, keep], y[0, keep], clip_norm)
    sums, _ = path_type(model, spec).clipped_sum(params[:1], x[:1], y[:1], mask, clip_norm)
    # float32, summed in different orders: the largest difference seen is ~5e-7
    torch.testing.assert_close(sums[0], expected, rtol=1e-6, atol=1e-6)
    assert expected.abs().max() > 1e-2


def test_vmap_blocks_give_the_same_sums(monkeypatch):
    model, spec, params, x, y = setup("mlp-tanh", seed=5)
    weights = mask_with_empty_row()
    path = VmapGrad(model, spec)
    whole, whole_losses = path.clipped_sum(params, x, y, weights, 0.5)
    assert whole.abs().max() > 0
    blocks = []
    sample_grads = path._sample_grads
    path._sample_grads = lambda p, xb, yb: blocks.append(xb.shape[:2]) or sample_grads(p, xb, yb)
    sample_bytes = spec.dim * params.element_size()
    expected_blocks = {  # budget: (nodes, samples) of each vmap call, N=3 nodes of B=5
        2 * B * sample_bytes: [(2, 5), (1, 5)],
        4 * sample_bytes: [(1, 4), (1, 1)] * 3,
        1: [(1, 1)] * 15,
    }
    for budget, shapes in expected_blocks.items():
        monkeypatch.setattr(training, "PER_SAMPLE_GRAD_BUDGET", budget)
        blocks.clear()
        sums, losses = path.clipped_sum(params, x, y, weights, 0.5)
        assert blocks == shapes
        torch.testing.assert_close(sums, whole, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(losses, whole_losses, rtol=1e-6, atol=1e-7)


def test_ghost_path_never_forms_per_sample_gradients():
    """n=64 nodes x B=512 samples x D=9738 parameters: per-sample gradients would take
    1.2 GiB; the ghost path allocates no tensor larger than one hidden activation."""
    torch.manual_seed(7)
    model = build_model("mlp", (64,), 10, hidden=[128])
    spec = ParamSpec.of(model)
    n, batch = 64, 512
    params = spec.flatten(model).repeat(n, 1) + 0.05 * torch.randn(n, spec.dim)
    x, y = torch.randn(n, batch, 64), torch.randint(0, 10, (n, batch))
    weights = (torch.rand(n, batch) < 0.5).float()
    per_sample_bytes = n * batch * spec.dim * 4
    assert per_sample_bytes > 2**30
    path = BatchedSequentialGrad(model, spec)
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        sums, losses = path.clipped_sum(params, x, y, weights, 1.0)
    largest = max(event.cpu_memory_usage for event in prof.events())
    assert 0 < largest <= n * batch * 128 * 4  # one hidden activation, 16 MiB
    # the first two nodes against the vmap path, which does form them (in blocks)
    expected, expected_losses = VmapGrad(model, spec).clipped_sum(
        params[:2], x[:2], y[:2], weights[:2], 1.0
    )
    torch.testing.assert_close(sums[:2], expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(losses[:2], expected_losses, rtol=1e-5, atol=1e-6)
    assert torch.all(sums.norm(dim=1) <= weights.sum(dim=1) * 1.0 + 1e-3)
