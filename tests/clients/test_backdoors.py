"""Backdoor behaviours: BadNets, DBA, model replacement, backdoored pretrained model."""

import json

import pytest
import torch
from safetensors import safe_open
from torch import nn

from fedsec.clients import BEHAVIOURS, ClientTask, TrainConfig, get_behaviour
from fedsec.clients.attacks.pretrained import craft_backdoor
from fedsec import Scenario, load_scenario, run
from fedsec.data import TensorData
from fedsec.data.triggers import Trigger
from fedsec.federation.env import initial_state, new_model
from fedsec.metrics import attack_success_rate
from fedsec.scenario import AttackConfig, DataConfig, ModelConfig, ScenarioError, ServerConfig


def task_for(pid=0, coalition=(0,), num_sampled=10, server_lr=1.0, global_state=None, seed=0,
             model=None, data=None):
    """A ClientTask for calling one stage directly (model and data only where the stage reads them)."""
    return ClientTask(
        partition_id=pid, server_round=1, num_clients=10, num_sampled=num_sampled, num_classes=10,
        in_shape=(1, 8, 8), coalition=tuple(coalition), generator=torch.Generator().manual_seed(seed),
        device=torch.device("cpu"), global_state=global_state or {}, server_lr=server_lr,
        model=model if model is not None else nn.Identity(),
        data=data if data is not None else TensorData(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)),
        config=TrainConfig(epochs=1, batch_size=8, lr=0.1),
    )


def finalize(b, model, **kw) -> dict[str, float]:
    """Run ``b.finalize`` on ``model`` as the trained model; returns the task's metrics."""
    task = task_for(model=model, **kw)
    b.finalize(task)
    return task.metrics


def prepare(b, data, **kw) -> TensorData:
    """Run ``b.prepare`` on ``data``; returns the data the loop would train on."""
    task = task_for(data=data, **kw)
    b.prepare(task)
    return task.data


def stamped(x_before: torch.Tensor, x_after: torch.Tensor) -> torch.Tensor:
    """(B,) bool: which rows changed."""
    return (x_before != x_after).flatten(1).any(1)


# -- BadNets ---------------------------------------------------------------------------------
@pytest.mark.parametrize("p, batch", [(0.3, 32), (0.1, 64), (0.5, 7), (1.0, 5), (0.01, 20)])
def test_badnets_relabels_round_p_b_per_batch(p, batch):
    b = get_behaviour("badnets", poison_fraction=p, target=3)
    x, y = torch.zeros(batch, 1, 8, 8), torch.full((batch,), 7)
    x2, y2 = b.poison_batch(x, y, task_for())
    rows = stamped(x, x2)
    assert int(rows.sum()) == round(p * batch)
    assert torch.equal(rows, y2 != y)  # exactly the stamped rows are relabelled
    assert bool((y2[rows] == 3).all())
    assert torch.all(x2[rows][:, :, 5:, 5:] == 1.0)  # default 3x3 patch, bottom-right
    assert torch.equal(x, torch.zeros(batch, 1, 8, 8)) and bool((y == 7).all())  # no in-place edit


def test_badnets_dataset_mode_poisons_the_local_set_once():
    b = get_behaviour("badnets", poison_fraction=0.25, per="dataset", target=1)
    data = TensorData(torch.zeros(40, 1, 8, 8), torch.full((40,), 5))
    out = prepare(b, data)
    assert len(out) == 40 and int((out.y == 1).sum()) == 10
    assert torch.equal(stamped(data.x, out.x), out.y == 1)
    assert bool((data.y == 5).all()) and not bool(data.x.any())  # the caller's data is untouched
    x, y = b.poison_batch(out.x[:8], out.y[:8], task_for())
    assert torch.equal(x, out.x[:8]) and torch.equal(y, out.y[:8])


def test_badnets_all_to_all_and_eval_trigger():
    b = get_behaviour("badnets", poison_fraction=1.0, all_to_all=True)
    y = torch.arange(10)
    _, y2 = b.poison_batch(torch.zeros(10, 1, 8, 8), y, task_for())
    assert torch.equal(y2, (y + 1) % 10)
    trig = b.eval_triggers((0,))["badnets"]
    assert torch.equal(trig.targets(y), (y + 1) % 10)
    one = get_behaviour("badnets", target=4).eval_triggers((0,))["badnets"]
    assert bool((one.targets(y) == 4).all())


# -- DBA -------------------------------------------------------------------------------------
@pytest.mark.parametrize("coalition", [(2, 5), (1, 4, 9), (0, 3, 6, 8)])
def test_dba_local_pieces_follow_the_coalition(coalition):
    b = get_behaviour("dba", poison_fraction=1.0, target=0)
    full = b.trigger.support((1, 8, 8))
    seen = []
    for pid in coalition:
        x = torch.zeros(4, 1, 8, 8)
        x2, y2 = b.poison_batch(x, torch.full((4,), 9), task_for(pid, coalition))
        assert bool((y2 == 0).all())
        s = x2[0, 0] != 0
        assert torch.equal(s, b.trigger.split(len(coalition))[coalition.index(pid)].support((1, 8, 8)))
        seen.append(s)
    for i in range(len(seen)):
        for j in range(i + 1, len(seen)):
            assert not (seen[i] & seen[j]).any()
    assert torch.equal(torch.stack(seen).any(0), full)
    # the server always measures the FULL global trigger
    trig = b.eval_triggers(coalition)["dba"]
    assert torch.equal(trig.apply(torch.zeros(1, 1, 8, 8))[0, 0] != 0, full)


def test_dba_rejects_a_partition_outside_its_coalition():
    b = get_behaviour("dba")
    with pytest.raises(ValueError, match="coalition"):
        b.poison_batch(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), task_for(7, (1, 2)))


# -- update arithmetic (DBA scale, model replacement) ----------------------------------------
def tiny_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 10))


def trained_pair():
    g_net = tiny_net(0)
    g_net.train()
    g_net(torch.randn(16, 1, 8, 8))  # non-trivial BN running stats
    G = {k: v.detach().clone() for k, v in g_net.state_dict().items()}
    x_net = tiny_net(0)
    x_net.load_state_dict(G)
    with torch.no_grad():
        for p in x_net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    x_net(torch.randn(16, 1, 8, 8))
    X = {k: v.detach().clone() for k, v in x_net.state_dict().items()}
    return x_net, G, X


def diff_norm(a, b):
    return sum(float(((a[k] - b[k]) ** 2).sum()) for k in a if a[k].is_floating_point()) ** 0.5


@pytest.mark.parametrize("n, eta, gamma_param, expected", [(10, 1.0, 0.0, 10.0), (8, 0.5, 0.0, 16.0),
                                                             (10, 1.0, 3.0, 3.0)])
def test_model_replacement_submits_g_plus_gamma_x_minus_g(n, eta, gamma_param, expected):
    net, G, X = trained_pair()
    b = get_behaviour("model_replacement", gamma=gamma_param)
    out = finalize(b, net, num_sampled=n, server_lr=eta, global_state=G)
    assert out["replacement_gamma"] == pytest.approx(expected)
    L = net.state_dict()
    for k in G:
        if G[k].is_floating_point():
            assert torch.allclose(L[k] - G[k], expected * (X[k] - G[k]), rtol=1e-5, atol=1e-6), k
        else:
            assert torch.equal(L[k], X[k])  # integer buffers untouched
    if gamma_param:
        return
    # default gamma = n / eta: under plain FedAvg (eta/n times the sum) the global model becomes X
    honest_mean = {k: (L[k] - G[k]) / n for k in G if G[k].is_floating_point()}
    for k, d in honest_mean.items():
        assert torch.allclose(G[k] + eta * d, X[k], atol=1e-5)


@pytest.mark.parametrize("bound", [0.05, 0.3])
def test_model_replacement_norm_bound(bound):
    net, G, X = trained_pair()
    raw = diff_norm(X, G)
    b = get_behaviour("model_replacement", norm_bound=bound)
    out = finalize(b, net, num_sampled=10, global_state=G)
    L = net.state_dict()
    assert diff_norm(L, G) <= bound * (1 + 1e-5)
    assert diff_norm(L, G) == pytest.approx(min(bound, 10 * raw), rel=1e-4)
    assert out["replacement_gamma"] == pytest.approx(min(10.0, bound / raw), rel=1e-4)
    # direction is unchanged: L - G is a positive multiple of X - G
    k = "1.weight"
    assert torch.allclose(L[k] - G[k], out["replacement_gamma"] * (X[k] - G[k]), rtol=1e-4, atol=1e-7)


def test_model_replacement_bound_larger_than_update_leaves_gamma():
    net, G, X = trained_pair()
    out = finalize(get_behaviour("model_replacement", norm_bound=1e6), net, num_sampled=4, global_state=G)
    assert out["replacement_gamma"] == 4.0


def test_model_replacement_anomaly_loss():
    net, G, _ = trained_pair()
    b = get_behaviour("model_replacement", alpha=0.25)
    x, y = torch.randn(4, 1, 8, 8), torch.arange(4)
    net.eval()
    ce = nn.functional.cross_entropy(net(x), y)
    dist = sum(float(((p.detach() - G[k]) ** 2).sum()) for k, p in net.named_parameters())
    loss = b.loss(net, x, y, task_for(global_state=G, model=net))
    assert float(loss.detach()) == pytest.approx(0.25 * float(ce.detach()) + 0.75 * dist, rel=1e-5)


def test_dba_scale_factor():
    net, G, X = trained_pair()
    finalize(get_behaviour("dba", scale=2.5), net, global_state=G)
    L = net.state_dict()
    assert torch.allclose(L["3.weight"] - G["3.weight"], 2.5 * (X["3.weight"] - G["3.weight"]), atol=1e-6)
    net2, G2, X2 = trained_pair()
    finalize(get_behaviour("dba"), net2, global_state=G2)
    assert all(torch.equal(net2.state_dict()[k], X2[k]) for k in X2)


# -- pretrained ------------------------------------------------------------------------------
def test_craft_backdoor_checkpoint_starts_the_federation(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "bd.safetensors"
    trig = {"kind": "patch", "size": 2, "location": "top_left"}
    info = craft_backdoor(path, target=2, trigger=trig, poison_fraction=0.2, epochs=8, seed=1)
    assert info["path"] == str(path) and path.exists()
    assert info["asr"] > 0.9 and info["clean_acc"] > 0.8, info
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert Trigger.from_spec(json.loads(meta["trigger"])) == Trigger.from_spec(trig)
    assert meta["target"] == "2"

    s = Scenario(name="pre", data=DataConfig(num_clients=4), model=ModelConfig(init=str(path)),
                 server=ServerConfig(rounds=1),
                 attack=[AttackConfig(behaviour="pretrained", partitions=[0],
                                      params={"target": 2, "trigger": trig})])
    state = initial_state(s)
    with safe_open(str(path), "pt") as f:
        assert all(torch.equal(state[k], f.get_tensor(k)) for k in f.keys())
    model = new_model(s)
    model.load_state_dict(state)
    from fedsec.federation.env import dataset_of

    b = BEHAVIOURS.get("pretrained").from_params({"target": 2, "trigger": trig})
    asr = attack_success_rate(model, dataset_of(s).test, b.eval_triggers((0,))["pretrained"])
    assert asr == pytest.approx(info["asr"])
    # a different architecture is refused
    bad = s.replace(**{"model.params": {"width": 8}})
    with pytest.raises(ScenarioError, match="model.init"):
        initial_state(bad)


@pytest.mark.parametrize("kw, field", [({"epochs": 0}, "epochs"), ({"batch_size": 1.5}, "batch_size"),
                                       ({"lr": -1}, "lr"), ({"target": 10}, "target"),
                                       ({"poison_fraction": 0}, "poison_fraction"),
                                       ({"out": "x.pt"}, "out")])
def test_craft_backdoor_validates(tmp_path, kw, field):
    args = {"out": tmp_path / "a.safetensors", **kw}
    with pytest.raises(ValueError, match=f"^{field}:"):
        craft_backdoor(args.pop("out"), **args)


# -- end to end ------------------------------------------------------------------------------
def test_dba_federation_reports_the_global_trigger_asr(tmp_path):
    s = load_scenario("experiments/quickstart.toml", [
        "server.rounds=2", "data.num_clients=4", "client.epochs=2", 'run.engine="inline"',
        'attack=[{behaviour="dba", partitions=[0, 1], params={poison_fraction=0.3}}]'])
    r = run(s, output=tmp_path)
    assert set(r.history[-1]["asr"]) == {"dba"}
    assert r.history[-1]["malicious"] == [0, 1]


# -- parameter validation --------------------------------------------------------------------
BACKDOORS = ["badnets", "dba", "model_replacement", "pretrained"]


@pytest.mark.parametrize("name", BACKDOORS)
def test_unknown_parameter_is_named(name):
    with pytest.raises(TypeError, match="'targt'.*did you mean 'target'"):
        get_behaviour(name, targt=1)
    with pytest.raises(ScenarioError, match=r"attack\[0\]\.params.*'bogus'"):
        Scenario(attack=[AttackConfig(behaviour=name, partitions=[0], params={"bogus": 1})]).validate()


BAD = [
    ("badnets", {"target": -1}, "target"), ("badnets", {"target": 1.5}, "target"),
    ("badnets", {"poison_fraction": 0}, "poison_fraction"), ("badnets", {"poison_fraction": 1.2}, "poison_fraction"),
    ("badnets", {"per": "epoch"}, "per"), ("badnets", {"all_to_all": 1}, "all_to_all"),
    ("badnets", {"num_classes": 0}, "num_classes"), ("badnets", {"trigger": {"size": 0}}, r"trigger\.size"),
    ("badnets", {"trigger": "red"}, "trigger"),
    ("dba", {"scale": 0}, "scale"), ("dba", {"poison_fraction": True}, "poison_fraction"),
    ("dba", {"target": "a"}, "target"), ("dba", {"trigger": {"kind": "x"}}, r"trigger\.kind"),
    ("model_replacement", {"gamma": -1}, "gamma"), ("model_replacement", {"norm_bound": -0.1}, "norm_bound"),
    ("model_replacement", {"alpha": 0}, "alpha"), ("model_replacement", {"alpha": 1.5}, "alpha"),
    ("model_replacement", {"per": "x"}, "per"), ("model_replacement", {"poison_fraction": 2}, "poison_fraction"),
    ("pretrained", {"target": -2}, "target"), ("pretrained", {"trigger": {"alpha": 5}}, r"trigger\.alpha"),
]


@pytest.mark.parametrize("name, params, field", BAD)
def test_bad_values_name_the_field(name, params, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        get_behaviour(name, **params)
    with pytest.raises(ScenarioError, match=rf"attack\[0\]\.params: {field}"):
        Scenario(attack=[AttackConfig(behaviour=name, partitions=[0], params=params)]).validate()


def test_target_outside_the_dataset_is_caught_at_training_time():
    b = get_behaviour("badnets", target=12)
    with pytest.raises(ValueError, match="^target"):
        prepare(b, TensorData(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)))
    b = get_behaviour("badnets", all_to_all=True, num_classes=5)
    with pytest.raises(ValueError, match="^num_classes"):
        prepare(b, TensorData(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long)))
