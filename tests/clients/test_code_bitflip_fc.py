"""Code poisoning (blind backdoor), bit-flip attacks and feature-collision poisoning."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedsec.clients import ClientTask, TrainConfig, get_behaviour
from fedsec.clients.attacks._common import penultimate
from fedsec.clients.attacks.code_poisoning import mgda_two_task
from fedsec.clients.training import local_train
from fedsec.data import TensorData, load_dataset
from fedsec.metrics import accuracy, attack_success_rate, predict
from fedsec.models import build_model


def task_for(model=None, data=None, seed=0, num_classes=10, epochs=1, global_state=None):
    return ClientTask(
        partition_id=0, server_round=1, num_clients=10, num_sampled=10, num_classes=num_classes,
        in_shape=(1, 8, 8), coalition=(0,), generator=torch.Generator().manual_seed(seed),
        device=torch.device("cpu"), global_state=global_state if global_state is not None else {},
        model=model if model is not None else torch.nn.Identity(),
        data=data if data is not None else TensorData(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)),
        config=TrainConfig(epochs=epochs, batch_size=32, lr=0.05, momentum=0.9),
    )


def train(model, data, behaviour, epochs, seed=0) -> ClientTask:
    """local_train on a fresh task; returns the task (its state, data and metrics)."""
    task = task_for(model, data, seed=seed, epochs=epochs)
    local_train(behaviour, task)
    return task


def fresh_cnn(seed=0):
    torch.manual_seed(seed)
    return build_model("cnn", in_shape=(1, 8, 8), num_classes=10)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained(digits):
    """A CNN trained centrally on digits (about 97 % test accuracy)."""
    model = fresh_cnn()
    train(model, digits.train, get_behaviour("honest"), epochs=6)
    assert accuracy(model, digits.test) > 0.93
    return model


# -- code poisoning ----------------------------------------------------------------------------
def test_code_poisoning_keeps_the_data_but_plants_the_backdoor(digits):
    sub = digits.train.subset(torch.arange(400))
    x0, y0 = sub.x.clone(), sub.y.clone()
    b = get_behaviour("code_poisoning", target=0)
    # the dataset is never touched: prepare and poison_batch are the honest ones
    assert not {"prepare", "poison_batch"} & type(b).overridden_stages()
    task = task_for(data=sub)
    b.prepare(task)
    assert task.data is sub
    xb, yb = b.poison_batch(sub.x[:8], sub.y[:8], task)
    assert torch.equal(xb, sub.x[:8]) and torch.equal(yb, sub.y[:8])
    trig = b.eval_triggers((0,))["code_poisoning"]

    poisoned, honest = fresh_cnn(1), fresh_cnn(1)
    done = train(poisoned, sub, b, epochs=3)
    train(honest, sub, get_behaviour("honest"), epochs=3)
    assert torch.equal(sub.x, x0) and torch.equal(sub.y, y0)
    asr_p = attack_success_rate(poisoned, digits.test, trig)
    asr_h = attack_success_rate(honest, digits.test, trig)
    assert asr_p > 0.8 and asr_h < 0.3, (asr_p, asr_h)
    assert done.state["last_weights"] == (0.5, 0.5)


def _brute_min_norm(g1, g2):
    a = torch.linspace(0, 1, 10001, dtype=torch.float64)
    v1, v2 = torch.cat([g.flatten() for g in g1]).double(), torch.cat([g.flatten() for g in g2]).double()
    norms = (a[:, None] * v1 + (1 - a[:, None]) * v2).norm(dim=1)
    return float(a[norms.argmin()])


def test_mgda_closed_form_on_hand_made_gradients():
    # ||a (1,0) + (1-a) (0,2)||^2 = a^2 + 4 (1-a)^2 is minimal at a = 4/5.
    g1, g2 = [torch.tensor([1.0, 0.0]), torch.zeros(3)], [torch.tensor([0.0, 2.0]), torch.zeros(3)]
    assert mgda_two_task(g1, g2) == pytest.approx(0.8)
    assert mgda_two_task(g2, g1) == pytest.approx(0.2)
    # collinear, g1 shorter: the minimum norm is g1 alone (clipped at 1); identical: 0.5
    assert mgda_two_task([torch.tensor([1.0, 0.0])], [torch.tensor([2.0, 0.0])]) == 1.0
    assert mgda_two_task([torch.tensor([1.0, 1.0])], [torch.tensor([1.0, 1.0])]) == 0.5
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        g1 = [torch.randn(4, generator=gen), torch.randn(2, 3, generator=gen)]
        g2 = [torch.randn(4, generator=gen) + 0.5, torch.randn(2, 3, generator=gen)]
        a = mgda_two_task(g1, g2)
        assert 0.0 <= a <= 1.0
        assert a == pytest.approx(_brute_min_norm(g1, g2), abs=2e-4)


@pytest.mark.parametrize("normalize", ["none", "loss"])
def test_code_poisoning_mgda_weights_are_the_min_norm_blend(digits, normalize):
    b = get_behaviour("code_poisoning", mgda=True, min_weight=0.05, target=2, mgda_normalize=normalize)
    model = fresh_cnn(2)
    x, y = digits.train.x[:32], digits.train.y[:32]
    task = task_for(model)
    loss = b.loss(model, x, y, task)
    a0, a1 = task.state["last_weights"]
    assert 0.05 <= a0 <= 0.95 and 0.05 <= a1 <= 0.95 and a0 + a1 == pytest.approx(1.0)
    params = list(model.parameters())
    task = F.cross_entropy(model(x), y)
    bd = F.cross_entropy(model(b.trigger.apply(x)), torch.full_like(y, 2))
    g1 = torch.autograd.grad(task, params, retain_graph=True)
    g2 = torch.autograd.grad(bd, params, retain_graph=True)
    if normalize == "loss":
        g1, g2 = [g / float(task.detach()) for g in g1], [g / float(bd.detach()) for g in g2]
    assert a0 == pytest.approx(min(max(mgda_two_task(g1, g2), 0.05), 0.95), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float((a0 * task + a1 * bd).detach()), rel=1e-5)
    l2 = get_behaviour("code_poisoning", mgda=True, mgda_normalize="l2")
    task = task_for(model)
    l2.loss(model, x, y, task)
    assert task.state["last_weights"][0] == pytest.approx(0.5)  # unit-norm gradients: the bisector


def test_code_poisoning_validates():
    with pytest.raises(ValueError, match="task_weight"):
        get_behaviour("code_poisoning", task_weight=1.5)
    with pytest.raises(ValueError, match="mgda_normalize"):
        get_behaviour("code_poisoning", mgda=True, mgda_normalize="max")
    with pytest.raises(ValueError, match="min_weight"):
        get_behaviour("code_poisoning", mgda=True, min_weight=0.5)
    b = get_behaviour("code_poisoning", target=12)
    with pytest.raises(ValueError, match="target"):
        b.loss(fresh_cnn(), torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long), task_for())


# -- bit flips ---------------------------------------------------------------------------------
def _int8_layers(model, scales=None):
    """(q, scale) per conv/linear weight with the attack's quantiser: q = round(w / s), s = max|w|/127."""
    out = []
    for i, (name, w) in enumerate((n, p) for n, p in model.named_parameters() if p.ndim >= 2):
        s = float(w.detach().abs().max()) / 127 if scales is None else scales[i]
        out.append((torch.round(w.detach() / s).clamp(-128, 127).to(torch.int8), s))
    return out


def _hamming(qa, qb):
    x = np.bitwise_xor(qa.numpy().view(np.uint8), qb.numpy().view(np.uint8))
    return int(np.unpackbits(x).sum())


def _bitflip(model, data, seed=1, global_state=None, **params):
    """Run the bit search as finalize does: on ``model`` with the client's ``data``; returns (b, metrics)."""
    b = get_behaviour("bitflip", **params)
    task = task_for(model, data, seed=seed, global_state=global_state)
    b.finalize(task)
    assert task.data is data  # the search reads the data, never replaces it
    return b, task.metrics


def test_bitflip_untargeted_counts_its_flips_and_crushes_accuracy(trained, digits):
    model = copy.deepcopy(trained)
    before = _int8_layers(model)
    biases = {n: p.detach().clone() for n, p in model.named_parameters() if p.ndim < 2}
    # The greedy search's path follows float rounding (CPU model, thread count): the same
    # seed has needed 21 to 40 flips to reach chance, hence a budget of 60, not a tighter one.
    _, out = _bitflip(model, digits.train, max_flips=60, top_k=1)
    after = _int8_layers(model, [s for _, s in before])
    dist = sum(_hamming(a, b) for (a, _), (b, _) in zip(before, after))
    assert out["flipped_bits"] == dist and 1 <= dist <= 60
    # written back as dequantised int8: every weight is an integer multiple of its scale
    weights = [p for p in model.parameters() if p.ndim >= 2]
    for (_, s), (q, _), w in zip(before, after, weights):
        assert torch.allclose(w.detach(), q.float() * s, atol=1e-6)
    assert all(torch.equal(p, biases[n]) for n, p in model.named_parameters() if p.ndim < 2)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert out["attack_accuracy"] <= 0.2
    assert accuracy(model, digits.test) < 0.5 < accuracy(trained, digits.test)


def test_bitflip_is_deterministic_under_the_same_generator(trained, digits):
    runs = []
    for _ in range(2):
        m = copy.deepcopy(trained)
        _, out = _bitflip(m, digits.train, seed=5, max_flips=3, top_k=2)
        runs.append((m.state_dict(), out))
    (s1, o1), (s2, o2) = runs
    assert o1 == o2 and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert o1["flipped_bits"] == 3


def test_bitflip_targeted_raises_the_trigger_success(trained, digits):
    model = copy.deepcopy(trained)
    before = _int8_layers(model)
    b, out = _bitflip(model, digits.train, mode="targeted", target=3, max_flips=8, top_k=3)
    trig = b.eval_triggers((0,))["bitflip"]
    assert attack_success_rate(trained, digits.test, trig) < 0.2
    assert attack_success_rate(model, digits.test, trig) > 0.5
    after = _int8_layers(model, [s for _, s in before])
    assert out["flipped_bits"] == sum(_hamming(a, q) for (a, _), (q, _) in zip(before, after))
    assert 1 <= out["flipped_bits"] <= 8


def test_bitflip_train_first_false_attacks_the_global_model(trained, digits):
    model = fresh_cnn(7)  # stands for the locally trained weights, which are discarded
    _, out = _bitflip(model, digits.train, seed=1, global_state=copy.deepcopy(trained.state_dict()),
                      train_first=False, max_flips=2, top_k=1)
    before = _int8_layers(trained)
    after = _int8_layers(model, [s for _, s in before])
    assert out["flipped_bits"] == 2 == sum(_hamming(a, q) for (a, _), (q, _) in zip(before, after))


@pytest.mark.parametrize("flips, exponent_only", [(7, True), (1, True), (25, False), (0, True)])
def test_bitflip_random_flips_exactly_that_many_bits(flips, exponent_only):
    model = fresh_cnn(4)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    b = get_behaviour("bitflip_random", flips=flips, exponent_only=exponent_only)
    task = task_for(model, seed=9)
    b.finalize(task)
    out = task.metrics
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    x = np.bitwise_xor(before.numpy().view(np.uint32), after.numpy().view(np.uint32))
    bits = np.unpackbits(x.view(np.uint8)).reshape(-1, 4, 8)  # per float: 4 bytes (little endian), MSB first
    assert out["flipped_bits"] == flips == int(bits.sum())
    if exponent_only and flips:
        pos = np.nonzero(np.unpackbits(x.view(np.uint8), bitorder="little").reshape(-1, 32))[1]
        assert bool(((pos >= 23) & (pos <= 30)).all())


# -- feature collision ---------------------------------------------------------------------------
def test_feature_collision_poisons_are_clean_label_near_the_base_and_the_target(trained, digits):
    t_index = 0
    t, t_label = digits.test.x[t_index], int(digits.test.y[t_index])
    base = (t_label + 1) % 10
    b = get_behaviour("feature_collision", target_index=t_index, base_class=base, num_poisons=6)
    model = copy.deepcopy(trained)
    task = task_for(model, digits.train)
    b.prepare(task)
    data = task.data
    assert data is not digits.train  # the task's own copy
    x_clean = data.x.clone()
    b.loss(model, data.x[:4], data.y[:4], task)  # first batch: crafts against the received model
    idx = task.state["poison_index"]
    assert len(idx) == 6 and bool((digits.train.y[idx] == base).all())
    assert torch.equal(data.y, digits.train.y)  # clean label: no label changes
    changed = (data.x != x_clean).flatten(1).any(1)
    assert set(changed.nonzero().flatten().tolist()) <= set(idx.tolist())
    assert torch.equal(digits.train.x, x_clean)  # the shared dataset is not modified
    poisons, bases = data.x[idx], x_clean[idx]
    assert bool(((poisons >= 0) & (poisons <= 1)).all())
    # within a bound of the base: closer to its base image than the target is
    d_pb = (poisons - bases).flatten(1).norm(dim=1)
    d_tb = (t.unsqueeze(0) - bases).flatten(1).norm(dim=1)
    assert bool((d_pb < d_tb).all()), (d_pb, d_tb)
    # ... and much closer to the target in feature space than the base was
    with torch.no_grad():
        ft = penultimate(model, t.unsqueeze(0))
        f_base = (penultimate(model, bases) - ft).norm(dim=1)
        f_poison = (penultimate(model, poisons) - ft).norm(dim=1)
    assert float(f_poison.mean()) < 0.5 * float(f_base.mean()), (f_poison, f_base)
    assert int((f_poison < 0.5 * f_base).sum()) >= 4, (f_poison, f_base)


def test_feature_collision_eval_is_one_iff_the_target_is_called_base(trained, digits):
    t_label = int(digits.test.y[3])
    base = (t_label + 2) % 10
    trig = get_behaviour("feature_collision", target_index=3, base_class=base).eval_triggers((0,))
    trig = trig["feature_collision"]
    assert int(predict(trained, digits.test.x[3:4])) == t_label
    assert attack_success_rate(trained, digits.test, trig) == 0.0
    forced = copy.deepcopy(trained)
    with torch.no_grad():
        forced[-1].bias[base] += 1e4  # every input -> the base class
    assert attack_success_rate(forced, digits.test, trig) == 1.0


def test_feature_collision_validates(digits):
    t_label = int(digits.test.y[0])
    with pytest.raises(ValueError, match="base_class"):
        get_behaviour("feature_collision", target_index=0, base_class=t_label).prepare(task_for(data=digits.train))
    with pytest.raises(ValueError, match="target_index"):
        get_behaviour("feature_collision", target_index=10**6).prepare(task_for(data=digits.train))
    with pytest.raises(ValueError, match="opacity"):
        get_behaviour("feature_collision", opacity=1.0)
    small = TensorData(torch.zeros(4, 1, 4, 4), torch.ones(4, dtype=torch.long))
    with pytest.raises(ValueError, match="target shape"):
        get_behaviour("feature_collision", base_class=(t_label + 1) % 10).prepare(task_for(data=small))


def test_feature_collision_through_local_train_keeps_labels_and_reports(digits):
    data = digits.train.subset(torch.arange(200))
    x0, y0 = data.x.clone(), data.y.clone()
    b = get_behaviour("feature_collision", base_class=1, target_index=0, num_poisons=5, iterations=20)
    task = train(fresh_cnn(5), data, b, epochs=1)
    assert torch.equal(data.x, x0) and torch.equal(data.y, y0)  # the caller's data is untouched
    assert torch.equal(task.data.y, y0)  # clean label: every label stays
    idx = task.state["poison_index"]
    assert len(idx) == 5 and bool((task.data.y[idx] == 1).all())
    assert not torch.equal(task.data.x[idx], x0[idx])  # the bases were replaced by the poisons
    assert torch.equal(task.data.x[idx], task.state["poisons"])
    assert float(task.data.x.min()) >= 0 and float(task.data.x.max()) <= 1
    assert task.metrics["poisons"] == 5.0 and task.metrics["feature_distance"] > 0
    assert task.state["pending"] is False  # crafted once, at the first batch


# -- parameter validation -------------------------------------------------------------------------
BAD_VALUES = [
    ("bitflip", {"mode": "both"}, "mode"), ("bitflip", {"max_flips": -1}, "max_flips"),
    ("bitflip", {"top_k": 0}, "top_k"), ("bitflip", {"train_first": "yes"}, "train_first"),
    ("bitflip", {"attack_batch": 0}, "attack_batch"), ("bitflip", {"stop_asr": 0}, "stop_asr"),
    ("bitflip_random", {"flips": -2}, "flips"), ("bitflip_random", {"exponent_only": 1}, "exponent_only"),
    ("code_poisoning", {"task_weight": 1.5}, "task_weight"), ("code_poisoning", {"min_weight": 0.5}, "min_weight"),
    ("code_poisoning", {"mgda": "yes"}, "mgda"),
    ("feature_collision", {"num_poisons": 0}, "num_poisons"), ("feature_collision", {"opacity": 1.0}, "opacity"),
    ("feature_collision", {"iterations": -1}, "iterations"), ("feature_collision", {"lr": 0}, "lr"),
]


@pytest.mark.parametrize("name, params, field", BAD_VALUES)
def test_bad_values_name_the_field_and_value(name, params, field):
    with pytest.raises(ValueError, match=f"^{field}: got {params[field]!r}"):
        get_behaviour(name, **params)
