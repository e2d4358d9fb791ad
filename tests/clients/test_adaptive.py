"""Adaptive attacks (fang, agr_tailored, neurotoxin) and the durability figure asr_lifespan,
on hand-worked tiny inputs and against independent re-derivations (brute force, the real rules)."""

from collections import namedtuple

import pytest
import torch

from fedsec.clients import get_behaviour, local_train
from fedsec.clients.attacks.agr_tailored import binary_search
from fedsec.clients.attacks.fang import krum_lambda_bound, krum_selects, trmean_intervals
from fedsec.clients.attacks.neurotoxin import MASK_KEY, top_k_mask
from fedsec.metrics import asr_lifespan
from fedsec.strategies import get_aggregator
from fedsec.testing.behaviours import digits_task_factory

Out = namedtuple("Out", ["vector", "accepted", "scores"])


def norm_gate(radius):
    """A Krum-like rule: accepts the rows whose norm is <= radius, returns their mean."""

    def rule(U, weights=None, generator=None):
        ok = U.norm(dim=1) <= radius
        vec = U[ok].mean(0) if bool(ok.any()) else torch.zeros(U.shape[1], dtype=U.dtype)
        return Out(vec, ok, None)

    return rule


def mask_of(n, rows):
    m = torch.zeros(n, dtype=torch.bool)
    m[list(rows)] = True
    return m


# -- fang: Krum attack -----------------------------------------------------------------------
# benign rows t * (1, 1, 1, 1), t in (1, 2, 4, 7): pairwise distances 2 |t_i - t_j|
BENIGN = torch.tensor([1.0, 2.0, 4.0, 7.0], dtype=torch.float64)[:, None] * torch.ones(4, dtype=torch.float64)


def test_krum_lambda_bound_by_hand():
    # m = 5 (c = 1): neighbours m - c - 2 = 2, m - 2c - 1 = 2, sqrt(d) = 2
    # sums of the 2 nearest distances: t=1: 2+6, t=2: 2+4, t=4: 4+6, t=7: 6+10 -> min 6
    # bound = 6 / (2 * 2) + max ||w_i|| / 2 = 1.5 + 14 / 2 = 8.5
    assert krum_lambda_bound(BENIGN, 1) == pytest.approx(8.5, abs=1e-12)


def test_fang_krum_halves_lambda_until_the_rule_accepts():
    U = torch.cat([torch.zeros(1, 4, dtype=torch.float64), BENIGN])  # row 0: the attacker
    out = get_behaviour("fang", target="krum").craft(U, mask_of(5, [0]), torch.Generator().manual_seed(0),
                                                     rule=norm_gate(1.0))
    # s = (1,1,1,1); ||-lambda s|| = 2 lambda <= 1 first at 8.5 / 2^5 = 0.265625
    assert torch.equal(out[0], torch.full((4,), -0.265625, dtype=torch.float64))
    assert torch.equal(out[1:], U[1:])


def test_fang_krum_stops_below_the_threshold():
    U = torch.cat([torch.zeros(1, 4, dtype=torch.float64), BENIGN])
    never = norm_gate(-1.0)
    out = get_behaviour("fang", target="krum", threshold=1e-5).craft(
        U, mask_of(5, [0]), torch.Generator().manual_seed(0), rule=never)
    lam = 8.5 / 2**20  # the first halving below 1e-5 (8.5 / 2^19 = 1.6e-5)
    assert torch.allclose(out[0], torch.full((4,), -lam, dtype=torch.float64), rtol=0, atol=1e-15)


def test_fang_krum_is_selected_by_the_real_krum_and_deviates():
    # noisy benign updates with a small common drift, as client updates are: a point near the
    # origin is closer to them than they are to each other, so Krum can be made to pick it
    g = torch.Generator().manual_seed(1)
    U = torch.randn(10, 50, generator=g) + 0.2
    mal = mask_of(10, [0, 1])
    krum = get_aggregator("krum", f=2)
    out = get_behaviour("fang", target="krum").craft(U, mal, torch.Generator().manual_seed(0), rule=krum)
    res = krum(out)
    assert bool(res.accepted[mal].any()) and not bool(res.accepted[~mal].any())
    # the selected update points against the benign direction
    assert float(res.vector @ U[~mal].mean(0)) < 0
    assert float(out[0].abs().max()) > 1e-3  # a real lambda, not the below-threshold fallback
    # without the rule the internal Krum (f = c) decides, and selects it too
    alone = get_behaviour("fang", target="krum").craft(U, mal, torch.Generator().manual_seed(0))
    assert krum_selects(alone.double(), 2) in (0, 1)


# -- fang: trimmed-mean / median attack ------------------------------------------------------
TR = torch.tensor([[1.0, -1.0, 2.0, -3.0],
                   [3.0, -2.0, -1.0, -1.0],
                   [2.0, -4.0, 1.0, -2.0]], dtype=torch.float64)


def test_trmean_intervals_by_hand():
    # mean (2, -7/3, 2/3, -2) -> s = (+, -, +, -); w_max = (3, -1, 2, -1), w_min = (1, -4, -1, -3)
    s = torch.sign(TR.mean(0))
    low, high = trmean_intervals(TR, s, 2.0, "full")
    # j0: s>0, w_min = 1 > 0 -> [1/2, 1]; j1: s<0, w_max = -1 <= 0 -> [-1, -1/2]
    # j2: s>0, w_min = -1 <= 0 -> [-2, -1]; j3: s<0, w_max = -1 -> [-1, -1/2]
    assert low.tolist() == [0.5, -1.0, -2.0, -1.0]
    assert high.tolist() == [1.0, -0.5, -1.0, -0.5]


def test_trmean_partial_knowledge_uses_mean_and_std():
    s = torch.sign(TR.mean(0))
    low, high = trmean_intervals(TR, s, 2.0, "partial")
    mu, sd = TR.mean(0), TR.std(0)
    down, up = s > 0, s < 0
    assert torch.allclose(low[down], (mu - 4 * sd)[down]) and torch.allclose(high[down], (mu - 3 * sd)[down])
    assert torch.allclose(low[up], (mu + 3 * sd)[up]) and torch.allclose(high[up], (mu + 4 * sd)[up])


def test_fang_trmean_samples_beyond_the_benign_extremes():
    U = torch.cat([torch.zeros(2, 4, dtype=torch.float64), TR])
    mal = mask_of(5, [0, 1])
    b = get_behaviour("fang", target="trmean")
    out = b.craft(U, mal, torch.Generator().manual_seed(3))
    low = torch.tensor([0.5, -1.0, -2.0, -1.0], dtype=torch.float64)
    high = torch.tensor([1.0, -0.5, -1.0, -0.5], dtype=torch.float64)
    assert bool(((out[:2] >= low) & (out[:2] <= high)).all())
    assert not torch.equal(out[0], out[1])  # independent draws per attacker
    assert torch.equal(out, b.craft(U, mal, torch.Generator().manual_seed(3)))


def test_fang_trmean_drags_trimmed_mean_and_median_against_the_benign_direction():
    g = torch.Generator().manual_seed(2)
    U = torch.randn(10, 200, generator=g) * 0.2 + torch.randn(200, generator=g)
    mal = mask_of(10, [0, 1])
    crafted = get_behaviour("fang", target="trmean").craft(U, mal, torch.Generator().manual_seed(0))
    s = torch.sign(U[~mal].mean(0))
    for rule in (get_aggregator("trimmed_mean", f=2), get_aggregator("median")):
        shift = rule(crafted).vector - rule(U).vector
        assert bool((shift * s <= 1e-7).all())  # no coordinate moved with the benign direction
        assert float((shift * s).mean()) < 0


# -- agr_tailored ----------------------------------------------------------------------------
def test_binary_search_finds_the_boundary():
    assert binary_search(lambda g: g <= 8.0, 10.0, 1e-5, 100) == pytest.approx(8.0, abs=2e-5)
    assert binary_search(lambda g: True, 10.0, 1e-5, 100) == pytest.approx(20.0, abs=2e-5)
    assert binary_search(lambda g: False, 10.0, 1e-5, 100) == 0.0


# honest rows (2,0), (4,0), (3,1), (3,-1): mu = (3, 0); unit_vec: nabla_p = (-1, 0)
AGR_U = torch.tensor([[0.0, 0.0], [2.0, 0.0], [4.0, 0.0], [3.0, 1.0], [3.0, -1.0]], dtype=torch.float64)


@pytest.mark.parametrize("objective", ["auto", "selection"])
def test_agr_tailored_against_a_norm_gate(objective):
    # nabla_m = (3 - gamma, 0) is accepted while |3 - gamma| <= 5: the largest gamma is 8
    b = get_behaviour("agr_tailored", perturbation="unit_vec", objective=objective)
    g, mu, d = b.gamma(AGR_U, mask_of(5, [0]), torch.Generator().manual_seed(0), norm_gate(5.0))
    assert g == pytest.approx(8.0, abs=1e-4)
    out = b.craft(AGR_U, mask_of(5, [0]), torch.Generator().manual_seed(0), rule=norm_gate(5.0))
    assert out[0].tolist() == pytest.approx([3.0 - g, 0.0])


def test_agr_tailored_deviation_objective_follows_the_authors_heuristic():
    # against the mean the deviation grows with gamma, so every candidate succeeds: gamma -> 2 gamma_init
    mean = get_aggregator("mean")
    b = get_behaviour("agr_tailored", objective="deviation", gamma_init=3.0)
    g, _, _ = b.gamma(AGR_U, mask_of(5, [0]), torch.Generator().manual_seed(0), mean)
    assert g == pytest.approx(6.0, abs=1e-4)


def test_agr_tailored_reaches_the_brute_force_optimum_on_trimmed_mean():
    g = torch.Generator().manual_seed(4)
    U = torch.randn(10, 30, generator=g) * 0.3 + 1.0
    mal = mask_of(10, [0, 1])
    rule = get_aggregator("trimmed_mean", f=2)
    b = get_behaviour("agr_tailored", perturbation="std")
    out = b.craft(U, mal, torch.Generator().manual_seed(0), rule=rule)
    mu = U[~mal].double().mean(0)
    achieved = float((rule(out).vector.double() - mu).norm())
    sigma = U[~mal].double().std(0)
    grid = torch.linspace(0, 20, 2001, dtype=torch.float64)
    best = max(float((rule(torch.where(mal[:, None], (mu - t * sigma).float(), U)).vector.double() - mu).norm())
               for t in grid)
    assert achieved >= 0.99 * best
    assert achieved > 1.5 * float((rule(U).vector.double() - mu).norm())  # it did deviate


def test_agr_tailored_is_selected_by_multikrum():
    g = torch.Generator().manual_seed(5)
    U = torch.randn(10, 40, generator=g) * 0.2 + 0.3
    mal = mask_of(10, [0, 1])
    rule = get_aggregator("multikrum", f=2)
    out = get_behaviour("agr_tailored", gamma_init=3.0).craft(U, mal, torch.Generator().manual_seed(0), rule=rule)
    assert bool(rule(out).accepted[mal].all())
    assert not torch.allclose(out[0], U[~mal].mean(0))  # a non-trivial gamma was found


def test_agr_tailored_against_krum_counts_one_selected_copy_as_selected():
    # Krum keeps one client: with two identical crafted rows "all malicious accepted" can never
    # hold, and the search would collapse to gamma = 0 (the benign mean)
    g = torch.Generator().manual_seed(8)
    U = torch.randn(10, 40, generator=g) + 0.1
    mal = mask_of(10, [0, 1])
    rule = get_aggregator("krum", f=2)
    b = get_behaviour("agr_tailored")
    gamma, mu, d = b.gamma(U, mal, torch.Generator().manual_seed(0), rule)
    assert gamma > 0.1
    res = rule(b.craft(U, mal, torch.Generator().manual_seed(0), rule=rule))
    assert bool(res.accepted[mal].any()) and not bool(res.accepted[~mal].any())


def test_agr_tailored_stands_in_the_benign_mean_for_fltrust_reference():
    g = torch.Generator().manual_seed(6)
    U = torch.randn(8, 20, generator=g) * 0.2 + 0.5
    mal = mask_of(8, [0, 1])
    out = get_behaviour("agr_tailored").craft(U, mal, torch.Generator().manual_seed(0),
                                              rule=get_aggregator("fltrust"))
    assert bool(torch.isfinite(out).all()) and torch.equal(out[2:], U[2:])


def test_agr_tailored_without_a_rule_names_it():
    with pytest.raises(ValueError, match="rule"):
        get_behaviour("agr_tailored").craft(AGR_U, mask_of(5, [0]), torch.Generator())


def test_partial_knowledge_never_reads_honest_rows():
    g = torch.Generator().manual_seed(7)
    U = torch.randn(8, 12, generator=g)
    mal = mask_of(8, [0, 1, 2])
    other = U.clone()
    other[~mal] = torch.randn(5, 12, generator=g) * 10
    for b, rule in ((get_behaviour("agr_tailored", knowledge="partial"), get_aggregator("median")),
                    (get_behaviour("fang", target="krum", knowledge="partial"), get_aggregator("krum", f=2)),
                    (get_behaviour("fang", target="trmean", knowledge="partial"), None)):
        a = b.craft(U, mal, torch.Generator().manual_seed(0), rule=rule)
        c = b.craft(other, mal, torch.Generator().manual_seed(0), rule=rule)
        assert torch.equal(a[mal], c[mal]), b.name


# -- where the adaptive attacks break DnC and NNM + Krum: honest heterogeneity ----------------
# Honest updates a_i e_i, a = (1, 1, 1, 1, 1, 1, 8, 8): pairwise orthogonal (as label-skewed
# clients' first-round updates nearly are), benign mean mu = a / 8, s = sign(mu) = (1, ..., 1).
HETERO = torch.diag(torch.tensor([1.0, 1, 1, 1, 1, 1, 8, 8], dtype=torch.float64))


def with_attackers(H, c=2):
    return torch.cat([torch.zeros(c, H.shape[1], dtype=H.dtype), H]), mask_of(c + H.shape[0], range(c))


def test_fang_krum_against_dnc_hides_inside_the_honest_spread_by_hand():
    # Krum bound (Theorem 1), k = 8 honest, c = 2, d = 8: the 6 nearest to a unit row are the
    # other 5 unit rows (sqrt2) and one 8-row (sqrt65): 15.133 / (5 sqrt8) + 8 / sqrt8 = 3.8985.
    # DnC (f = 2; all 8 coordinates, so one exact iteration) drops the 2 highest scores.
    # Swapping coordinates 7 and 8 leaves the rows' set unchanged, so (e7 - e8)/sqrt2 is an
    # eigenvector of the centred rows' scatter, eigenvalue 2 (8/sqrt2)^2 = 64; the crafted pair
    # -lambda s lies in the other (symmetric) directions, whose largest eigenvalue is 247 at
    # lambda = 3.90 and 94 at 1.95 (the pair is the outlier: dropped) but 61.9 < 64 at 0.975:
    # there the two 8 e_i score 64/(64 * 2/10) = 5 and are dropped, every other row scores 0.
    U, mal = with_attackers(HETERO)
    dnc = get_aggregator("dnc", f=2)
    out = get_behaviour("fang", target="krum").craft(U, mal, torch.Generator().manual_seed(0), rule=dnc)
    bound = krum_lambda_bound(HETERO, 2)
    assert bound == pytest.approx(15.1333 / (5 * 8**0.5) + 8 / 8**0.5, abs=1e-4)
    lam = bound / 4
    assert torch.allclose(out[:2], torch.full((2, 8), -lam, dtype=torch.float64))
    res = dnc(out, generator=torch.Generator().manual_seed(0))
    assert res.accepted.tolist() == [True] * 8 + [False] * 2
    assert float(res.scores[:8].abs().max()) < 1e-9 and res.scores[8:].tolist() == pytest.approx([5.0, 5.0])
    # aggregate (2 (-lambda s) + e_1 + ... + e_6) / 8, sum(mu) = 22/8: <agg, mu> = (6/8 - 2 lambda 22/8) / 8
    mu = HETERO.mean(0)
    assert float(res.vector.double() @ mu) == pytest.approx((6 / 8 - 2 * lam * 22 / 8) / 8, abs=1e-6)
    assert float(res.vector.double() @ mu) < 0  # against the benign direction


def test_fang_krum_against_dnc_is_rejected_when_honest_updates_agree():
    g = torch.Generator().manual_seed(0)
    H = 1.0 + 0.1 * torch.randn(8, 8, generator=g, dtype=torch.float64)
    U, mal = with_attackers(H)
    dnc = get_aggregator("dnc", f=2)
    out = get_behaviour("fang", target="krum").craft(U, mal, torch.Generator().manual_seed(0), rule=dnc)
    assert float(out[:2].abs().max()) < 1e-5  # no lambda accepted: the below-threshold fallback
    assert not bool(dnc(out, generator=torch.Generator().manual_seed(0)).accepted[mal].any())


def test_agr_tailored_unit_vec_against_nnm_krum_needs_heterogeneous_honest_updates():
    from fedsec.strategies import get_pre_aggregator
    from fedsec.strategies.pre_aggregators.compose import compose

    rule = compose([get_pre_aggregator("nnm", f=2)], get_aggregator("krum", f=2))
    b = get_behaviour("agr_tailored", perturbation="unit_vec")
    g = torch.Generator().manual_seed(0)
    for H, broken in ((HETERO, True), (1.0 + 0.1 * torch.randn(8, 8, generator=g, dtype=torch.float64), False)):
        U, mal = with_attackers(H)
        mu = H.mean(0)
        clean = rule(torch.where(mal[:, None], mu, U))  # the attackers sending the benign mean
        res = rule(b.craft(U, mal, torch.Generator().manual_seed(0), rule=rule))
        assert bool(res.accepted[mal].all())  # the Krum-selected neighbourhood holds both
        proj, ref = float(res.vector.double() @ mu), float(clean.vector.double() @ mu)
        assert ref > 0
        if broken:
            assert proj < 0  # the aggregate now points against the benign mean
        else:
            assert proj > 0.9 * ref


@pytest.mark.parametrize("name, params, message", [
    ("fang", {"target": "bulyan"}, "target"),
    ("fang", {"b": 1.0}, "b"),
    ("agr_tailored", {"objective": "max"}, "objective"),
    ("agr_tailored", {"perturbation": "gauss"}, "perturbation"),
    ("neurotoxin", {"mask_ratio": 1.0}, "mask_ratio"),
])
def test_bad_parameters_are_named(name, params, message):
    with pytest.raises(ValueError, match=message):
        get_behaviour(name, **params)


# -- neurotoxin ------------------------------------------------------------------------------
def test_top_k_mask_zeroes_exactly_the_largest_coordinates_over_all_tensors():
    scores = {"a": torch.tensor([[0.1, -5.0], [3.0, 0.2]]), "b": torch.tensor([-4.0, 0.0, 1.0])}
    m = top_k_mask(scores, 3 / 7)  # round(3/7 * 7) = 3 coordinates: |-5|, |-4|, |3|
    assert m["a"].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert m["b"].tolist() == [0.0, 1.0, 1.0]
    assert all(v.sum() == v.numel() for v in top_k_mask(scores, 0.0).values())


@pytest.fixture(scope="module")
def factory():
    return digits_task_factory(epochs=2)


def test_neurotoxin_gradients_and_update_vanish_on_the_masked_coordinates(factory):
    task = factory(0)
    b = get_behaviour("neurotoxin", mask_ratio=0.3)
    local_train(b, task)
    mask = task.state[MASK_KEY]
    total = sum(v.numel() for v in mask.values())
    masked = sum(int((v == 0).sum()) for v in mask.values())
    assert masked == round(0.3 * total)
    for k, p in task.model.named_parameters():
        delta = p.detach() - task.global_state[k]
        assert bool((delta[mask[k] == 0] == 0).all()), k  # never written (SGD with momentum, no decay)
    assert any(bool((p.detach() - task.global_state[k])[mask[k] == 1].abs().sum() > 0)
               for k, p in task.model.named_parameters())


def test_neurotoxin_on_gradients_zeroes_only_masked_entries(factory):
    task = factory(0)
    b = get_behaviour("neurotoxin", mask_ratio=0.5)
    b.prepare(task)
    for p in task.model.parameters():
        p.grad = torch.ones_like(p)
    b.on_gradients(task)
    for k, p in task.model.named_parameters():
        assert torch.equal(p.grad, task.state[MASK_KEY][k])


def test_neurotoxin_masks_the_largest_benign_gradient_coordinates(factory):
    task = factory(0)
    b = get_behaviour("neurotoxin", mask_ratio=0.1)
    b.prepare(task)
    model = task.model
    model.zero_grad()
    x, y = factory(0).data.x, factory(0).data.y  # clean data, one batch of 16 at a time
    for s in range(0, len(y), 16):
        torch.nn.functional.cross_entropy(model(x[s:s + 16]), y[s:s + 16]).backward()
    g = torch.cat([p.grad.abs().reshape(-1) for p in model.parameters()])
    keep = torch.cat([task.state[MASK_KEY][k].reshape(-1) for k, _ in model.named_parameters()])
    assert float(g[keep == 0].min()) >= float(g[keep == 1].max()) - 1e-6


def test_neurotoxin_without_mask_is_badnets(factory):
    a, b = factory(5), factory(5)
    local_train(get_behaviour("neurotoxin", mask_ratio=0.0), a)
    local_train(get_behaviour("badnets"), b)
    for (k, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(p, q), k


def test_neurotoxin_reports_its_own_trigger_and_is_not_vectorizable():
    b = get_behaviour("neurotoxin")
    assert list(b.eval_triggers((0,))) == ["neurotoxin"]
    assert type(b).vectorizable() is False


# -- asr_lifespan ----------------------------------------------------------------------------
ROUNDS = list(range(1, 9))


def test_lifespan_counts_rounds_after_the_last_attack():
    # attack in rounds 3-5, peak 0.8 -> half 0.4; round 6 0.6, round 7 0.35 < 0.4 -> 2
    asr = [0.2, 0.1, 0.5, 0.8, 0.7, 0.6, 0.35, 0.2]
    assert asr_lifespan(ROUNDS, asr, [3, 4, 5]) == 2


def test_lifespan_peak_ignores_rounds_before_the_attack():
    # round 1's 1.0 (an untrained model predicting the target) would set the threshold to 0.5
    # and give 1; the attack window's peak 0.8 gives 0.4 and the fall comes at round 7
    asr = [1.0, 0.1, 0.5, 0.8, 0.7, 0.45, 0.35, 0.2]
    assert asr_lifespan(ROUNDS, asr, [3, 4, 5]) == 2


def test_lifespan_still_above_none_and_zero():
    assert asr_lifespan(ROUNDS, [0.9] * 8, [1, 2]) == "still above"
    assert asr_lifespan(ROUNDS, [0.9] * 8, []) is None
    assert asr_lifespan(ROUNDS, [0.0] * 8, [1, 2]) == 0
    nan = float("nan")
    # an unmeasured last attacking round still ends the attack window
    assert asr_lifespan(ROUNDS, [0.1, 0.9, nan, 0.8, 0.3, 0.3, 0.3, 0.3], [1, 2, 3]) == 2
