"""Model-poisoning attacks used to benchmark robust aggregation: label_flip, sign_flip,
gaussian (client side) and the colluding omniscient attacks alie, ipm, minmax, minsum (craft).

The omniscient attacks are reached through the registry, so these tests pin the
behaviour of whatever module registers the names.
"""

import pytest
import torch
from scipy.stats import norm
from torch import nn

from fedsec.clients import BEHAVIOURS, ClientTask, Colluding, TrainConfig, get_behaviour
from fedsec import load_scenario, run
from fedsec.data import TensorData

OMNISCIENT = [
    ("alie", {}),
    ("alie", {"knowledge": "partial"}),
    ("ipm", {"epsilon": 0.5}),
    ("ipm", {"epsilon": 100.0}),
    ("minmax", {}),
    ("minmax", {"perturbation": "unit_vec"}),
    ("minmax", {"perturbation": "sign", "knowledge": "partial"}),
    ("minsum", {}),
    ("minsum", {"perturbation": "unit_vec", "knowledge": "partial"}),
    ("minsum", {"threshold": "max"}),
]


def updates(n=8, d=30, seed=0, scale=1.0, shift=0.3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * scale + shift


def mask(n, rows):
    m = torch.zeros(n, dtype=torch.bool)
    m[list(rows)] = True
    return m


def task_for(global_state, seed=0, num_classes=10, model=None, data=None):
    return ClientTask(
        partition_id=0, server_round=1, num_clients=10, num_sampled=10, num_classes=num_classes,
        in_shape=(1, 8, 8), coalition=(0,), generator=torch.Generator().manual_seed(seed),
        device=torch.device("cpu"), global_state=global_state,
        model=model if model is not None else nn.Identity(),
        data=data if data is not None else TensorData(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)),
        config=TrainConfig(epochs=1, batch_size=8, lr=0.1),
    )


def finalize(b, model, G, seed=0):
    """``b.finalize`` with ``model`` as the trained model and G as the received global state."""
    b.finalize(task_for(G, seed=seed, model=model))


def prepare(b, data, seed=0, num_classes=10) -> TensorData:
    task = task_for({}, seed=seed, num_classes=num_classes, data=data)
    b.prepare(task)
    return task.data


def sq_dists(a: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Squared distances (float64) from the vector a to each row of B."""
    return ((B.double() - a.double()) ** 2).sum(1)


def pairwise_sq(B: torch.Tensor) -> torch.Tensor:
    B = B.double()
    return ((B[:, None, :] - B[None, :, :]) ** 2).sum(-1)


# -- colluding craft: generic contract -----------------------------------------------------------


@pytest.mark.parametrize("name,params", OMNISCIENT)
def test_craft_contract(name, params):
    b = get_behaviour(name, **params)
    assert BEHAVIOURS.get(name).omniscient is True and isinstance(b, Colluding)
    U = updates()
    before = U.clone()
    att = mask(8, [1, 4])
    out = b.craft(U, att, torch.Generator().manual_seed(3))
    assert torch.equal(U, before), "U was modified in place"
    assert out.data_ptr() != U.data_ptr()
    assert out.shape == U.shape and out.dtype == U.dtype and out.device == U.device
    assert torch.equal(out[~att], U[~att]), "honest rows changed"
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], out[4]), "colluding attackers send one update"
    assert not torch.allclose(out[1], U[1]), "attacker row not replaced"
    again = b.craft(U, att, torch.Generator().manual_seed(3))
    assert torch.equal(out, again)


@pytest.mark.parametrize("name,params", OMNISCIENT)
def test_craft_float64_and_single_attacker(name, params):
    U = updates(n=6, d=12, seed=1).double()
    att = mask(6, [5])
    out = get_behaviour(name, **params).craft(U, att, torch.Generator())
    assert out.dtype == torch.float64 and torch.equal(out[:5], U[:5]) and torch.isfinite(out).all()


# -- ALIE ---------------------------------------------------------------------------------------


def _alie_z_reference(n, m):
    """Baruch et al.'s z_max, straight from the paper's symbols (scipy's normal quantile)."""
    s = (n // 2 + 1) - m  # correct workers the attackers need on their side
    if s <= 0:
        return norm.ppf(1 - 1e-6)
    return max(norm.ppf((n - m - s) / (n - m)), 0.0)  # s of the n - m correct workers beyond mu - z sigma


def test_alie_z_matches_the_paper_formula():
    from fedsec.clients.attacks.omniscient import alie_z

    # n = 50, m = 12: s = floor(50/2 + 1) - 12 = 14, z = Phi^-1((50 - 12 - 14) / (50 - 12)) = Phi^-1(24/38)
    assert alie_z(50, 12) == pytest.approx(norm.ppf(24 / 38), abs=1e-6)
    assert alie_z(50, 12) == pytest.approx(0.3360, abs=1e-4)  # was Phi^-1(36/50) = 0.5828
    # n = 100, m = 20: s = 31, Phi^-1(49/80); n = 100, m = 45: s = 6, Phi^-1(49/55)
    assert alie_z(100, 20) == pytest.approx(0.2858, abs=1e-4)
    assert alie_z(100, 45) == pytest.approx(1.2314, abs=1e-4)
    # too few attackers to deviate at all (quantile <= 1/2): the benign mean
    assert alie_z(10, 2) == 0.0 and alie_z(6, 2) == 0.0 and alie_z(10, 1) == 0.0
    # no correct worker needed (s <= 0): the cap
    assert alie_z(4, 3) == pytest.approx(norm.ppf(1 - 1e-6), abs=1e-6)
    for n in range(2, 60):
        for m in range(0, n + 1):
            assert alie_z(n, m) == pytest.approx(_alie_z_reference(n, m), abs=1e-6), (n, m)


def test_alie_z_grows_with_the_number_of_attackers():
    from fedsec.clients.attacks.omniscient import alie_z

    for n in (10, 25, 50, 100):
        zs = [alie_z(n, m) for m in range(0, n // 2 + 1)]
        assert zs == sorted(zs), (n, zs)


def test_alie_hand_worked_ten_clients_two_attackers():
    # n = 10, m = 2: s = 4 of the 8 correct workers must lie beyond the malicious value, so it
    # sits at their mean (z = 0). Honest rows 1..8: mean 4.5 (the old z = Phi^-1(0.6) = 0.2533
    # gave 4.5 - 0.2533 * sqrt(6) = 3.880).
    U = torch.tensor([[0.0], [0.0]] + [[float(v)] for v in range(1, 9)])
    att = mask(10, [0, 1])
    out = get_behaviour("alie").craft(U, att, torch.Generator())
    assert out[0].item() == pytest.approx(4.5, abs=1e-6) and out[1].item() == pytest.approx(4.5, abs=1e-6)
    old = get_behaviour("alie", z=norm.ppf(0.6)).craft(U, att, torch.Generator())
    assert old[0].item() == pytest.approx(4.5 - 0.2533 * 6**0.5, abs=1e-3)


def test_alie_is_mean_minus_z_std_of_the_honest_rows():
    n, f = 50, 12
    U = updates(n=n, d=20, seed=2)
    att = mask(n, range(0, n, 4)[:f])
    assert int(att.sum()) == f
    out = get_behaviour("alie").craft(U, att, torch.Generator())
    H = U[~att].double()
    z = norm.ppf(24 / 38)
    expected = H.mean(0) - z * H.std(0)
    torch.testing.assert_close(out[att][0].double(), expected, rtol=1e-5, atol=1e-6)


def test_alie_partial_knowledge_uses_only_the_attackers_rows():
    U = updates(n=10, d=16, seed=4)
    att = mask(10, [0, 3, 7])
    out = get_behaviour("alie", knowledge="partial").craft(U, att, torch.Generator())
    A = U[att].double()
    s = (10 // 2 + 1) - 3  # 3; z = Phi^-1((10 - 3 - 3) / (10 - 3)) = Phi^-1(4/7)
    expected = A.mean(0) - norm.ppf(4 / 7) * A.std(0)
    torch.testing.assert_close(out[0].double(), expected, rtol=1e-5, atol=1e-6)
    assert s == 3
    # the honest rows play no part: changing them changes nothing
    V = U.clone()
    V[~att] += 5.0
    out2 = get_behaviour("alie", knowledge="partial").craft(V, att, torch.Generator())
    assert torch.equal(out2[att], out[att])


def test_the_old_omniscient_parameter_is_an_error_naming_it():
    # renamed to `knowledge`: a field called `omniscient` would shadow the protocol's class flag
    with pytest.raises(TypeError, match="'omniscient'.*valid: .*knowledge"):
        get_behaviour("alie", omniscient=False)


def test_alie_explicit_z():
    U = updates(n=6, d=5, seed=5)
    att = mask(6, [2])
    out = get_behaviour("alie", z=1.5).craft(U, att, torch.Generator())
    H = U[~att].double()
    torch.testing.assert_close(out[2].double(), H.mean(0) - 1.5 * H.std(0), rtol=1e-5, atol=1e-6)


# -- IPM ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.5, 100.0])
def test_ipm_is_minus_epsilon_times_the_honest_mean(eps):
    U = updates(n=7, d=9, seed=6)
    att = mask(7, [0, 6])
    out = get_behaviour("ipm", epsilon=eps).craft(U, att, torch.Generator())
    expected = (-eps * U[~att].double().mean(0)).float()
    torch.testing.assert_close(out[0], expected)
    torch.testing.assert_close(out[6], expected)
    # inner product with the honest mean is negative: the point of the attack
    assert float(out[0] @ U[~att].mean(0)) < 0


# -- MinMax / MinSum ------------------------------------------------------------------------------


def _objective(name, mal, H, threshold="min"):
    """(value, bound) of the constraint of Shejwalkar & Houmansadr (squared distances)."""
    d = sq_dists(mal, H)
    P = pairwise_sq(H)
    if name == "minmax":
        return d.max(), P.max()
    sums = P.sum(1)
    return d.sum(), (sums.min() if threshold == "min" else sums.max())


CONSTRAINED = [("minmax", {}), ("minsum", {}), ("minsum", {"threshold": "max"})]


@pytest.mark.parametrize("name, extra", CONSTRAINED)
@pytest.mark.parametrize("perturbation", ["unit_vec", "std", "sign"])
@pytest.mark.parametrize("scale", [1.0, 0.01])
def test_minmax_minsum_constraint_holds_and_gamma_is_maximal(name, extra, perturbation, scale):
    U = updates(n=10, d=40, seed=7, scale=scale, shift=0.5 * scale)
    att = mask(10, [2, 5])
    out = get_behaviour(name, perturbation=perturbation, **extra).craft(U, att, torch.Generator())
    H = U[~att].double()
    mu = H.mean(0)
    mal = out[2].double()
    step = mal - mu
    p = {"unit_vec": -mu / mu.norm(), "std": -H.std(0), "sign": -torch.sign(mu)}[perturbation]
    # the malicious update is mu + gamma * p with gamma > 0
    assert float(step.norm()) > 1e-3 * scale, "gamma = 0: the attack degenerated to the mean"
    cos = float(step @ p / (step.norm() * p.norm()))
    assert cos == pytest.approx(1.0, abs=1e-5)
    value, bound = _objective(name, mal, H, extra.get("threshold", "min"))
    assert float(value) <= float(bound) * (1 + 1e-5)
    # maximal: 0.1% more gamma, or 4 tau (the search's absolute tolerance, 1e-5), breaks it
    gamma = float(step.norm() / p.norm())
    up = max(1.001 * gamma, gamma + 4e-5)
    value_up, _ = _objective(name, mu + up * p, H, extra.get("threshold", "min"))
    assert float(value_up) > float(bound)


def test_minsum_hand_worked_one_dimension():
    # Benign 0, 2, 5, 9: mean 4, distances to it 4, 2, 1, 5. Since
    # sum_i (m - x_i)^2 = k (m - mu)^2 + S and sum_j (x_i - x_j)^2 = k (x_i - mu)^2 + S,
    # Min-Sum moves the mean by min_i |x_i - mu| = 1 (authors' code) or max_i = 5 (the old bound).
    U = torch.tensor([[7.0], [0.0], [2.0], [5.0], [9.0], [7.0]])
    att = mask(6, [0, 5])
    new = get_behaviour("minsum", perturbation="unit_vec").craft(U, att, torch.Generator())
    old = get_behaviour("minsum", perturbation="unit_vec", threshold="max").craft(U, att, torch.Generator())
    assert new[0].item() == pytest.approx(3.0, abs=1e-4)  # mu - 1 * mu/|mu|
    assert old[0].item() == pytest.approx(-1.0, abs=1e-4)  # mu - 5 * mu/|mu|
    assert torch.equal(new[0], new[5]) and torch.equal(new[1:5], U[1:5])


@pytest.mark.parametrize("threshold", ["min", "max"])
@pytest.mark.parametrize("perturbation", ["unit_vec", "std", "sign"])
def test_minsum_moves_the_mean_by_the_extreme_benign_distance(threshold, perturbation):
    """Independent closed form: ||nabla_m - mu|| = min_i (or max_i) ||nabla_i - mu||."""
    U = updates(n=12, d=30, seed=9)
    att = mask(12, [0, 7, 11])
    out = get_behaviour("minsum", perturbation=perturbation, threshold=threshold).craft(U, att, torch.Generator())
    H = U[~att].double()
    mu = H.mean(0)
    r = (H - mu).norm(dim=1)
    expected = r.min() if threshold == "min" else r.max()
    assert float((out[0].double() - mu).norm()) == pytest.approx(float(expected), rel=1e-4)


def _authors_min_sum(benign, deviation, gamma=10.0, threshold_diff=1e-5):
    """The search of the authors' our_attack_score (NDSS21-Model-Poisoning), re-derived:
    accept lambda while sum of squared distances <= the minimum benign score."""
    mu = benign.mean(0)
    scores = torch.cdist(benign, benign).pow(2).sum(1)
    lam, lam_fail, lam_succ = gamma, gamma, 0.0
    while abs(lam_succ - lam) > threshold_diff:
        if float((benign - (mu - lam * deviation)).norm(dim=1).pow(2).sum()) <= float(scores.min()):
            lam_succ = lam
            lam = lam + lam_fail / 2
        else:
            lam = lam - lam_fail / 2
        lam_fail = lam_fail / 2
    return mu - lam_succ * deviation


@pytest.mark.parametrize("perturbation", ["unit_vec", "std", "sign"])
def test_minsum_matches_the_authors_search(perturbation):
    U = updates(n=10, d=25, seed=11)
    att = mask(10, [3, 4])
    H = U[~att].double()
    mu = H.mean(0)
    dev = {"unit_vec": mu / mu.norm(), "std": H.std(0), "sign": torch.sign(mu)}[perturbation]
    ref = _authors_min_sum(H, dev)
    out = get_behaviour("minsum", perturbation=perturbation).craft(U, att, torch.Generator())
    torch.testing.assert_close(out[3].double(), ref, rtol=1e-5, atol=1e-6)


def test_minmax_partial_knowledge_uses_the_attackers_rows():
    U = updates(n=10, d=30, seed=8)
    att = mask(10, [0, 1, 2, 3])
    out = get_behaviour("minmax", perturbation="unit_vec", knowledge="partial").craft(
        U, att, torch.Generator())
    A = U[att].double()
    value, bound = _objective("minmax", out[0].double(), A)
    assert float(value) <= float(bound) * (1 + 1e-5)
    assert float(_objective("minmax", A.mean(0) + 1.001 * (out[0].double() - A.mean(0)), A)[0]) > float(bound)


# -- client-side attacks ---------------------------------------------------------------------------


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def trained_pair():
    """(model X after 'training', global state G) with X - G known."""
    model = tiny_model()
    G = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(0.1 * (i + 1))
        model[1].running_mean.add_(0.5)
    return model, G


def test_sign_flip_submits_minus_scale_times_the_update():
    model, G = trained_pair()
    X = {k: v.clone() for k, v in model.state_dict().items()}
    finalize(get_behaviour("sign_flip", scale=2.0), model, G)
    S = model.state_dict()
    for k, _ in model.named_parameters():
        torch.testing.assert_close(S[k], G[k] - 2.0 * (X[k] - G[k]))
    assert torch.equal(S["1.running_mean"], X["1.running_mean"]), "buffers untouched by default"
    assert torch.equal(S["1.num_batches_tracked"], X["1.num_batches_tracked"])


def test_sign_flip_with_buffers():
    model, G = trained_pair()
    X = {k: v.clone() for k, v in model.state_dict().items()}
    finalize(get_behaviour("sign_flip", include_buffers=True), model, G)
    S = model.state_dict()
    torch.testing.assert_close(S["1.running_mean"], G["1.running_mean"] - 0.5)
    torch.testing.assert_close(S["0.weight"], 2 * G["0.weight"] - X["0.weight"])


def test_gaussian_submits_global_plus_generator_noise():
    model, G = trained_pair()
    X = {k: v.clone() for k, v in model.state_dict().items()}
    finalize(get_behaviour("gaussian", sigma=0.5), model, G, seed=11)
    S = model.state_dict()
    g = torch.Generator().manual_seed(11)
    for k, p in model.named_parameters():
        torch.testing.assert_close(S[k], G[k] + 0.5 * torch.randn(p.shape, generator=g))
    assert torch.equal(S["1.running_mean"], X["1.running_mean"])
    # same generator seed -> same submission, another seed -> another one
    m2, _ = trained_pair()
    finalize(get_behaviour("gaussian", sigma=0.5), m2, G, seed=11)
    assert all(torch.equal(S[k], m2.state_dict()[k]) for k in S)
    m3, _ = trained_pair()
    finalize(get_behaviour("gaussian", sigma=0.5), m3, G, seed=12)
    assert not torch.equal(S["0.weight"], m3.state_dict()["0.weight"])


def test_gaussian_noise_scale():
    model = nn.Linear(200, 100)
    G = {k: v.clone() for k, v in model.state_dict().items()}
    finalize(get_behaviour("gaussian", sigma=3.0), model, G)
    d = model.weight.detach() - G["weight"]
    assert float(d.std()) == pytest.approx(3.0, rel=0.03)
    assert abs(float(d.mean())) < 0.05


def test_label_flip_maps_y_to_c_minus_1_minus_y():
    x = torch.rand(10, 1, 8, 8)
    y = torch.arange(10)
    data = TensorData(x, y.clone())
    out = prepare(get_behaviour("label_flip"), data)
    assert torch.equal(out.y, 9 - y)
    assert torch.equal(out.x, x)
    assert torch.equal(data.y, y), "input labels modified in place"
    out4 = prepare(get_behaviour("label_flip"), TensorData(x[:4], torch.tensor([0, 1, 2, 3])), num_classes=4)
    assert out4.y.tolist() == [3, 2, 1, 0]


def test_label_flip_fraction_is_deterministic():
    x = torch.rand(20, 1, 8, 8)
    y = torch.arange(20) % 10
    b = BEHAVIOURS.get("label_flip").from_params({"poison_fraction": 0.5})
    a1 = prepare(b, TensorData(x, y.clone()), seed=1).y
    a2 = prepare(b, TensorData(x, y.clone()), seed=1).y
    assert torch.equal(a1, a2)
    changed = a1 != y
    assert int(changed.sum()) == 10
    assert torch.equal(a1[changed], 9 - y[changed])


@pytest.mark.parametrize("name,params", [
    ("sign_flip", {"scale": 0}), ("gaussian", {"sigma": -1.0}), ("label_flip", {"poison_fraction": 0}),
    ("alie", {"z": -1.0}), ("ipm", {"epsilon": 0.0}), ("minmax", {"perturbation": "uv"}),
    ("minsum", {"knowledge": "yes"}), ("minsum", {"threshold": "mean"}), ("alie", {"knowledge": True}),
])
def test_invalid_params_are_rejected(name, params):
    with pytest.raises(ValueError, match=next(iter(params))):
        get_behaviour(name, **params)


# -- in a federation -------------------------------------------------------------------------------


def test_ipm_large_epsilon_breaks_fedavg_in_a_federation(tmp_path, tiny_overrides):
    base = tiny_overrides + ["data.num_clients=5", "server.rounds=3"]
    clean = run(load_scenario("experiments/quickstart.toml", base), output=tmp_path)
    attacked = run(load_scenario("experiments/quickstart.toml", base + [
        'attack=[{behaviour="ipm", partitions=[0], params={epsilon=100.0}}]']), output=tmp_path)
    assert list(attacked.history[-1]["malicious"]) == [0]
    assert attacked.history[-1]["clean_acc"] < clean.history[-1]["clean_acc"] - 0.2
