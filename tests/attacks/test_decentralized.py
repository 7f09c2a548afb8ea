"""Membership inference on received models (privlab.attacks.decentralized) and the
attacker's context rebuilt from a run (privlab.attacks.run_data), on short real runs."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
import torch

from privlab.attacks.decentralized import (
    METHODS,
    ReceivedModelMIA,
    membership_samples,
    received_models,
)
from privlab.attacks.metrics import ResolutionWarning, evaluate_membership
from privlab.attacks.mia import lira_scores, rmia_scores
from privlab.attacks.run_data import AttackContext
from privlab.attacks.shadow import train_reference_models
from privlab.attacks.signals import (
    model_logits,
    per_example_loss,
    scaled_logit,
    true_class_probability,
)
from privlab.cli import main
from privlab.config import parse_config
from privlab.errors import PrivlabError
from privlab.experiment import build, run
from privlab.rng import derive_seed

NODES, ROUNDS = 8, 4
SMALL_NODES = {"test_fraction": 0.5, "nonmember_fraction": 0.4}  # about 23 samples a node
OVERFIT = {"lr": 0.1, "momentum": 0.9, "batch_size": 8, "local_steps": 30}


def config(**sections):
    """8 nodes of digits, an MLP 64-32-10, D-PSGD on a 3-regular graph, node 0 curious."""
    raw = {
        "name": "attack-test",
        "nodes": NODES,
        "rounds": ROUNDS,
        "eval_every": ROUNDS,
        "data": {"dataset": "digits", **SMALL_NODES},
        "model": {"name": "mlp", "hidden": [32]},
        "topology": {"name": "regular", "degree": 3},
        "protocol": {"name": "d-psgd"},
        "training": OVERFIT,
        "observer": {"curious_nodes": [0]},
    }
    return parse_config(raw | sections)


def context_of(**sections) -> AttackContext:
    return AttackContext.from_run(run(config(**sections), progress=False))


def quiet(attack: ReceivedModelMIA, context: AttackContext, **kw):
    """Run ``attack``; the pooled TPR at 0.1 % FPR is unresolved at these sizes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResolutionWarning)
        return attack.run(context, **kw)


@pytest.fixture(scope="module")
def dpsgd() -> AttackContext:
    """Tiny nodes, 30 local steps a round: each sent model overfits its node's data."""
    return context_of()


@pytest.fixture(scope="module")
def shatter() -> AttackContext:
    return context_of(rounds=2, protocol={"name": "shatter", "virtual_nodes": 2, "degree": 3})


# ----------------------------------------------------------------------- run context


def test_context_rebuilds_the_runs_data_and_initial_model(dpsgd):
    built = build(dpsgd.config)
    for ours, theirs in zip(dpsgd.data.node_indices, built.data.node_indices):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(dpsgd.data.nonmember_indices, built.data.nonmember_indices)
    torch.testing.assert_close(dpsgd.initial, built.engine.spec.flatten(built.model))
    assert dpsgd.protocol_name == "d-psgd" and dpsgd.protocol.exchanges == 1
    assert dpsgd.parties == ["node:0"] and dpsgd.party_nodes("node:0") == (0,)
    assert dpsgd.final.shape == (NODES, dpsgd.spec.dim) and dpsgd.final_round == ROUNDS


def test_runs_without_observation_log_or_models_refused(tmp_path):
    unobserved = run(config(observer=None, rounds=1), progress=False)
    unobserved.save(tmp_path / "unobserved")
    with pytest.raises(PrivlabError, match="has no observation log: rerun with an observer"):
        AttackContext.from_run(tmp_path / "unobserved")
    observed = run(config(rounds=1), progress=False)
    with pytest.raises(PrivlabError, match="kept no final models"):
        AttackContext.from_run(dataclasses.replace(observed, models=None))
    observed.save(tmp_path / "observed")
    context = AttackContext.from_run(tmp_path / "observed")
    first = next(received_models(context))
    assert first.round == 1 and first.victim != 0


# -------------------------------------------------------------------- received models


def test_received_models_estimate_the_attackers_own_model(dpsgd):
    models = list(received_models(dpsgd))
    senders = {m.victim for m in models}
    assert len(senders) == 3 and len(models) == 3 * ROUNDS  # three neighbours, every round
    first = [m for m in models if m.round == 1]
    second = [m for m in models if m.round == 2]
    # round 1: every node starts from the initial model, known exactly
    torch.testing.assert_close(first[0].own, dpsgd.initial)
    # round 2: the mean of what round 1 brought
    torch.testing.assert_close(second[0].own, torch.stack([m.params for m in first]).mean(0))
    assert all(m.coverage == 1.0 and m.sender == m.victim for m in models)


def test_received_models_of_one_exchange_and_rounds(dpsgd):
    assert {m.round for m in received_models(dpsgd, rounds=[2, 4])} == {2, 4}
    with pytest.raises(PrivlabError, match=r"exchange must be an integer in \[-1, 0\]"):
        received_models(dpsgd, exchange=1)
    with pytest.raises(PrivlabError, match="party must be one of node:0"):
        received_models(dpsgd, party="node:3")


def test_muffliato_exchanges_carry_different_models():
    context = context_of(
        rounds=1, protocol={"name": "muffliato", "noise_multiplier": 0.1, "gossip_steps": 2}
    )
    noisy = list(received_models(context, exchange=0))
    averaged = list(received_models(context))  # the last exchange: after one averaging
    assert [m.exchange for m in noisy + averaged] == [0] * 3 + [1] * 3
    for a, b in zip(noisy, averaged):
        assert a.victim == b.victim and not torch.allclose(a.params, b.params)
    with pytest.raises(PrivlabError, match=r"exchange must be an integer in \[-2, 1\]"):
        received_models(context, exchange=2)


def test_cesar_refused():
    context = context_of(
        rounds=1, protocol={"name": "cesar", "fraction": 0.5, "sparsifier": "random"}
    )
    with pytest.raises(PrivlabError, match="protocol cesar shows a curious receiver only masked"):
        received_models(context)
    with pytest.raises(PrivlabError, match="attack the aggregate instead"):
        ReceivedModelMIA().run(context)


def test_shatter_chunks_need_a_completion(shatter):
    with pytest.raises(PrivlabError, match="sends chunks .* pass completion='own', 'zeros'"):
        ReceivedModelMIA().run(shatter)
    zeros = list(received_models(shatter, completion="zeros", rounds=[1]))
    own = list(received_models(shatter, completion="own", rounds=[1]))
    raw = next(iter(shatter.observations.observations))  # round 1: 2 of 6 chunks are 0's own
    assert raw.true_sender.tolist().count(0) == 2
    assert len(zeros) == len(own) == 4 and all(m.victim != 0 for m in own)
    for z, o in zip(zeros, own):
        carried = z.params != 0
        assert 0.45 < z.coverage < 0.55  # two chunks of an MLP: half the coordinates each
        torch.testing.assert_close(o.params[carried], z.params[carried])
        torch.testing.assert_close(o.params[~carried], o.own[~carried])


# --------------------------------------------------------------------- membership samples


def test_membership_samples_match_the_members_labels():
    context = context_of(
        rounds=1, data={"dataset": "digits", "partition": "dirichlet", "alpha": 0.1}
    )
    victim = 3
    matched = membership_samples(context, victim, num=60, seed=0)
    members = matched.indices[matched.is_member]
    nonmembers = matched.indices[~matched.is_member]
    assert len(members) == len(nonmembers) > 0
    assert set(members) <= set(context.data.node_indices[victim])
    assert set(nonmembers) <= set(context.data.nonmember_indices)
    assert sorted(context.labels(members)) == sorted(context.labels(nonmembers))
    unmatched = membership_samples(context, victim, num=60, seed=0, match_labels=False)
    assert unmatched.is_member.sum() == (~unmatched.is_member).sum() == 60
    labels = context.labels(unmatched.indices[~unmatched.is_member])
    assert len(set(labels)) > len(set(context.labels(members)))


def test_label_skew_inflates_the_auc_of_a_barely_trained_model():
    """Dirichlet(0.1) nodes, one round of 4 small steps (test accuracy ~10 %): unmatched
    non-members are told apart by their labels alone; matched ones are not."""
    context = context_of(
        rounds=1,
        data={"dataset": "digits", "partition": "dirichlet", "alpha": 0.1},
        training={"lr": 0.05, "momentum": 0.0, "batch_size": 16, "local_steps": 4},
    )
    matched = quiet(ReceivedModelMIA(match_labels=True), context).pooled
    unmatched = quiet(ReceivedModelMIA(match_labels=False), context).pooled
    assert matched.auc_ci[0] < 0.5 < matched.auc_ci[1]
    assert unmatched.auc_ci[0] > 0.7
    assert unmatched.auc > matched.auc + 0.2


# --------------------------------------------------------------------------- the attack


def test_loss_attack_finds_members_of_overfitting_nodes(dpsgd):
    result = quiet(ReceivedModelMIA(method="loss"), dpsgd)
    assert result.pooled.auc > 0.65 and result.pooled.auc_ci[0] > 0.6
    assert result.attacker == "peer"


def test_large_dp_sgd_noise_leaves_the_auc_at_one_half():
    context = context_of(rounds=2, gradient={"name": "dp-sgd", "noise_multiplier": 5.0})
    pooled = quiet(ReceivedModelMIA(method="loss"), context).pooled
    assert pooled.auc_ci[0] < 0.5 < pooled.auc_ci[1]
    assert abs(pooled.auc - 0.5) < 0.05


def test_instance_table_has_one_row_per_victim_and_round(dpsgd):
    result = quiet(ReceivedModelMIA(), dpsgd)
    table = result.instances
    victims = sorted({m.victim for m in received_models(dpsgd)})
    assert len(table) == len(victims) * ROUNDS
    assert not table.duplicated(["victim", "round"]).any()
    assert sorted(table.victim.unique()) == victims
    assert set(table["round"]) == set(range(1, ROUNDS + 1))
    assert {"auc", "auc_low", "auc_high", "tpr@0.01", "tpr@0.001", "tpr@0"} <= set(table)
    np.testing.assert_allclose(table.auc, [e.auc for e in result.evaluations])


def test_pooled_is_the_evaluation_of_the_concatenated_scores(dpsgd):
    result = quiet(ReceivedModelMIA(), dpsgd)
    scores = np.concatenate([e.scores for e in result.evaluations])
    members = np.concatenate([e.is_member for e in result.evaluations])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResolutionWarning)
        direct = evaluate_membership(scores, members)
    assert result.pooled.auc == pytest.approx(direct.auc, abs=1e-12)
    assert result.pooled.tpr_at_fpr["0.01"].tpr == pytest.approx(direct.tpr_at_fpr["0.01"].tpr)


def test_shatter_and_zipdl_aggregations(dpsgd):
    result = quiet(ReceivedModelMIA(), dpsgd)
    table = result.instances
    per_victim, per_round = result.per_victim(), result.per_round()
    assert per_victim.instances.sum() == per_round.instances.sum() == len(table)
    for victim, row in per_victim.set_index("victim").iterrows():
        aucs = table.auc[table.victim == victim]
        assert row.auc_mean == pytest.approx(aucs.mean()) and row.auc_max == aucs.max()
    by_round = table.groupby("round").auc.mean()
    assert result.mean_over_rounds() == pytest.approx(by_round.mean())
    assert result.summary()["auc_mean_over_rounds"] == pytest.approx(by_round.mean())


def test_aggregates_over_rounds(dpsgd):
    victims = len({m.victim for m in received_models(dpsgd)})
    last = quiet(ReceivedModelMIA(aggregate="last"), dpsgd).instances
    assert len(last) == victims and set(last["round"]) == {ROUNDS}
    for aggregate in ("mean", "max"):
        result = quiet(ReceivedModelMIA(aggregate=aggregate), dpsgd)
        assert len(result.instances) == victims and result.instances["round"].isna().all()
        assert result.pooled.auc > 0.6
        with pytest.raises(PrivlabError, match="aggregate 'pooled' or 'last'"):
            result.per_round()


def test_calibrated_subtracts_the_loss_under_the_attackers_own_model(dpsgd):
    result = quiet(ReceivedModelMIA(method="calibrated"), dpsgd, rounds=[1])
    first = next(received_models(dpsgd, rounds=[1]))
    sample = membership_samples(dpsgd, first.victim, num=200, seed=0)
    x, y = dpsgd.samples(sample.indices)
    both = torch.stack([first.params, dpsgd.initial])  # round 1: the own model is the initial one
    loss = per_example_loss(model_logits(dpsgd.model, both, x), y).numpy()
    np.testing.assert_allclose(result.evaluations[0].scores, loss[1] - loss[0], rtol=1e-9)


@pytest.mark.parametrize("method", ["population", "rmia-offline", "calibrated"])
def test_peer_methods_beat_chance_on_overfitting_nodes(dpsgd, method):
    result = quiet(ReceivedModelMIA(method=method), dpsgd)
    assert result.attacker == "peer" and result.pooled.auc_ci[0] > 0.5


def test_trajectory_classifier_is_an_oracle_scored_on_held_out_samples(dpsgd):
    attack = ReceivedModelMIA(method="trajectory", samples_per_victim=40)
    result = quiet(attack, dpsgd)
    table = result.instances
    assert attack.attacker == METHODS["trajectory"] == "oracle"
    assert table["round"].isna().all() and len(table) == table.victim.nunique()
    sample = membership_samples(dpsgd, int(table.victim[0]), num=40, seed=0)
    held_out = sample.is_member.sum() - round(0.5 * sample.is_member.sum())
    assert table.members[0] == held_out
    assert result.pooled.auc > 0.55


def test_mask_aware_compares_the_chunk_with_the_own_model(shatter):
    loss = quiet(ReceivedModelMIA(completion="mask-aware"), shatter, rounds=[2])
    calibrated = quiet(ReceivedModelMIA("calibrated", completion="own"), shatter, rounds=[2])
    for a, b in zip(loss.evaluations, calibrated.evaluations):
        np.testing.assert_allclose(a.scores, b.scores)
    plain = quiet(ReceivedModelMIA(completion="own"), shatter, rounds=[2])
    assert not np.allclose(plain.evaluations[0].scores, loss.evaluations[0].scores)


def test_eavesdropper_has_no_data_for_population_methods():
    context = context_of(
        rounds=1, topology={"name": "ring"}, observer={"eavesdropped_links": [[1, 0]]}
    )
    assert context.parties == ["eavesdropper"] and context.party_nodes("eavesdropper") == ()
    assert len(quiet(ReceivedModelMIA(), context).instances) == 1
    with pytest.raises(PrivlabError, match="party eavesdropper holds none: use loss or calibrated"):
        ReceivedModelMIA(method="population").run(context)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"method": "lira"}, "method must be one of loss, population"),
        ({"aggregate": "min"}, "aggregate must be one of pooled, last, mean, max"),
        ({"method": "trajectory", "aggregate": "mean"}, "aggregate must be 'pooled' for method"),
        ({"method": "trajectory", "completion": "mask-aware"}, "completion must be 'own' or"),
        ({"train_fraction": 1.0}, r"train_fraction must be in \(0, 1\)"),
        ({"reference_models": 3}, "reference_models must be an even integer >= 2, got 3"),
        ({"reference_models": 0}, "reference_models must be an even integer >= 2, got 0"),
        ({"reference_epochs": 0}, "reference_epochs must be None or an integer >= 1"),
        (
            {"method": "rmia-online", "completion": "mask-aware"},
            "completion must be 'own' or 'zeros' for method 'rmia-online'",
        ),
    ],
)
def test_bad_options_refused(options, match):
    with pytest.raises(PrivlabError, match=match):
        ReceivedModelMIA(**options)


# ------------------------------------------------------------- reference-model oracles


@pytest.mark.parametrize(
    ("method", "auc_low"), [("lira-online", 0.62), ("lira-offline", 0.55), ("rmia-online", 0.62)]
)
def test_reference_model_oracles_find_members(dpsgd, method, auc_low):
    attack = ReceivedModelMIA(method=method, reference_models=8)
    result = quiet(attack, dpsgd)
    assert attack.attacker == METHODS[method] == "oracle" == result.attacker
    assert len(result.instances) == 3 * ROUNDS
    assert result.pooled.auc_ci[0] > auc_low and result.pooled.auc > 0.6


def reference_targets(context, attack):
    """The attack on round 2, the first instance's received model and its sample."""
    result = quiet(attack, context, rounds=[2])
    victim = int(result.instances.victim[0])
    target = next(m for m in received_models(context, rounds=[2]) if m.victim == victim)
    sample = membership_samples(context, victim, num=200, seed=0)
    return result.evaluations[0].scores, target, sample


def test_lira_scores_the_received_model_against_references_trained_as_stated(dpsgd):
    attack = ReceivedModelMIA(method="lira-online", reference_models=8)
    scores, target, sample = reference_targets(dpsgd, attack)
    pool = len(sample.indices)
    steps_per_epoch = math.ceil(math.ceil(pool / 2) / OVERFIT["batch_size"])
    epochs = math.ceil(ROUNDS * OVERFIT["local_steps"] / steps_per_epoch)
    references = train_reference_models(
        dpsgd.model, dpsgd.data.dataset, sample.indices, num_models=8, epochs=epochs,
        batch_size=8, lr=0.1, momentum=0.9, seed=derive_seed(0, "reference-models", target.victim),
    )  # fmt: skip
    torch.testing.assert_close(
        references.params, attack.train_references(dpsgd, target.victim).params
    )
    x, y = dpsgd.samples(sample.indices)
    phi = scaled_logit(model_logits(dpsgd.model, target.params[None], x), y)[0]
    phi_references = scaled_logit(model_logits(dpsgd.model, references.params, x), y)
    # 8 references, 4 IN and 4 OUT per example: "auto" is the global variance
    direct = lira_scores(phi, phi_references, references.keep, online=True, variance="global")
    np.testing.assert_allclose(scores, direct, rtol=1e-9)


def test_rmia_online_population_is_a_test_sample_the_references_train_on(dpsgd):
    attack = ReceivedModelMIA(method="rmia-online", reference_models=8, population=50)
    scores, target, sample = reference_targets(dpsgd, attack)
    references = attack.train_references(dpsgd, target.victim)
    n = len(sample.indices)
    np.testing.assert_array_equal(references.pool[:n], sample.indices)
    population = references.pool[n:]
    assert len(population) == 50 and set(population) <= set(dpsgd.data.test_indices)
    x, y = dpsgd.samples(references.pool)
    prob = true_class_probability(model_logits(dpsgd.model, target.params[None], x), y)[0]
    reference_prob = true_class_probability(model_logits(dpsgd.model, references.params, x), y)
    direct = rmia_scores(
        prob[:n], reference_prob[:, :n], references.keep[:, :n], prob[n:], reference_prob[:, n:],
        online=True,
    )  # fmt: skip
    np.testing.assert_allclose(scores, direct)
    assert len(np.unique(scores)) > 10


def test_reference_models_score_completed_shatter_chunks(shatter):
    attack = ReceivedModelMIA(method="lira-online", completion="own", reference_models=2)
    result = quiet(attack, shatter, rounds=[2])
    assert len(result.instances) == len(
        list(received_models(shatter, rounds=[2], completion="own"))
    )
    assert np.isfinite(np.concatenate([e.scores for e in result.evaluations])).all()


def test_lira_online_through_the_command_line(tmp_path):
    folder = tmp_path / "run"
    run(config(rounds=2), progress=False).save(folder)
    argv = ["attack", "mia", str(folder), "--method", "lira-online"]
    assert main([*argv, "--option", "reference_models=8", "--quiet"]) == 0
    report = json.loads((folder / "attacks" / "mia-lira-online" / "attack.json").read_text())
    assert report["method"] == "lira-online" and report["attacker"] == "oracle"
    assert report["summary"]["auc"] > 0.6
    assert main([*argv, "--option", "reference_models=3", "--quiet"]) == 2
