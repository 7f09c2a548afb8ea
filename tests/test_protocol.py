"""Messages, the observer and the observation log; the contract's four shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import set_up
from scipy import stats
from toy_protocols import MaskedSum, PerReceiverNoise, PseudonymousChunks, Rumor

from privlab.errors import PrivlabError
from privlab.mechanisms import DecentralizedSGD
from privlab.observe import ObservationLog, Observer, ThreatModel, threat_model_from
from privlab.protocol import INDEX_BYTES, Messages
from privlab.topology import build_topology


def plan_of(name="regular", n=8, **options):
    return build_topology(
        name, n, seed=0, **(options or ({"degree": 4} if name == "regular" else {}))
    )


def test_bytes_count_payload_indices_and_metadata():
    payload = torch.zeros(3, 4)
    indices = torch.tensor([[0, 1, 2, 3], [4, 5, -1, -1], [6, -1, -1, -1]])
    msgs = Messages(
        torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2]), payload, indices=indices, metadata_bytes=4
    )
    parts = msgs.bytes_per_message()
    assert parts["payload"].tolist() == [16, 8, 4]
    assert parts["indices"].tolist() == [4 * INDEX_BYTES, 2 * INDEX_BYTES, INDEX_BYTES]
    assert msgs.bytes_sent(3).tolist() == [16 + 8 + 24 + 8, 4 + 4 + 4, 0]


def test_row_shared_messages_read_senders_rows_without_copying():
    rows = torch.arange(12.0).view(4, 3)
    msgs = Messages.of_rows(rows, torch.tensor([2, 0]), torch.tensor([1, 3]))
    assert torch.equal(msgs.payload, rows[[2, 0]])
    assert msgs.bytes_sent(4).tolist() == [12, 0, 12, 0]
    assert msgs.inbox(3).rows is rows and msgs.inbox(3).src.tolist() == [0]


def test_malformed_messages_are_refused():
    with pytest.raises(PrivlabError, match="payload"):
        Messages(torch.tensor([0, 1]), torch.tensor([1, 0]), torch.zeros(3, 2))
    with pytest.raises(PrivlabError, match="exactly one"):
        Messages(torch.tensor([0]), torch.tensor([1]))


def record_round(threat: ThreatModel, protocol, n=8, rounds=2):
    topology = plan_of(n=n)
    plan = topology.plan(0)
    set_up(protocol, topology, 5)
    observer = Observer(threat, n, 5)
    params = torch.randn(n, 5)
    for t in range(rounds):
        observer.record(t, 0, protocol.send(params, plan, t, 0))
    return observer.log, plan, params


def test_curious_nodes_see_exactly_their_inbox():
    log, plan, params = record_round(threat_model_from(curious_nodes=[2, 5]), DecentralizedSGD())
    assert log.parties == ["node:2", "node:5"]
    first = log.for_party("node:2")[0]
    expected = sorted(plan.src[plan.dst == 2].tolist())
    assert sorted(first.sender.tolist()) == expected
    assert torch.equal(first.payload, params[first.sender])
    assert len(log) == 2 * int((plan.dst == 2).sum() + (plan.dst == 5).sum())


def test_colluders_form_one_party_and_eavesdropper_sees_links():
    plan = plan_of().plan(0)
    links = set(zip(plan.src.tolist(), plan.dst.tolist()))
    link = next(iter(sorted(links)))
    threat = threat_model_from(curious_nodes=[2, 5], colluding=True, eavesdropped_links=[link])
    log, _, _ = record_round(threat, DecentralizedSGD(), rounds=1)
    assert log.parties == ["coalition:2,5", "eavesdropper"]
    spy = log.for_party("eavesdropper")[0]
    assert list(zip(spy.true_sender.tolist(), spy.receiver.tolist())) == [link]
    assert set(log.for_party("coalition:2,5")[0].receiver.tolist()) == {2, 5}


def test_observer_records_only_the_chosen_rounds():
    log, _, _ = record_round(
        threat_model_from(curious_nodes=[0], rounds=[1]), DecentralizedSGD(), rounds=3
    )
    assert log.rounds() == [1]


def test_log_memory_grows_with_what_the_adversary_sees():
    small, _, _ = record_round(threat_model_from(curious_nodes=[0]), DecentralizedSGD(), rounds=2)
    large, _, _ = record_round(
        threat_model_from(curious_nodes=list(range(8))), DecentralizedSGD(), rounds=2
    )
    assert large.nbytes() == 8 * small.nbytes()  # 4-regular: every node has 4 senders


def test_observation_log_round_trips_through_a_file(tmp_path):
    log, _, _ = record_round(
        threat_model_from(curious_nodes=[1], eavesdropped_links=[[3, 4]]),
        PseudonymousChunks(),
        rounds=2,
    )
    log.save(tmp_path / "log.pt")
    loaded = ObservationLog.load(tmp_path / "log.pt")
    assert loaded.threat_model == log.threat_model and loaded.rounds() == log.rounds()
    for a, b in zip(log.observations, loaded.observations):
        assert torch.equal(a.payload, b.payload) and torch.equal(a.indices, b.indices)
        assert torch.equal(a.sender, b.sender) and torch.equal(a.true_sender, b.true_sender)


def test_invalid_threat_models_name_the_field():
    with pytest.raises(PrivlabError, match="observer.curious_nodes"):
        Observer(threat_model_from(curious_nodes=[9]), 8, 3)
    with pytest.raises(PrivlabError, match="observer.eavesdropped_links"):
        Observer(threat_model_from(eavesdropped_links=[[2, 2]]), 8, 3)
    with pytest.raises(PrivlabError, match="observer"):
        Observer(ThreatModel(), 8, 3)
    with pytest.raises(PrivlabError, match="observer.curious_nodes must be distinct"):
        Observer(ThreatModel(curious_nodes=(3, 1, 1)), 8, 3)


# ---- the four shapes the mechanisms need


def test_per_receiver_payloads_differ_and_cancel_in_the_network_sum():
    protocol, plan = set_up(PerReceiverNoise(sigma=1.0), plan_of(), 6), plan_of().plan(0)
    params = torch.randn(8, 6)
    msgs = protocol.send(params, plan, 0, 0)
    from_zero = msgs.payload[msgs.src == 0]
    assert not torch.allclose(from_zero[0], from_zero[1])
    assert (from_zero - params[0]).abs().mean() > 0.3  # each receiver sees a noisy model
    mixed = protocol.receive(params, msgs, plan, 0, 0)  # MH on a 4-regular graph: weights 1/5
    assert torch.allclose(mixed.sum(dim=0), params.sum(dim=0), atol=1e-5)


def test_chunks_carry_indices_and_pseudonyms_only():
    threat = threat_model_from(curious_nodes=[0, 1, 2, 3], colluding=True)
    log, plan, params = record_round(threat, PseudonymousChunks(chunks=3), rounds=1)
    seen = log.observations[0]
    assert seen.indices is not None and (seen.indices >= -1).all()
    assert not torch.equal(seen.sender, seen.true_sender)
    assert len(set(seen.sender.tolist())) == len(seen.sender)  # one pseudonym per chunk
    valid = seen.indices >= 0
    owners = seen.true_sender.unsqueeze(1).expand_as(seen.indices)
    assert torch.equal(seen.payload[valid], params[owners[valid], seen.indices[valid]])


def test_masked_messages_hide_the_model_and_reveal_the_sum():
    protocol, plan = set_up(MaskedSum(), plan_of(), 400), plan_of().plan(0)
    params = torch.randn(8, 400)
    msgs = protocol.send(params, plan, 0, 0)
    wire = msgs.payload.numpy().view(np.uint64)[msgs.dst.numpy() == 0]
    uniform = wire[0].astype(np.float64) / 2.0**64
    assert stats.kstest(uniform, "uniform").pvalue > 1e-3
    assert abs(np.corrcoef(uniform, params[int(msgs.src[msgs.dst == 0][0])].numpy())[0, 1]) < 0.2
    expected = DecentralizedSGD().receive(
        params, DecentralizedSGD().send(params, plan, 0, 0), plan, 0, 0
    )
    assert (protocol.receive(params, msgs, plan, 0, 0) - expected).abs().max() < 4 * 2.0**-24 + 1e-6


def test_rumor_first_spy_sees_the_front_of_the_spread():
    n, protocol = 8, Rumor(source=0)
    topology = build_topology("ring", n)
    set_up(protocol, topology, 3)
    observer = Observer(threat_model_from(curious_nodes=[4]), n, 1)
    state = protocol.initial_state(torch.zeros(n, 3))
    for t in range(4):
        plan = topology.plan(t)
        msgs = protocol.send(state, plan, t, 0)
        observer.record(t, 0, msgs)
        state = protocol.receive(state, msgs, plan, t, 0)
    first = observer.log.observations[0]
    assert first.round == 3 and sorted(first.sender.tolist()) == [3, 5]
    assert state.flatten().tolist() == [1.0] * n
