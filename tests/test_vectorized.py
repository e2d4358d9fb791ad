"""Vectorized clients (``run.vectorize``) against the per-client path they replace.

The references are independent: ``torch.optim.SGD`` for the update rule,
``fedsec.training.sgd_train`` for the loop (in float64, where the two must agree
to rounding), and the per-client ClientApp for a whole round (every returned
parameter within 1e-4).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from torch import nn

from fedsec import load_scenario, run
from fedsec.clients import BEHAVIOURS, Behaviour, register_behaviour
from fedsec.data import TensorData
from fedsec.federation import stacked, vectorized
from fedsec.federation.client import client_app
from fedsec.federation.engines import LocalGrid, _server_context, node_id_of
from fedsec.federation.env import initial_state
from fedsec.models import MODELS, build_model, register_model
from fedsec.scenario import ScenarioError
from fedsec.training import sgd_train

QUICK = "experiments/quickstart.toml"


# -- the update rule and the loss ------------------------------------------------------------


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 1e-2), (0.5, 1e-3)])
def test_sgd_step_is_torch_sgd(momentum, weight_decay):
    """K clients' stacked step equals K torch.optim.SGD optimisers, bit for bit."""
    g = torch.Generator().manual_seed(0)
    K = 3
    P = torch.randn(K, 4, 5, generator=g)
    buf = torch.empty_like(P)
    ref = [nn.Parameter(P[k].clone()) for k in range(K)]
    opts = [torch.optim.SGD([p], lr=0.1, momentum=momentum, weight_decay=weight_decay) for p in ref]
    for t in range(4):
        grads = torch.randn(K, 4, 5, generator=g)
        vectorized.sgd_step(P, grads, buf if momentum else None, lr=0.1, momentum=momentum,
                            weight_decay=weight_decay, first=t == 0)
        for k in range(K):
            ref[k].grad = grads[k].clone()
            opts[k].step()
    for k in range(K):
        assert torch.equal(P[k], ref[k].detach())


def test_masked_cross_entropy_is_the_mean_over_real_samples():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0], [9.0, 9.0]], requires_grad=True)
    y = torch.tensor([0, 1, 1, 0])
    w = torch.tensor([1.0, 1.0, 0.0, 0.0])  # the last two rows are padding
    got = vectorized.masked_cross_entropy(logits, y, w)
    # by hand: mean of -log softmax over the two real rows
    want = (torch.log1p(torch.exp(torch.tensor(-2.0))) + torch.log1p(torch.exp(torch.tensor(-1.0)))) / 2
    assert torch.allclose(got, want)
    assert torch.allclose(got, F.cross_entropy(logits[:2], y[:2]))
    got.backward()
    assert torch.equal(logits.grad[2:], torch.zeros(2, 2))  # padding moves nothing


# -- the batched forward ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_stacked_forward_and_gradients_are_each_copys_own(name):
    torch.manual_seed(0)
    models = [build_model(name, in_shape=(1, 8, 8), num_classes=10) for _ in range(3)]
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models])
              for n, _ in models[0].named_parameters()}
    x = torch.rand(3, 5, 1, 8, 8)
    y = torch.randint(0, 10, (3, 5))
    w = torch.tensor([[1.0] * 5, [1.0] * 3 + [0.0] * 2, [1.0] * 5])
    assert stacked.unsupported(models[0]) is None
    logits = stacked.forward(models[0], params, x)
    grads, losses = stacked.loss_and_grads(models[0], params, {}, x, y, w)
    for k, m in enumerate(models):
        assert torch.allclose(logits[k], m(x[k]), atol=1e-5)
        b = int(w[k].sum())
        loss = F.cross_entropy(m(x[k, :b]), y[k, :b])
        loss.backward()
        assert torch.allclose(losses[k], loss.detach(), atol=1e-6)
        for n, p in m.named_parameters():
            assert torch.allclose(grads[n][k], p.grad, atol=1e-6), n


def test_stacked_names_what_it_cannot_run():
    assert "BatchNorm2d" in stacked.unsupported(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)))
    assert "Dropout" in stacked.unsupported(nn.Sequential(nn.Flatten(), nn.Dropout(), nn.Linear(64, 2)))
    assert "not an nn.Sequential" in stacked.unsupported(build_model("wrn", in_shape=(1, 8, 8), num_classes=10))


# -- the loop: exact semantics in float64 ------------------------------------------------------


@pytest.mark.parametrize("name,params,path", [
    ("cnn", {}, "stacked"), ("cnn", {}, "vmap"), ("mlp", {}, "auto"),
    ("wrn", {"depth": 10, "k": 1}, "auto"),  # BatchNorm: vmap, steps grouped by batch size
])
def test_train_many_is_sgd_train_per_client(name, params, path):
    """Uneven sizes (a short last batch, a client of 5, an empty one), momentum, weight
    decay, two epochs: each client's state and last-epoch loss as sgd_train gives them."""
    torch.manual_seed(0)
    model = build_model(name, in_shape=(1, 8, 8), num_classes=10, **params).double()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    sizes = [70, 33, 5, 64, 0]
    data = [TensorData(torch.rand(n, 1, 8, 8, dtype=torch.float64), torch.randint(0, 10, (n,))) for n in sizes]
    cfg = dict(epochs=2, batch_size=32, lr=0.05, momentum=0.9, weight_decay=1e-3)
    got, losses = vectorized.sgd_train_many(
        model, state, data, [torch.Generator().manual_seed(i) for i in range(len(data))], path=path, **cfg)
    for i, d in enumerate(data):
        ref_model = copy.deepcopy(model)
        loss = sgd_train(ref_model, d, generator=torch.Generator().manual_seed(i), device="cpu", **cfg)
        for k, v in ref_model.state_dict().items():
            assert torch.allclose(got[i][k].double(), v.double(), rtol=0, atol=1e-10), (i, k)
        assert losses[i] == pytest.approx(loss, abs=1e-10)
    assert losses[-1] == 0.0


# -- a whole round against the per-client path -------------------------------------------------


def _round(s, vectorize: bool) -> dict[int, tuple[dict | None, dict | str]]:
    """Partition -> (returned state, metrics) or (None, error reason), for round 1 of ``s``."""
    _server_context()
    grid = LocalGrid(client_app, s.data.num_clients)
    content = RecordDict({
        "arrays": ArrayRecord(initial_state(s)),
        "config": ConfigRecord({"scenario": s.to_toml(), "server-round": 1, "num-sampled": s.data.num_clients}),
    })
    pids = range(s.data.num_clients)
    msgs = [Message(content, node_id_of(p), MessageType.TRAIN) for p in pids]
    replies = vectorized.execute(client_app, msgs, [grid.contexts[node_id_of(p)] for p in pids],
                                 vectorize=vectorize)
    out = {}
    for p, r in zip(pids, replies):
        if r.has_error():
            out[p] = (None, r.error.reason)
        else:
            out[p] = (r.content["arrays"].to_torch_state_dict(), dict(r.content["metrics"]))
    return out


@pytest.fixture
def trained_together(monkeypatch):
    """The partition ids each batched pass trained."""
    seen: list[list[int]] = []
    real = vectorized.train_together

    def spy(info, global_state, clients, **kw):
        seen.append(sorted(c.pid for c in clients))
        return real(info, global_state, clients, **kw)

    monkeypatch.setattr(vectorized, "train_together", spy)
    return seen


def _assert_same_round(a, b, tol=1e-4):
    assert a.keys() == b.keys()
    for p in a:
        (sa, ma), (sb, mb) = a[p], b[p]
        assert (sa is None) == (sb is None), (p, ma, mb)
        if sa is None:
            assert ma == mb
            continue
        assert list(sa) == list(sb)
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape
            assert (sa[k].double() - sb[k].double()).abs().max() <= tol, (p, k)
        assert ma.keys() == mb.keys()
        assert ma["num-examples"] == mb["num-examples"] and ma["partition-id"] == mb["partition-id"] == p
        assert ma["train_loss"] == pytest.approx(mb["train_loss"], abs=tol)


ATTACKS = ('attack=[{behaviour = "badnets", partitions = [0, 1]},'
           ' {behaviour = "dba", partitions = [2, 3], params = {scale = 3.0}},'
           ' {behaviour = "code_poisoning", partitions = [4]},'
           ' {behaviour = "label_flip", partitions = [5]}]')


@pytest.mark.parametrize("model", ["cnn", "mlp"])
@pytest.mark.parametrize("partitioner", ["iid", "dirichlet"])
def test_round_matches_per_client_path(model, partitioner, trained_together):
    """BadNets, DBA (scaled in finalize) and label flip train in the batched pass, code
    poisoning (its own loss) on the per-client path, in the same round."""
    s = load_scenario(QUICK, [f'model.name="{model}"', f'data.partitioner="{partitioner}"', "data.num_clients=8",
                              "client.epochs=2", "client.weight_decay=0.001", 'run.engine="inline"',
                              "run.vectorize=true", ATTACKS])
    per_client = _round(s, vectorize=False)
    assert trained_together == []
    together = _round(s, vectorize=True)
    assert trained_together == [[0, 1, 2, 3, 5, 6, 7]]  # all but code poisoning
    _assert_same_round(per_client, together)
    # the attacks did something: DBA's update (scaled by 3 in finalize) is the largest
    g = initial_state(s)

    def norm(p):
        return sum(float((together[p][0][k] - g[k]).double().norm() ** 2) for k in g) ** 0.5

    assert min(norm(2), norm(3)) > 2 * max(norm(6), norm(7))


def test_batchnorm_running_statistics_match(trained_together):
    """WRN: running statistics per client, steps grouped by batch size.

    A mild learning rate: on 8x8 digits some channels are nearly constant, and
    BatchNorm turns rounding into large changes (the per-client loop itself moves
    up to 3e-3 in 12 steps at lr 0.01 when its start is perturbed by 1e-7), so
    only a well-conditioned run can show 1e-4 agreement in float32; the exact
    semantics are checked in float64 above."""
    s = load_scenario(QUICK, ['model.name="wrn"', "model.params={depth = 10, k = 1}", "data.num_clients=12",
                              "client.epochs=1", "client.lr=0.005", "client.batch_size=64", 'run.engine="inline"',
                              "run.vectorize=true", 'attack=[{behaviour = "badnets", partitions = [1]}]'])
    a, b = _round(s, vectorize=False), _round(s, vectorize=True)
    assert trained_together == [list(range(12))]
    _assert_same_round(a, b)
    stats = [k for k in a[0][0] if "running" in k or "num_batches" in k]
    assert stats and all(not torch.equal(a[0][0][k], initial_state(s)[k]) for k in stats)  # they moved


def test_client_errors_are_the_per_client_errors():
    """A prepare that raises (a target outside the classes) gives that client the same error reply."""
    s = load_scenario(QUICK, ["data.num_clients=3", "client.epochs=1", 'run.engine="inline"', "run.vectorize=true",
                              'attack=[{behaviour = "badnets", partitions = [1], params = {target = 12}}]'])
    a, b = _round(s, vectorize=False), _round(s, vectorize=True)
    assert a[1][0] is None and "target" in a[1][1]
    _assert_same_round(a, b)


# -- fallbacks ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class _FailingBatch(Behaviour):
    """Poisons nothing; its third batch raises."""

    def poison_batch(self, x, y, task):
        task.state["n"] = task.state.get("n", 0) + 1
        if task.state["n"] == 3:
            raise ValueError("third batch refused")
        return x, y


@pytest.fixture
def failing_batch_behaviour():
    register_behaviour("test_failing_batch")(_FailingBatch)
    yield "test_failing_batch"
    BEHAVIOURS._items.pop("test_failing_batch")


def test_a_failing_batch_reruns_the_group_per_client(failing_batch_behaviour, caplog):
    s = load_scenario(QUICK, ["data.num_clients=3", "client.epochs=2", 'run.engine="inline"', "run.vectorize=true",
                              f'attack=[{{behaviour = "{failing_batch_behaviour}", partitions = [2]}}]'])
    a = _round(s, vectorize=False)
    vectorized._SAID.clear()
    with caplog.at_level(logging.WARNING, logger="fedsec.vectorized"):
        b = _round(s, vectorize=True)
    assert a[2][0] is None and "third batch refused" in a[2][1]
    assert b[2] == a[2]
    assert all(torch.equal(a[p][0][k], b[p][0][k]) for p in (0, 1) for k in a[p][0])  # rerun: bitwise
    assert "retrain one by one" in caplog.text


@pytest.fixture
def dropout_model():
    @register_model("test_dropout_mlp")
    def _build(*, in_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], 32), nn.ReLU(),
                             nn.Dropout(0.5), nn.Linear(32, num_classes))

    yield "test_dropout_mlp"
    MODELS._items.pop("test_dropout_mlp")


def test_a_model_drawing_from_the_global_rng_trains_per_client(dropout_model, trained_together, caplog):
    s = load_scenario(QUICK, [f'model.name="{dropout_model}"', "data.num_clients=3", "client.epochs=1",
                              'run.engine="inline"', "run.vectorize=true"])
    a = _round(s, vectorize=False)
    vectorized._SAID.clear()
    with caplog.at_level(logging.WARNING, logger="fedsec.vectorized"):
        b = _round(s, vectorize=True)
    assert trained_together == []
    assert all(torch.equal(a[p][0][k], b[p][0][k]) for p in a for k in a[p][0])  # the same path: bitwise
    assert "global RNG" in caplog.text


def test_scenario_names_the_engines_that_vectorize():
    with pytest.raises(ScenarioError, match=r"run.vectorize.*'inline' or 'ray'"):
        load_scenario(QUICK, ['run.engine="flower"', "run.vectorize=true"])
    with pytest.raises(ScenarioError, match=r"run.vectorize: got 1, expected true or false"):
        load_scenario(QUICK, ["run.vectorize=1"])


# -- engines -------------------------------------------------------------------------------------


def test_inline_run_with_vectorize(tmp_path, trained_together):
    base = ["data.num_clients=5", "server.rounds=2", "client.epochs=1", "server.fraction_train=0.6",
            'run.engine="inline"']
    a = run(load_scenario(QUICK, base), output=tmp_path)
    b = run(load_scenario(QUICK, base + ["run.vectorize=true"]), output=tmp_path)
    assert [r["sampled"] for r in a.history] == [r["sampled"] for r in b.history]
    assert trained_together == [r["sampled"] for r in b.history]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert max((sa[k] - sb[k]).abs().max().item() for k in sa) < 1e-4


def test_ray_chunks_match_inline(tmp_path):
    """Each actor trains its chunk together; the model is inline's to float tolerance."""
    base = ["data.num_clients=6", "server.rounds=2", "client.epochs=1", "run.vectorize=true"]
    a = run(load_scenario(QUICK, base + ['run.engine="inline"']), output=tmp_path)
    b = run(load_scenario(QUICK, base + ['run.engine="ray"']), output=tmp_path)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert max((sa[k] - sb[k]).abs().max().item() for k in sa) < 1e-4
    assert [r["train_loss"] for r in a.history] == pytest.approx([r["train_loss"] for r in b.history], abs=1e-4)


@pytest.mark.slow
def test_quickstart_accuracy_matches_inline(tmp_path):
    a = run(load_scenario(QUICK, ['run.engine="inline"']), output=tmp_path)
    b = run(load_scenario(QUICK, ['run.engine="inline"', "run.vectorize=true"]), output=tmp_path)
    assert abs(a.history[-1]["clean_acc"] - b.history[-1]["clean_acc"]) <= 0.01


def test_ray_chunks_balance_partition_sizes_and_leave_the_rest_alone():
    s = load_scenario(QUICK, ["data.num_clients=7", 'run.engine="ray"', "run.vectorize=true",
                              'attack=[{behaviour = "code_poisoning", partitions = [3]}]'])
    _server_context()
    grid = LocalGrid(client_app, 7)
    content = RecordDict({"arrays": ArrayRecord(initial_state(s)),
                          "config": ConfigRecord({"scenario": s.to_toml(), "server-round": 1})})
    msgs = [Message(content, node_id_of(p), MessageType.TRAIN) for p in range(7)]
    ctxs = [grid.contexts[node_id_of(p)] for p in range(7)]
    chunks, rest = vectorized.plan_chunks(msgs, ctxs, workers=2)
    assert rest == [3] and sorted(i for c in chunks for i in c) == [0, 1, 2, 4, 5, 6] and len(chunks) == 2
    from fedsec.federation.env import partitions_of

    sizes = [sum(len(partitions_of(s)[i]) for i in c) for c in chunks]
    biggest = max(len(partitions_of(s)[i]) for i in range(7) if i != 3)
    assert abs(sizes[0] - sizes[1]) <= biggest  # greedy: within one partition of even
    off = load_scenario(QUICK, ["data.num_clients=7", 'run.engine="ray"'])
    content_off = RecordDict({"arrays": ArrayRecord(initial_state(off)),
                              "config": ConfigRecord({"scenario": off.to_toml(), "server-round": 1})})
    msgs_off = [Message(content_off, node_id_of(p), MessageType.TRAIN) for p in range(7)]
    assert vectorized.plan_chunks(msgs_off, ctxs, workers=2) == ([], list(range(7)))
