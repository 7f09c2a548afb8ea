"""Evaluation covers a fixed sample of nodes and test samples (the ``evaluation`` section)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from privlab.config import EvaluationConfig, parse_config
from privlab.engine import EVAL_NODES, SAMPLED_METRICS
from privlab.errors import PrivlabError
from privlab.experiment import build, run
from privlab.resources import estimate
from privlab.results import FILES


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: tiny models on a shared 2-core machine run many times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(**overrides) -> dict:
    """A small, fast run: digits on 12 nodes, an MLP 64-16-10, a ring."""
    return {
        "nodes": 12,
        "rounds": 2,
        "eval_every": 1,
        "model": {"name": "mlp", "hidden": [16]},
        "topology": {"name": "ring"},
        "training": {"batch_size": 8, "local_steps": 1},
        **overrides,
    }


def engine_of(raw: dict):
    return build(parse_config(raw)).engine


def test_the_config_default_is_the_engine_default():
    assert EvaluationConfig().nodes == EVAL_NODES == 256
    assert EvaluationConfig().test_samples is None
    assert parse_config({}).evaluation == EvaluationConfig()


def test_sampled_nodes_and_samples_are_sorted_fixed_and_the_same_on_both_engines():
    sampled = {"nodes": 5, "test_samples": 40}
    vec = engine_of(config(evaluation=sampled))
    loop = engine_of(config(evaluation=sampled, engine="loop"))
    whole = engine_of(config(evaluation={"nodes": None}))
    nodes, test = vec.eval_nodes, vec.test_indices
    assert len(nodes) == 5 and len(set(nodes.tolist())) == 5
    assert torch.equal(nodes, nodes.sort().values) and 0 <= nodes.min() <= nodes.max() < 12
    assert len(test) == 40 and torch.equal(test, test.sort().values)
    assert set(test.tolist()) < set(vec.data.test_indices)
    assert torch.equal(loop.eval_nodes, nodes) and torch.equal(loop.test_indices, test)
    assert torch.equal(whole.eval_nodes, torch.arange(12))
    for t in range(1, 3):
        for engine in (vec, loop, whole):
            engine.run_round(t)
        assert torch.equal(vec.eval_nodes, nodes)  # drawn once: the same at every evaluation
        vec_metrics, loop_metrics, all_metrics = vec.evaluate(), loop.evaluate(), whole.evaluate()
        assert torch.equal(vec_metrics["test_accuracy"], loop_metrics["test_accuracy"])
        assert torch.allclose(vec_metrics["train_loss"], loop_metrics["train_loss"], rtol=1e-4)
        # the sampled nodes' train loss is what a full evaluation gives those nodes
        assert torch.allclose(vec_metrics["train_loss"], all_metrics["train_loss"][nodes])
        assert len(vec_metrics["consensus_distance"]) == 12  # every node, always


def test_test_samples_subsample_is_what_accuracy_is_measured_on():
    engine = engine_of(config(evaluation={"test_samples": 30}))
    engine.run_round(1)
    x, y = engine.X[engine.test_indices], engine.y[engine.test_indices]
    expected = [
        (engine._gradient.forward_shared(engine.params[i : i + 1], x)[0].argmax(-1) == y)
        .float()
        .mean()
        for i in range(12)
    ]
    assert torch.allclose(engine.evaluate()["test_accuracy"], torch.stack(expected))
    assert (
        engine.test_indices.tolist()
        == engine_of(config(evaluation={"test_samples": 30})).test_indices.tolist()
    )
    everything = engine_of(config(evaluation={"test_samples": 10**6}))
    assert everything.test_indices.tolist() == list(everything.data.test_indices)


def test_another_seed_samples_other_nodes():
    draws = {
        tuple(engine_of(config(seed=seed, nodes=40, evaluation={"nodes": 6})).eval_nodes.tolist())
        for seed in (0, 1, 2)
    }
    assert len(draws) > 1


def test_metrics_rows_name_the_evaluated_nodes(tmp_path):
    raw = config(evaluation={"nodes": 4, "test_samples": 50})
    evaluated = engine_of(raw).eval_nodes.tolist()
    assert evaluated != [0, 1, 2, 3]  # positions and ids differ: the test can tell them apart
    results = run(parse_config(raw), progress=False)
    results.save(tmp_path)
    metrics = pd.read_csv(tmp_path / FILES["metrics"])
    for name in SAMPLED_METRICS:
        rows = metrics[metrics.metric == name]
        assert sorted(rows["round"].unique()) == [0, 1, 2]
        for _, at_round in rows.groupby("round"):
            assert at_round["node"].tolist() == evaluated
    for name in ("consensus_distance", "bytes_sent", "batch_loss"):
        for _, at_round in metrics[metrics.metric == name].groupby("round"):
            assert at_round["node"].tolist() == list(range(12))
    assert results.final("test_accuracy").index.tolist() == evaluated
    summary = results.summary
    assert summary["evaluation"] == {
        "nodes": 4,
        "of_nodes": 12,
        "test_samples": 50,
        "of_test_samples": len(engine_of(raw).data.test_indices),
    }
    final = results.final("test_accuracy")
    assert summary["final_accuracy"]["mean"] == pytest.approx(final.mean())


def test_sampling_the_evaluation_leaves_training_alone():
    sampled = run(parse_config(config(evaluation={"nodes": 3})), progress=False)
    whole = run(parse_config(config(evaluation={"nodes": None})), progress=False)
    assert torch.equal(sampled.models["params"], whole.models["params"])
    assert whole.summary["evaluation"]["nodes"] == 12
    assert (
        whole.summary["evaluation"]["test_samples"]
        == whole.summary["evaluation"]["of_test_samples"]
    )
    full = whole.final("train_loss")
    part = sampled.final("train_loss")
    assert part.to_dict() == pytest.approx(full[part.index].to_dict())


def test_default_settings_evaluate_256_of_300_nodes():
    results = run(
        parse_config(config(nodes=300, rounds=1, topology={"name": "regular", "degree": 4})),
        progress=False,
    )
    assert results.summary["evaluation"]["nodes"] == 256
    assert results.summary["evaluation"]["of_nodes"] == 300
    for name in SAMPLED_METRICS:
        nodes = results.metrics[results.metrics.metric == name]["node"]
        assert nodes.nunique() == 256 and nodes.max() < 300
    assert results.final("consensus_distance").size == 300


@pytest.mark.parametrize(
    ("section", "field"),
    [
        ({"nodes": 0}, "evaluation.nodes"),
        ({"nodes": -2}, "evaluation.nodes"),
        ({"nodes": True}, "evaluation.nodes"),
        ({"nodes": 2.5}, "evaluation.nodes"),
        ({"test_samples": 0}, "evaluation.test_samples"),
        ({"test_samples": "all"}, "evaluation.test_samples"),
        ({"sample": 3}, "evaluation.sample"),
    ],
)
def test_bad_values_are_refused_with_one_line_naming_the_field(section, field):
    with pytest.raises(PrivlabError) as error:
        parse_config({"evaluation": section})
    message = str(error.value)
    assert field in message and "\n" not in message


def test_range_errors_say_the_range():
    with pytest.raises(PrivlabError, match=r"evaluation\.nodes must be an integer >= 1 or null"):
        parse_config({"evaluation": {"nodes": 0}})


def test_the_memory_estimate_counts_the_evaluated_nodes():
    big = {
        "nodes": 4096,
        "data": {
            "dataset": "synthetic",
            "options": {"num_samples": 80000, "dimension": 64, "num_classes": 10},
            "test_fraction": 0.05,
        },
        "model": {"name": "mlp", "hidden": [64, 32]},
    }
    sampled = estimate(parse_config(big))
    whole = estimate(parse_config({**big, "evaluation": {"nodes": None}}))
    assert sampled.parts["index tables"] < whole.parts["index tables"]
    assert "evaluation.nodes" in sampled.remedies["evaluation"]


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_the_buffered_mlp_forward_is_forward_shared(activation):
    engine = engine_of(config(model={"name": "mlp", "hidden": [16, 8], "activation": activation}))
    engine.run_round(1)
    x = engine.X[engine.test_indices]
    size = 12 * len(x) * 64
    buffers = (torch.empty(size), torch.empty(size))
    expected = engine._gradient.forward_shared(engine.params, x)
    assert torch.equal(engine._shared_logits(engine.params, x, buffers), expected)
    before = engine.X.clone()
    engine._eval_budget = 1  # one node on one sample per block
    assert torch.equal(engine._test_accuracy(), accuracy_by_forward_shared(engine, x))
    assert torch.equal(engine.X, before)  # the data is never written in place


def accuracy_by_forward_shared(engine, x: torch.Tensor) -> torch.Tensor:
    logits = engine._gradient.forward_shared(engine.params, x)
    return (logits.argmax(dim=-1) == engine.y[engine.test_indices]).float().mean(dim=1)
