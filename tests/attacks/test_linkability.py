"""Linkability by lowest loss (privlab.attacks.linkability) on short real runs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from privlab.attacks.linkability import Linkability
from privlab.attacks.run_data import AttackContext
from privlab.config import parse_config
from privlab.errors import PrivlabError
from privlab.experiment import run

NODES = 8


def context_of(protocol: dict, rounds: int = 4) -> AttackContext:
    """8 digits nodes of about 23 samples, 30 local steps a round (they overfit), node 0
    curious; D-PSGD runs on a 3-regular graph, Shatter on its own graph of degree 3."""
    config = parse_config(
        {
            "name": "linkability-test",
            "nodes": NODES,
            "rounds": rounds,
            "eval_every": rounds,
            "data": {"dataset": "digits", "test_fraction": 0.5, "nonmember_fraction": 0.4},
            "model": {"name": "mlp", "hidden": [32]},
            "topology": {"name": "regular", "degree": 3},
            "protocol": protocol,
            "training": {"lr": 0.1, "momentum": 0.9, "batch_size": 8, "local_steps": 30},
            "observer": {"curious_nodes": [0]},
        }
    )
    return AttackContext.from_run(run(config, progress=False))


@pytest.fixture(scope="module")
def whole_models() -> AttackContext:
    """Shatter with one virtual node: whole models under fresh pseudonyms (EL-Oracle)."""
    return context_of({"name": "shatter", "virtual_nodes": 1, "degree": 3})


@pytest.fixture(scope="module")
def chunks() -> AttackContext:
    return context_of({"name": "shatter", "virtual_nodes": 4, "degree": 3}, rounds=3)


def test_overfitting_senders_are_linked_far_above_chance(whole_models):
    result = Linkability(completion="own").run(whole_models)
    top1, top5 = result.top[1], result.top[5]
    assert result.sender_hidden and result.candidates == tuple(range(1, NODES))
    assert top1.baseline == pytest.approx(1 / 7) and top5.baseline == pytest.approx(5 / 7)
    assert top1.trials == len(result.instances) >= 10
    assert top1.accuracy >= 0.9 and top1.ci[0] > 3 * top1.baseline
    assert top5.accuracy >= top1.accuracy
    assert Linkability.attacker == "oracle"


def test_ranks_and_top_k_agree(whole_models):
    table = Linkability(completion="own", top=(1, 2, 5)).run(whole_models).instances
    for k in (1, 2, 5):
        np.testing.assert_array_equal(table[f"top{k}"], table["rank"] <= k)
    np.testing.assert_array_equal(table["predicted"] == table["victim"], table["rank"] == 1)
    assert (table["victim"] != 0).all() and table["rank"].between(1, NODES - 1).all()


def test_top_k_intervals_are_clopper_pearson(chunks):
    result = Linkability(completion="own", confidence=0.9).run(chunks)
    for top in result.top.values():
        n, s = top.trials, top.successes
        low = stats.beta.ppf(0.05, s, n - s + 1) if s else 0.0
        high = stats.beta.ppf(0.95, s + 1, n - s) if s < n else 1.0
        assert top.ci == pytest.approx((low, high))
        assert top.accuracy == s / n


def test_chunks_need_a_completion_and_link_above_chance(chunks):
    with pytest.raises(PrivlabError, match="sends chunks .* pass completion="):
        Linkability().run(chunks)
    for completion in ("own", "mask-aware"):
        result = Linkability(completion=completion).run(chunks)
        assert result.top[1].ci[0] > result.top[1].baseline
        assert 0.2 < result.instances["coverage"].mean() < 0.3  # a quarter of the model
    per_round = Linkability(completion="zeros").run(chunks).per_round()
    assert list(per_round["round"]) == [1, 2, 3]


def test_senders_are_not_hidden_by_dpsgd():
    result = Linkability().run(context_of({"name": "d-psgd"}, rounds=2))
    assert not result.sender_hidden
    assert (result.instances["sender"] == result.instances["victim"]).all()
    assert result.top[1].accuracy >= 0.9
    summary = result.summary()
    assert summary["candidates"] == NODES - 1 and summary["top"]["1"]["trials"] == 6


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"top": ()}, "top must be a non-empty sequence of integers >= 1"),
        ({"top": (0,)}, "top must be a non-empty sequence of integers >= 1"),
        ({"completion": "mean"}, "completion must be one of own, zeros, mask-aware"),
        ({"samples_per_candidate": 0}, "samples_per_candidate must be an integer >= 1"),
    ],
)
def test_bad_options_refused(options, match):
    with pytest.raises(PrivlabError, match=match):
        Linkability(**options)
