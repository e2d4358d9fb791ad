"""Every registered attack through the one honest loop, plus the mechanics of the
non-backdoor attacks (bit flips, code poisoning, feature collision, label flip,
update attacks, omniscient server stages)."""

import math
from statistics import NormalDist

import pytest
import torch

from fedsec.clients import BEHAVIOURS, ClientContext, get_behaviour, local_train
from fedsec.clients.attacks.bitflip import attacked_layers, hamming_int8, quantize_int8
from fedsec.data import TensorData, load_dataset
from fedsec.metrics import attack_success_rate
from fedsec.models import build_model

ATTACKS = [n for n, cls in BEHAVIOURS.items() if cls.__module__.startswith("clients.attacks")]
OMNISCIENT = [n for n in ATTACKS if BEHAVIOURS.get(n).omniscient]


def test_the_zoo_is_registered():
    expected = {"badnets", "dba", "model_replacement", "pretrained", "code_poisoning", "bitflip",
                "bitflip_random", "feature_collision", "label_flip", "sign_flip", "gaussian",
                "alie", "ipm", "minmax", "minsum"}
    assert expected <= set(ATTACKS)
    assert set(OMNISCIENT) == {"alie", "ipm", "minmax", "minsum"}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def tiny(seed=0):
    torch.manual_seed(seed)
    return build_model("cnn", in_shape=(1, 8, 8), num_classes=10, width=4, hidden=16)


def ctx_for(model, seed=0, pid=0, coalition=(0, 1), num_sampled=4):
    return ClientContext(
        partition_id=pid, server_round=1, num_clients=4, num_sampled=num_sampled, num_classes=10,
        in_shape=(1, 8, 8), coalition=coalition, generator=torch.Generator().manual_seed(seed),
        device=torch.device("cpu"),
        global_state={k: v.detach().clone() for k, v in model.state_dict().items()},
    )


def train_once(name, data, seed=0, params=None, epochs=1):
    model = tiny()
    b = get_behaviour(name, **(params or {}))
    stats = local_train(model, data, epochs=epochs, batch_size=32, lr=0.05, momentum=0.9,
                        weight_decay=0.0, behaviour=b, ctx=ctx_for(model, seed))
    return model, stats, b


@pytest.mark.parametrize("name", ATTACKS)
def test_default_params_train_finite_and_deterministic(name, digits):
    data = digits.train.subset(torch.arange(64))
    ref = tiny().state_dict()
    m1, stats, _ = train_once(name, data, seed=3)
    m2, _, _ = train_once(name, data, seed=3)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert set(s1) == set(ref)
    for k in ref:
        assert s1[k].shape == ref[k].shape and s1[k].dtype == ref[k].dtype
        if name != "bitflip_random":  # exponent flips may overflow to inf by design
            assert bool(torch.isfinite(s1[k]).all()), k
        assert torch.equal(s1[k], s2[k]), f"{name}: {k} differs for the same generator seed"
    assert all(isinstance(v, float) and not math.isnan(v) for v in stats.values())


@pytest.mark.parametrize("name", ATTACKS)
def test_unknown_param_is_named(name):
    with pytest.raises(TypeError, match="'no_such_param'"):
        get_behaviour(name, no_such_param=1)


BAD_VALUES = [
    ("bitflip", {"mode": "both"}, "mode"), ("bitflip", {"max_flips": -1}, "max_flips"),
    ("bitflip", {"top_k": 0}, "top_k"), ("bitflip", {"train_first": "yes"}, "train_first"),
    ("bitflip_random", {"flips": -2}, "flips"), ("code_poisoning", {"task_weight": 1.5}, "task_weight"),
    ("code_poisoning", {"min_weight": 0.5}, "min_weight"), ("feature_collision", {"num_poisons": 0}, "num_poisons"),
    ("feature_collision", {"opacity": 1.0}, "opacity"), ("label_flip", {"poison_fraction": 0}, "poison_fraction"),
    ("sign_flip", {"scale": 0}, "scale"), ("gaussian", {"sigma": -1}, "sigma"),
    ("alie", {"z": -1}, "z"), ("alie", {"omniscient": 1}, "omniscient"), ("ipm", {"epsilon": 0}, "epsilon"),
    ("minmax", {"perturbation": "random"}, "perturbation"), ("minsum", {"gamma_init": 0}, "gamma_init"),
]


@pytest.mark.parametrize("name, params, field", BAD_VALUES)
def test_bad_values_name_the_field(name, params, field):
    with pytest.raises(ValueError, match=f"^{field}: got"):
        get_behaviour(name, **params)


# -- omniscient server stages ------------------------------------------------------------
@pytest.mark.parametrize("name", OMNISCIENT)
@pytest.mark.parametrize("params", [{}, {"omniscient": False}])
def test_server_stage_touches_only_attacker_rows(name, params):
    g = torch.Generator().manual_seed(0)
    U = torch.randn(10, 50, generator=g)
    attackers = torch.zeros(10, dtype=torch.bool)
    attackers[[2, 7]] = True
    before = U.clone()
    b = get_behaviour(name, **params)
    out = b.server_stage(U, attackers, torch.Generator().manual_seed(1))
    assert out.shape == U.shape and out.dtype == U.dtype and out.device == U.device
    assert torch.equal(U, before)  # not modified in place
    assert torch.equal(out[~attackers], U[~attackers])
    assert not torch.equal(out[attackers], U[attackers])
    assert torch.equal(out[2], out[7])  # colluders submit the same update
    assert bool(torch.isfinite(out).all())


def test_alie_value_and_z_formula():
    U = torch.randn(10, 20, generator=torch.Generator().manual_seed(0))
    att = torch.zeros(10, dtype=torch.bool)
    att[:2] = True
    honest = U[~att].double()
    s = math.floor(10 / 2 + 1) - 2
    z = NormalDist().inv_cdf((10 - s) / 10)
    out = get_behaviour("alie").server_stage(U, att, torch.Generator())
    assert torch.allclose(out[0].double(), honest.mean(0) - z * honest.std(0), atol=1e-5)
    own = U[att].double()
    out2 = get_behaviour("alie", omniscient=False, z=1.5).server_stage(U, att, torch.Generator())
    assert torch.allclose(out2[0].double(), own.mean(0) - 1.5 * own.std(0), atol=1e-5)


def test_ipm_is_minus_epsilon_mean():
    U = torch.randn(6, 9, generator=torch.Generator().manual_seed(1))
    att = torch.tensor([False, True, False, False, True, False])
    out = get_behaviour("ipm", epsilon=0.7).server_stage(U, att, torch.Generator())
    assert torch.allclose(out[1], -0.7 * U[~att].mean(0), atol=1e-6)


@pytest.mark.parametrize("pert", ["unit_vec", "std", "sign"])
def test_minmax_minsum_respect_their_distance_budget(pert):
    U = torch.randn(8, 30, generator=torch.Generator().manual_seed(2))
    att = torch.zeros(8, dtype=torch.bool)
    att[-2:] = True
    ref = U[~att].double()
    pair = torch.cdist(ref, ref)
    mm = get_behaviour("minmax", perturbation=pert).server_stage(U, att, torch.Generator())[-1].double()
    d = (ref - mm).norm(dim=1)
    assert float(d.max()) <= float(pair.max()) + 1e-4
    assert not torch.allclose(mm, ref.mean(0))  # gamma > 0: it did move off the mean
    ms = get_behaviour("minsum", perturbation=pert).server_stage(U, att, torch.Generator())[-1].double()
    assert float(((ref - ms).norm(dim=1) ** 2).sum()) <= float((pair**2).sum(1).max()) * (1 + 1e-4)


# -- update attacks --------------------------------------------------------------------
def test_sign_flip_and_gaussian_arithmetic(digits):
    data = digits.train.subset(torch.arange(64))
    honest, _, _ = train_once("honest", data, seed=5)
    flipped, _, _ = train_once("sign_flip", data, seed=5, params={"scale": 2.0})
    G = tiny().state_dict()
    for k, p in tiny().named_parameters():
        assert torch.allclose(flipped.state_dict()[k] - G[k], -2.0 * (honest.state_dict()[k] - G[k]), atol=1e-6)
    noisy, _, _ = train_once("gaussian", data, seed=5, params={"sigma": 0.5})
    d = torch.cat([(noisy.state_dict()[k] - G[k]).flatten() for k, _ in tiny().named_parameters()])
    assert abs(float(d.std()) - 0.5) < 0.05 and abs(float(d.mean())) < 0.05


def test_label_flip_mapping():
    b = get_behaviour("label_flip")
    y = torch.arange(10).repeat(3)
    data = TensorData(torch.rand(30, 1, 8, 8), y.clone())
    out = b.poison_data(data, ctx_for(tiny()))
    assert torch.equal(out.y, 9 - y) and torch.equal(out.x, data.x)
    assert torch.equal(data.y, y)  # input untouched


# -- bit flips -------------------------------------------------------------------------
@pytest.mark.parametrize("params", [{"train_first": False, "max_flips": 6},
                                    {"mode": "targeted", "max_flips": 4, "train_first": False}])
def test_bitflip_count_is_the_int8_hamming_distance(digits, params):
    model = tiny()
    layers = attacked_layers(model)
    before = [quantize_int8(w) for _, w in layers]
    b = get_behaviour("bitflip", **params)
    ctx = ctx_for(model)
    b.poison_data(digits.train.subset(torch.arange(128)), ctx)
    stats = b.after_train(model, ctx)
    after = [torch.round(w.detach() / s).clamp(-128, 127).to(torch.int8) for (_, w), (_, s) in zip(layers, before)]
    for (_, w), q, (_, s) in zip(layers, after, before):
        assert torch.allclose(w.detach(), q.float() * s, rtol=0, atol=s * 1e-3)  # dequantised int8
    ham = sum(hamming_int8(q0, q1) for (q0, _), q1 in zip(before, after))
    assert stats["flipped_bits"] == ham
    assert 1 <= ham <= params["max_flips"]


def test_bitflip_drives_accuracy_down(digits):
    model, _, _ = train_once("honest", digits.train.subset(torch.arange(256)), epochs=8)
    data = digits.train.subset(torch.arange(256, 512))
    acc0 = float((model(data.x).argmax(1) == data.y).float().mean())
    b = get_behaviour("bitflip", train_first=False, max_flips=15)
    ctx = ctx_for(model)
    b.poison_data(data, ctx)
    stats = b.after_train(model, ctx)
    acc1 = float((model(data.x).argmax(1) == data.y).float().mean())
    assert acc0 > 0.4 and acc1 <= 0.2, (acc0, acc1, stats)


def test_bitflip_random_flips_exactly_n_bits():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = get_behaviour("bitflip_random", flips=7).after_train(model, ctx_for(model))
    xor = [(before[k].view(torch.int32) ^ v.view(torch.int32)) for k, v in model.state_dict().items()]
    bits = sum(int(((x >> i) & 1).sum()) for x in xor for i in range(32))
    assert stats["flipped_bits"] == 7 == bits


# -- code poisoning --------------------------------------------------------------------
def test_code_poisoning_leaves_data_untouched_and_plants_the_backdoor(digits):
    data = digits.train.subset(torch.arange(400))
    b = get_behaviour("code_poisoning", target=0)
    ctx = ctx_for(tiny())
    assert b.poison_data(data, ctx) is data
    x, y = data.x[:8], data.y[:8]
    x2, y2 = b.poison_batch(x, y, ctx)
    assert torch.equal(x2, x) and torch.equal(y2, y)
    trig = b.eval_triggers((0,))["code_poisoning"]
    bd, _, _ = train_once("code_poisoning", data, epochs=6)
    clean, _, _ = train_once("honest", data, epochs=6)
    asr_bd = attack_success_rate(bd, digits.test, trig)
    asr_clean = attack_success_rate(clean, digits.test, trig)
    assert asr_bd > 0.8 and asr_clean < 0.3, (asr_bd, asr_clean)


def test_code_poisoning_mgda_weights():
    from fedsec.clients.attacks.code_poisoning import mgda_two_task

    g1, g2 = [torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 1.0])]
    assert mgda_two_task(g1, g2) == pytest.approx(0.5)
    assert mgda_two_task([torch.tensor([1.0])], [torch.tensor([3.0])]) == 1.0  # minimal-norm: all on g1
    model = tiny()
    b = get_behaviour("code_poisoning", mgda=True)
    loss = b.loss(model, torch.rand(8, 1, 8, 8), torch.arange(8), ctx_for(model))
    assert loss.requires_grad and torch.isfinite(loss)


# -- feature collision -----------------------------------------------------------------
def test_feature_collision_poisons_keep_labels(digits):
    data = digits.train.subset(torch.arange(200))
    before_y = data.y.clone()
    model = tiny()
    b = get_behaviour("feature_collision", base_class=1, target_index=0, num_poisons=5, iterations=20)
    local_train(model, data, epochs=1, batch_size=32, lr=0.05, momentum=0.9, weight_decay=0.0,
                behaviour=b, ctx=ctx_for(model))
    assert torch.equal(data.y, before_y)  # caller's data untouched
    assert torch.equal(b.data.y, before_y)  # clean label: every label stays
    idx = b.poison_index
    assert len(idx) == 5 and bool((b.data.y[idx] == 1).all())
    assert not torch.equal(b.data.x[idx], data.x[idx])  # the bases were replaced by poisons
    assert float(b.data.x.min()) >= 0 and float(b.data.x.max()) <= 1
    trig = b.eval_triggers((0,))["feature_collision"]
    rate = attack_success_rate(model, digits.test, trig)
    assert rate in (0.0, 1.0)  # the indicator "target instance classified as base class"
