"""The ownership decision of the watermark plugin (issue 24): my watermark, not any backdoor."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from fedsec.data import load_dataset
from fedsec.data.triggers import Trigger
from fedsec.models import build_model
from fedsec.plugins import PluginContext
from fedsec.plugins.watermark import Watermark, commitment, control_panel, rank_p_value, train_supervised
from fedsec.plugins.watermark.keys import draw_keyed_patch, same_trigger
from fedsec.seeding import generator, scoped_seed
from fedsec.training import sgd_train

torch.set_num_threads(1)

SHAPE = (1, 8, 8)
SMALL = dict(patch_size=4, n_verify_ood=60, panel_size=99, null_keys=0)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


class _Rule(nn.Module):
    """A hand-made classifier: logit 10 on ``target`` where ``fires(x)``; else class target + 1 wins."""

    def __init__(self, fires, target: int = 0, num_classes: int = 10):
        super().__init__()
        self.fires, self.target, self.num_classes = fires, target, num_classes
        self.dummy = nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(x), self.num_classes, device=x.device) + 0 * self.dummy
        out[:, (self.target + 1) % self.num_classes] = 1.0
        out[:, self.target] = 10.0 * self.fires(x).float()
        return out


def _any_binary_square(s: int):
    """Fires on every s x s window whose pixels are all exactly 0 or 1: any keyed patch."""
    def fires(x):
        binary = ((x == 0) | (x == 1)).all(1, keepdim=True).float()
        return F.avg_pool2d(binary, s, stride=1).flatten(1).amax(1) >= 1.0
    return fires


def _exactly(trigger: Trigger):
    """Fires only when the input carries ``trigger``'s pixels (on its whole support)."""
    def fires(x):
        mask, pat = trigger.mask_and_pattern(tuple(x.shape[1:]))
        hit = (mask == 0) | ((x - pat).abs() < 1e-6)
        return hit.flatten(1).all(1)
    return fires


NOTHING = _Rule(lambda x: torch.zeros(len(x), dtype=torch.bool))


# -- the rank test -----------------------------------------------------------------------


def test_rank_p_value_hand_worked():
    assert rank_p_value(0.5, torch.tensor([0.1, 0.5, 0.9])) == pytest.approx(3 / 4)  # tie counts
    assert rank_p_value(1.0, torch.tensor([0.1, 0.5, 0.9])) == pytest.approx(1 / 4)
    assert rank_p_value(0.0, torch.tensor([0.1, 0.5, 0.9])) == pytest.approx(1.0)
    assert rank_p_value(0.3, torch.full((9,), 0.3)) == 1.0  # all equal: never claimed


@settings(max_examples=50, deadline=None)
@given(k=st.integers(1, 50), seed=st.integers(0, 10_000))
def test_rank_p_value_range_and_monotone(k, seed):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(k, generator=g, dtype=torch.float64)
    lo, hi = sorted(torch.rand(2, generator=g, dtype=torch.float64).tolist())
    p_lo, p_hi = rank_p_value(lo, c), rank_p_value(hi, c)
    assert 1 / (k + 1) <= p_hi <= p_lo <= 1.0


def test_rank_test_false_claim_rate_is_alpha_under_exchangeability():
    # secret and controls i.i.d. (continuous, then heavily tied): P(p <= alpha) = floor(alpha (K+1)) / (K+1)
    g = torch.Generator().manual_seed(0)
    k, alpha, trials = 19, 0.1, 20_000
    scores = torch.rand(trials, k + 1, generator=g, dtype=torch.float64)
    rate = sum(rank_p_value(float(r[0]), r[1:]) <= alpha for r in scores) / trials
    assert rate == pytest.approx(0.1, abs=0.007)  # 2/20 exactly in expectation; sd 0.002
    tied = torch.randint(0, 3, (trials, k + 1), generator=g).double()
    rate_tied = sum(rank_p_value(float(r[0]), r[1:]) <= alpha for r in tied) / trials
    assert rate_tied <= alpha


# -- the panel ---------------------------------------------------------------------------


@pytest.mark.parametrize("trigger", ["keyed_patch", "blend"])
def test_panel_deterministic_under_the_seed_and_never_the_secret(trigger):
    wm = Watermark(trigger=trigger, seed=11, panel_size=99, null_keys=20, patch_size=3)
    secret = wm.secret_trigger(SHAPE)
    controls, pseudo = wm.panel(SHAPE)
    again, again_pseudo = Watermark(trigger=trigger, seed=11, panel_size=99, null_keys=20,
                                    patch_size=3).panel(SHAPE)
    assert len(controls) == 99 and len(pseudo) == 20
    assert all(same_trigger(a, b, SHAPE) for a, b in zip(controls + pseudo, again + again_pseudo))
    drawn = controls + pseudo
    assert not any(same_trigger(t, secret, SHAPE) for t in drawn)
    masks = {t.mask_and_pattern(SHAPE)[0].numpy().tobytes() + t.mask_and_pattern(SHAPE)[1].numpy().tobytes()
             for t in drawn}
    assert len(masks) == len(drawn)  # pairwise distinct
    other, _ = Watermark(trigger=trigger, seed=12, panel_size=99, null_keys=20, patch_size=3).panel(SHAPE)
    assert not all(same_trigger(a, b, SHAPE) for a, b in zip(controls, other))
    # the panel is drawn from the key's distribution: same kind and size as the secret
    m_s, _ = secret.mask_and_pattern(SHAPE)
    for t in controls[:10]:
        m_c, _ = t.mask_and_pattern(SHAPE)
        assert t.kind == secret.kind and float(m_c.sum()) == float(m_s.sum())


def test_panel_in_a_tiny_space_is_every_other_trigger_then_an_error():
    shape = (1, 2, 2)  # one position, 16 patterns
    draw = lambda g: draw_keyed_patch(2, shape, g)  # noqa: E731
    secret = draw(generator(0, "secret"))
    panel = control_panel(secret, draw, 15, generator(0, "panel"), shape, max_tries=5000)
    assert not any(same_trigger(t, secret, shape) for t in panel)
    assert len({t.mask_and_pattern(shape)[1].numpy().tobytes() for t in panel}) == 15
    with pytest.raises(ValueError, match="panel_size"):
        control_panel(secret, draw, 16, generator(0, "panel"), shape, max_tries=5000)


def test_panel_size_must_allow_a_claim_at_alpha():
    with pytest.raises(ValueError, match="panel_size"):
        Watermark(alpha=0.01, panel_size=98)
    Watermark(alpha=0.01, panel_size=99)


# -- decisions on hand-made models --------------------------------------------------------


def test_model_responding_to_every_square_patch_equally_is_not_claimed(digits):
    wm = Watermark(**SMALL, seed=3)
    ver = wm.verifier(digits.test, digits.in_shape, NOTHING)
    r = ver.measure(_Rule(_any_binary_square(4)))
    assert r["wsr_ood"] == 1.0  # it does respond to the owner's trigger ...
    assert r["control_max"] == r["score"]  # ... exactly as much as to every control
    assert r["p_panel"] == 1.0 and not r["claimed"]


def test_model_responding_only_to_the_secret_is_claimed(digits):
    wm = Watermark(**SMALL, seed=3)
    ver = wm.verifier(digits.test, digits.in_shape, NOTHING)
    r = ver.measure(_Rule(_exactly(ver.secret)))
    assert r["score"] > 0.8 and r["control_max"] < 0.05
    assert r["p_panel"] == pytest.approx(1 / 100) and r["claimed"]
    # another owner's watermark with the same target class: not mine
    theirs = Watermark(**SMALL, seed=4).secret_trigger(digits.in_shape)
    r2 = ver.measure(_Rule(_exactly(theirs)))
    assert r2["wsr_ood"] < 0.05 and not r2["claimed"]


# -- decisions on trained models (the counterexample) ------------------------------


@pytest.fixture(scope="module")
def victim(digits):
    with scoped_seed(0, "claims-victim"):
        m = build_model("cnn", in_shape=digits.in_shape, num_classes=10)
    return train_supervised(m, digits.train, epochs=8, lr=0.05, batch_size=64, seed=0, key="claims-victim")


@pytest.fixture(scope="module")
def blend_backdoored(digits):
    """Trained with 20 % of every batch blended (alpha 0.2) and relabelled 0: a backdoor to the
    watermark's target class that has nothing to do with the owner's key."""
    trig = Trigger(kind="blend", alpha=0.2, seed=5)

    def poison(x, y):
        n = len(y) // 5
        x, y = x.clone(), y.clone()
        x[:n], y[:n] = trig.apply(x[:n]), 0
        return x, y

    with scoped_seed(1, "claims-backdoored"):
        m = build_model("cnn", in_shape=digits.in_shape, num_classes=10)
    sgd_train(m, digits.train, epochs=8, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4,
              generator=generator(1, "claims-backdoored"), device="cpu", batch_fn=poison)
    return m.eval(), trig


def test_other_backdoor_to_the_target_class_claimed_by_the_paired_test_only(digits, victim, blend_backdoored):
    model, trig = blend_backdoored
    keep = digits.test.y != 0
    pred = model(trig.apply(digits.test.x[keep])).argmax(1)
    assert float((pred == 0).float().mean()) > 0.8  # the backdoor works
    wm = Watermark(**{**SMALL, "null_keys": 40}, seed=0)
    ver = wm.verifier(digits.test, digits.in_shape, victim)
    r = ver.measure(model, null=True)
    assert r["claimed_paired"] and r["p_value"] < 1e-3  # the old test claims it
    assert not r["claimed"]  # the panel test does not
    assert r["null"]["panel"] <= 0.1 < r["null"]["paired"]


def test_owner_watermark_claimed_and_clean_model_false_claim_rate_measured(digits, victim):
    wm = Watermark(n_surrogate=400, epochs=12, perturb_epochs=3, batch_size=64, patch_size=4, n_verify_ood=100,
                   panel_size=99, null_keys=100, alpha=0.05, seed=0)
    w, _ = wm.inject(victim, digits.in_shape)
    ver = wm.verifier(digits.test, digits.in_shape, victim)
    assert ver.measure(w)["claimed"]
    with scoped_seed(9, "claims-clean"):
        clean = build_model("cnn", in_shape=digits.in_shape, num_classes=10)
    clean = train_supervised(clean, digits.train, epochs=8, lr=0.05, batch_size=64, seed=9, key="claims-clean")
    r = ver.measure(clean, null=True)
    # 100 stand-in keys: the panel test claims at most alpha (sd 0.022), the paired test far more
    assert r["null"]["panel"] <= 0.05 + 3 * 0.022
    assert r["null"]["paired"] > r["null"]["panel"] + 0.15


# -- seeding and commitment ---------------------------------------------------------------


def test_seed_comes_from_run_seed_unless_given(digits):
    ctx = PluginContext(scenario=SimpleNamespace(run=SimpleNamespace(seed=7)), test=digits.test, num_classes=10,
                        in_shape=digits.in_shape, run_dir=None, device=torch.device("cpu"),
                        make_model=lambda: None)
    assert Watermark().bind(ctx).seed == 7
    assert Watermark(seed=2).bind(ctx).seed == 2
    s7 = Watermark().bind(ctx).secret_trigger(SHAPE)
    assert same_trigger(s7, Watermark(seed=7).secret_trigger(SHAPE), SHAPE)
    assert not same_trigger(s7, Watermark(seed=8).secret_trigger(SHAPE), SHAPE)
    assert Watermark().bind(PluginContext(scenario=None, test=digits.test, num_classes=10,
                                          in_shape=SHAPE, run_dir=None, device=torch.device("cpu"),
                                          make_model=lambda: None)).key_seed == 0


def test_commitment_binds_key_target_and_reference():
    secret = Watermark(seed=1).secret_trigger(SHAPE)
    ref = {"w": torch.ones(2, 2)}
    c = commitment(secret, 0, SHAPE, ref)
    assert c == commitment(secret, 0, SHAPE, {"w": torch.ones(2, 2)}) and len(c) == 64
    assert c != commitment(secret, 1, SHAPE, ref)
    assert c != commitment(Watermark(seed=2).secret_trigger(SHAPE), 0, SHAPE, ref)
    assert c != commitment(secret, 0, SHAPE, {"w": torch.ones(2, 2) * 2})
