"""Tests of the ABD package (fedsec.plugins.abd): SV, SR, weighting, validation, seeding, wiring."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from fedsec.data import TensorData
from fedsec.metrics import EvalTrigger
from fedsec.models import build_model
from fedsec.plugins import PLUGINS, PluginContext
from fedsec.plugins.abd import (
    ABD,
    ABDConfig,
    ShuffledTeacher,
    channel_head,
    distill,
    kl_per_sample,
    markdown_table,
    shuffle_channels,
    sr_find_delta,
    sr_hypergradient,
    suspicion_score,
    suspicious,
    sv_weights,
    tail_ratio,
)
from fedsec.seeding import generator, scoped_seed

torch.set_num_threads(1)
IN_SHAPE = (1, 8, 8)


def _cnn(seed: int = 0) -> nn.Module:
    with scoped_seed(seed, "test-abd"):
        return build_model("cnn", in_shape=IN_SHAPE, num_classes=10, width=8, hidden=16).eval()


def _x(n: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, *IN_SHAPE), generator=generator(seed, "x"))


def _tiny(**kw) -> dict:
    base = dict(steps=3, batch_size=16, n_student_iter=2, gen_width=8, z_dim=8, sv_probe_steps=1,
                sv_layers=1, sv_ensemble=1, sr_start=0.5, sr_n_delta=2, sr_fp_iters=2, sr_portion=0.25,
                ood_n=32)
    base.update(kw)
    return base


# --- Shuffling Vaccine -------------------------------------------------------


def test_shuffled_teacher_is_a_channel_permutation():
    t = _cnn()
    s = shuffle_channels(t, 1, generator(0, "shuffle"))
    convs_t = [m for m in t.modules() if isinstance(m, nn.Conv2d)]
    convs_s = [m for m in s.modules() if isinstance(m, nn.Conv2d)]
    # The last conv (8 -> 16 channels) is shuffled along its input channels:
    wt, ws = convs_t[-1].weight, convs_s[-1].weight
    assert not torch.equal(wt, ws)
    assert torch.equal(wt.flatten().sort().values, ws.flatten().sort().values)  # same multiset
    matches = [next(j for j in range(wt.shape[1]) if torch.equal(ws[:, i], wt[:, j])) for i in range(ws.shape[1])]
    assert sorted(matches) == list(range(wt.shape[1]))  # a permutation of whole input channels
    # Every other tensor (the 1-channel first conv, biases, the head) is untouched.
    for (n1, p1), (n2, p2) in zip(t.named_parameters(), s.named_parameters()):
        assert n1 == n2 and p1.shape == p2.shape
        assert torch.equal(p1.flatten().sort().values, p2.flatten().sort().values)
        if p1 is not wt:
            assert n1 == "3.weight" or torch.equal(p1, p2)
    x = _x()
    with torch.no_grad():
        assert not torch.allclose(t(x), s(x))
    assert t is not s and torch.equal(convs_t[-1].weight, wt)  # the teacher is not modified


def test_shuffle_is_deterministic_in_generator():
    t = _cnn()
    a = shuffle_channels(t, 1, generator(3, "s"))
    b = shuffle_channels(t, 1, generator(3, "s"))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


class _HeadFirst(nn.Module):
    """The head is registered before the conv: only execution order finds it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5 * 8 * 8, 10)
        self.conv = nn.Conv2d(1, 5, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class _ChannelMean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 5, 3, padding=1)
        self.fc = nn.Linear(8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(1).flatten(1))


def test_channel_head_finds_the_linear_that_reads_the_last_conv():
    t = _cnn()
    first_linear = next(n for n, m in t.named_modules() if isinstance(m, nn.Linear))
    assert channel_head(t, _x(2)) == (first_linear, 16)  # width 8 -> last conv has 16 output channels
    with scoped_seed(0, "head-first"):
        assert channel_head(_HeadFirst(), _x(2)) == ("fc", 5)
    with pytest.raises(ValueError, match="sv_head needs a model with a conv"):
        channel_head(build_model("mlp", in_shape=IN_SHAPE, num_classes=10), _x(2))
    with scoped_seed(0, "channel-mean"), pytest.raises(ValueError, match="64 inputs, not a multiple of the 5 channels"):
        channel_head(_ChannelMean(), _x(2))


def test_head_shuffle_equals_permuting_the_last_conv_output_channels():
    """Permuting the head's channel blocks by p is the same network as feeding the
    original head the last conv's output channels in the order p^-1 (independent
    construction: permute that conv's output filters and biases instead)."""
    t = _cnn()
    head = channel_head(t, _x(2))
    plain = shuffle_channels(t, 1, generator(3, "s"))
    s = shuffle_channels(t, 1, generator(3, "s"), head=head)
    conv_s = [m for m in s.modules() if isinstance(m, nn.Conv2d)][-1]
    # The conv permutations are drawn first, so they are those of the head-less shuffle.
    assert torch.equal(conv_s.weight, [m for m in plain.modules() if isinstance(m, nn.Conv2d)][-1].weight)
    wt = t.get_submodule(head[0]).weight.view(16, 16, -1)
    ws = s.get_submodule(head[0]).weight.view(16, 16, -1)
    p = [next(j for j in range(16) if torch.equal(ws[:, c], wt[:, j])) for c in range(16)]
    assert sorted(p) == list(range(16)) and p != list(range(16))
    ref = copy.deepcopy(plain)
    conv_r = [m for m in ref.modules() if isinstance(m, nn.Conv2d)][-1]
    inv = torch.argsort(torch.tensor(p))
    with torch.no_grad():
        conv_r.weight.copy_(conv_s.weight[inv])
        conv_r.bias.copy_(conv_s.bias[inv])
        x = _x()
        assert torch.allclose(s(x), ref(x), atol=1e-5)
        assert not torch.allclose(s(x), plain(x))


def test_suspicion_score_zero_for_identical_positive_otherwise():
    t = _cnn()
    x = _x(12)
    same = suspicion_score(t, t, x)
    assert same.shape == (12,)
    assert torch.allclose(same, torch.zeros(12), atol=1e-6)
    sh = ShuffledTeacher(t, n_layers=1, n=3, gen=generator(0, "ens"))
    s = suspicion_score(t, sh, x)
    assert s.shape == (12,)
    assert bool((s > 0).all())
    # It is KL(T || T~), per input.
    with torch.no_grad():
        p, q = torch.softmax(t(x), 1), torch.softmax(sh(x), 1)
    assert torch.allclose(s, (p * (p.log() - q.log())).sum(1), atol=1e-5)


def test_phi_marks_agreement():
    t_logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [1.0, 0.0]])
    sh_logits = torch.tensor([[2.0, 1.0], [1.0, 0.0], [0.0, 5.0]])
    assert suspicious(t_logits, sh_logits).tolist() == [1.0, 0.0, 0.0]


def test_loss_weighting_worked_by_hand():
    phi = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.5])
    # reference code: w = 1 - phi + phi * (-alpha); alpha = 0.01
    assert torch.allclose(sv_weights(phi, 0.01, "reference"), torch.tensor([1.0, -0.01, -0.01, 1.0, 0.495]))
    # the paper's slide: w = 1 - phi + phi / alpha; alpha = 0.1 -> 1, 10, 10, 1, 0.5 + 5 = 5.5
    assert torch.allclose(sv_weights(phi, 0.1, "paper"), torch.tensor([1.0, 10.0, 10.0, 1.0, 5.5]))
    # A weighted batch loss by hand: KLs 0.2, 0.4 with phi 0, 1, alpha 0.5 (reference): (0.2 - 0.5*0.4)/2 = 0
    kl = torch.tensor([0.2, 0.4])
    assert abs(float((sv_weights(torch.tensor([0.0, 1.0]), 0.5) * kl).mean())) < 1e-7
    with pytest.raises(ValueError, match="sv_weighting"):
        sv_weights(phi, 0.1, "nope")


@pytest.mark.parametrize("kd, override, weighted", [
    ("generator", None, False), ("ood", None, True), ("generator", True, True), ("ood", False, False),
])
def test_student_weighting_follows_the_reference_per_kd(kd, override, weighted):
    """ZSKT's reference solver applies SV to the generator only; OOD KD weights the student."""
    from fedsec.plugins.abd import Vaccine, student_loss

    cfg = ABDConfig(kd=kd, sv_student=override, sv_alpha=0.5)
    assert cfg.sv_weights_student is weighted
    t = _cnn(1)
    vac = Vaccine(t, cfg, generator(0, "v"))
    vac.model = t  # the teacher as its own "shuffle": every input is suspicious (phi = 1)
    x = _x(8, 3)
    with torch.no_grad():
        t_logits, s_logits = t(x), _cnn(2)(x)
    loss, phi = student_loss(s_logits, t_logits, x, vac, cfg, 1.0)
    plain = kl_per_sample(t_logits, s_logits).mean()
    assert phi == 1.0
    # phi = 1 everywhere: weight kappa = -alpha (reference weighting) when the student is weighted
    assert torch.allclose(loss, -0.5 * plain if weighted else plain)


def test_tail_ratio():
    s = torch.full((200,), 1.0)
    s[:5] = 1e-6  # 2.5% far below in log10
    assert tail_ratio(s) == pytest.approx(0.025)
    assert tail_ratio(torch.ones(100)) == 0.0


def test_kl_per_sample():
    a = torch.tensor([[0.0, 0.0]])
    b = torch.tensor([[math.log(3.0), 0.0]])  # q = (3/4, 1/4)
    expected = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert float(kl_per_sample(a, b)) == pytest.approx(expected, rel=1e-5)


# --- Self-Retrospection ---------------------------------------------------------


@pytest.mark.parametrize("eps", [0.05, 0.5, 3.0])
def test_sr_delta_stays_within_bound(eps):
    s = _cnn(1).train()
    cfg = ABDConfig(sr_eps=eps, sr_n_delta=8, sr_delta_lr=1.0, sr_l2=0.0)
    delta = sr_find_delta(s, _x(32), cfg, generator(0, "d"))
    assert delta.shape == (1, *IN_SHAPE)
    assert float(delta.norm()) <= eps * (1 + 1e-5)
    assert not delta.requires_grad
    assert all(p.grad is None for p in s.parameters())


def test_sr_hypergradient_implicit_vs_first_order():
    s = _cnn(2).train()
    with torch.no_grad():  # sharpen the untrained net so that KL terms are not ~0
        for m in s.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(4.0)
    x = _x(16)
    cfg = ABDConfig(sr_portion=0.5, sr_fp_iters=3, sr_eps=1.0)
    delta = sr_find_delta(s, x, cfg, generator(0, "d"))
    g_imp, outer = sr_hypergradient(s, x, delta, cfg, generator(0, "m"))
    g_fo, outer_fo = sr_hypergradient(s, x, delta, dataclasses.replace(cfg, sr_mode="first_order"), generator(0, "m"))
    params = list(s.parameters())
    assert len(g_imp) == len(g_fo) == len(params)
    assert all(g.shape == p.shape and torch.isfinite(g).all() for g, p in zip(g_imp, params))
    assert outer == pytest.approx(outer_fo) and outer >= 0
    assert any(not torch.allclose(a, b) for a, b in zip(g_imp, g_fo))  # the implicit term contributes


def test_sr_hypergradient_matches_dense_implicit_formula():
    """On a tiny linear student, compare with the dense form of the fixed-point hypergradient:
    v_K = sum_{k<K} (J^T)^k dL_out/dd with J = d Phi / d d (K fixed-point iterations, a truncated
    Neumann series of (I - J^T)^{-1}); hypergrad = dL_out/dtheta + (dPhi/dtheta)^T v_K."""
    with scoped_seed(0, "lin"):
        s = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.rand(8, 1, 2, 2, generator=generator(0, "lin-x"))
    cfg = ABDConfig(sr_portion=1.0, sr_fp_iters=4, sr_fp_lr=0.1, sr_eps=1.0)
    delta = torch.full((1, 1, 2, 2), 0.3)
    grads, _ = sr_hypergradient(s, x, delta, cfg, generator(0, "m"))
    params = list(s.parameters())
    flat = torch.cat([p.detach().flatten() for p in params])
    sizes = [p.numel() for p in params]

    def unflat(v):
        out, i = [], 0
        for p, n in zip(params, sizes):
            out.append(v[i : i + n].view_as(p))
            i += n
        return out

    def model(theta, inp):
        w, b = unflat(theta)
        return inp.flatten(1) @ w.T + b

    with torch.no_grad():
        clean = s(x)

    def outer(d, theta):
        return kl_per_sample(clean, model(theta, x + d.view(1, 1, 2, 2))).mean()

    def phi(d, theta):
        def inner(dd):
            return -kl_per_sample(clean, model(theta, x + dd.view(1, 1, 2, 2))).mean() + cfg.sr_l2 * dd.pow(2).sum()

        return d - cfg.sr_fp_lr * torch.func.grad(inner)(d)

    d0 = delta.flatten()
    J = torch.autograd.functional.jacobian(lambda d: phi(d, flat), d0)
    Jt = torch.autograd.functional.jacobian(lambda t: phi(d0, t), flat)
    go_d = torch.autograd.functional.jacobian(lambda d: outer(d, flat), d0)
    go_t = torch.autograd.functional.jacobian(lambda t: outer(d0, t), flat)
    v, term = torch.zeros(4), go_d
    for _ in range(cfg.sr_fp_iters):
        v, term = v + term, J.T @ term
    expected = go_t + Jt.T @ v
    got = torch.cat([g.flatten() for g in grads])
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-3)


# --- Configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("kd", "dreams"),
        ("steps", 0),
        ("steps", 1.5),
        ("sv_alpha", 0.0),
        ("sv_alpha", -0.1),
        ("sv", "yes"),
        ("sv_head", 1),
        ("sr_start", 1.5),
        ("sr_portion", 0.0),
        ("sr_mode", "zeroth"),
        ("sv_weighting", "both"),
        ("sv_student", "yes"),
        ("sv_tail", 1.0),
        ("student", "no-such-model"),
        ("temperature", -1.0),
        ("seed", -1),
    ],
)
def test_constructor_validation(field, value):
    with pytest.raises(ValueError) as e:
        ABD(**{field: value})
    assert field in str(e.value) and repr(value) in str(e.value)


def test_constructor_keyword_only_frozen_and_registered():
    assert PLUGINS.get("abd") is ABD
    with pytest.raises(TypeError):
        ABD("generator")  # keyword-only
    with pytest.raises(TypeError):
        ABD(no_such_option=1)
    p = ABD(kd="ood", steps=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.steps = 6  # type: ignore[misc]
    assert p.config().kd == "ood" and p.config().kd_temperature == 8.0
    assert ABD().config().kd_temperature == 1.0 and ABD().config().student_lr == 2e-3


# --- End to end (tiny) -----------------------------------------------------------------


def _trigger() -> EvalTrigger:
    def stamp(x):
        x = x.clone()
        x[:, :, -2:, -2:] = 1.0
        return x

    return EvalTrigger(apply=stamp, target=0)


def _test_set() -> TensorData:
    return TensorData(_x(40, 5), torch.arange(40) % 10)


@pytest.mark.parametrize("kd", ["generator", "ood"])
def test_distill_deterministic_and_reports(kd):
    t = _cnn(7)
    kw = dict(in_shape=IN_SHAPE, num_classes=10, test=_test_set(), eval_triggers={"p": _trigger()},
              make_student=lambda: _cnn(8), **_tiny(kd=kd, sv_select=False))
    a = distill(t, **kw)
    b = distill(t, **kw)
    assert all(torch.equal(p, q) for p, q in zip(a.student.parameters(), b.student.parameters()))
    assert set(a.metrics) == {"acc", "asr", "target_acc"} and set(a.metrics["asr"]) == set(a.metrics["target_acc"]) == {"p"}
    assert a.info["sv_active"] is True and a.info["sr"] is True
    assert "sr_outer_kl_mean" in a.info
    assert all(p.requires_grad for p in t.parameters())  # the caller's teacher is not modified
    plain = distill(t, defended=False, **kw)
    assert plain.info["sv"] is False and plain.info["sr"] is False
    assert a.info["sv_head"] is None
    head = distill(t, **{**kw, "sv_head": True, "sr": False})
    assert head.info["sv_head"] == channel_head(t, _x(1))[0]
    no_head = distill(t, **{**kw, "sr": False})
    # ZSKT's generator reads the shuffled teacher's KL, which the head shuffle changes (OOD KD reads only
    # the argmax agreement, which a 3-step tiny run may leave the same).
    assert kd == "ood" or not all(torch.equal(p, q) for p, q in zip(head.student.parameters(), no_head.student.parameters()))


def test_on_run_end_writes_table(tmp_path: Path):
    plugin = ABD(**_tiny(compare=True))
    ctx = PluginContext(scenario=None, test=_test_set(), num_classes=10, in_shape=IN_SHAPE, run_dir=tmp_path,
                        device=torch.device("cpu"), make_model=lambda: _cnn(9), eval_triggers={"patch": _trigger()})
    model = _cnn(7)
    before = [p.clone() for p in model.parameters()]
    out = plugin.on_run_end(model, ctx)
    assert {"teacher", "kd", "kd_abd", "config"} <= set(out)
    assert set(out["kd_abd"]["asr"]) == {"patch"}
    text = (tmp_path / "abd.md").read_text()
    assert "| patch |" in text and "KD+ABD" in text
    assert all(torch.equal(p, q) for p, q in zip(before, model.parameters()))  # global model untouched
    table = markdown_table(out)
    assert table.count("\n") == 4 and "| patch: target-class acc |" in table


class _Always(nn.Module):
    """Predicts class ``c`` for every input."""

    def __init__(self, c: int):
        super().__init__()
        self.c = c
        self.anchor = nn.Parameter(torch.zeros(()))  # the metrics read the device off a parameter

    def forward(self, x):
        return nn.functional.one_hot(torch.full((len(x),), self.c), 10).float()


def test_evaluate_reports_the_target_class_accuracy_beside_the_asr():
    """Worked by hand on 40 images, 4 per class, trigger target 0: a model that never
    predicts 0 has ASR 0 and target-class accuracy 0; one that always predicts 0 has
    ASR 1 (36 non-target images), target-class accuracy 1, overall accuracy 4/40."""
    from fedsec.plugins.abd import evaluate

    test, trig = _test_set(), {"p": _trigger()}
    never = evaluate(_Always(3), test, trig)
    assert never["asr"]["p"] == 0.0 and never["target_acc"]["p"] == 0.0 and never["acc"] == pytest.approx(0.1)
    always = evaluate(_Always(0), test, trig)
    assert always["asr"]["p"] == 1.0 and always["target_acc"]["p"] == 1.0 and always["acc"] == pytest.approx(0.1)
    all_to_all = EvalTrigger(apply=lambda x: x, target_fn=lambda y: (y + 1) % 10)
    assert evaluate(_Always(0), test, {"a": all_to_all})["target_acc"] == {}  # no single target class
    assert "| p: target-class acc | 0.0 |" in markdown_table({"teacher": never})


@pytest.mark.parametrize("name", ["abd.toml", "abd_8x8.toml"])
def test_abd_experiment_scenario_runs_end_to_end(tmp_path: Path, name: str):
    """The experiment scenarios stay valid: a backdoored federation whose global
    model the plugin distils (tiny: 1 round, 2 generator rounds)."""
    import fedsec
    from fedsec.scenario import load_scenario

    toml = Path(__file__).resolve().parents[2] / "experiments" / "plugins" / name
    s = load_scenario(toml, ["server.rounds=1", "client.epochs=1", "plugins.0.params.steps=2",
                             "plugins.0.params.sv_probe_steps=1", f'run.output="{tmp_path.as_posix()}"'])
    assert [a.behaviour for a in s.attack] == ["badnets"] and s.plugins[0].name == "abd"
    params = s.plugins[0].params
    res = fedsec.run(s)
    out = res.summary["plugins"]["abd"]
    assert {"teacher", "kd", "kd_abd"} <= set(out)
    assert set(out["kd"]["asr"]) == set(out["kd_abd"]["asr"]) == {"badnets"}
    assert out["kd_abd"]["info"]["sr"] is params.get("sr", True) and out["kd"]["info"]["sr"] is False
    if params.get("sv_select", True) is False:  # the vaccine is used without the tail test
        assert out["kd_abd"]["info"]["sv_active"] is True
    table = (res.run_dir / "abd.md").read_text()
    assert "| badnets |" in table and "KD+ABD" in table
    # the repaired models are kept: each reloads from its own metadata and scores what was reported
    from safetensors import safe_open
    from safetensors.torch import load_file

    from fedsec.federation.env import dataset_of, new_model, scenario_from_toml
    from fedsec.metrics import accuracy

    for key, file in (("kd", "student_kd.safetensors"), ("kd_abd", "student_kd_abd.safetensors")):
        with safe_open(str(res.run_dir / file), "pt") as f:
            meta = f.metadata()
        st = new_model(scenario_from_toml(meta["scenario"]))
        st.load_state_dict(load_file(str(res.run_dir / file)))
        assert accuracy(st.eval(), dataset_of(s).test) == pytest.approx(out[key]["acc"], abs=1e-6)
        assert json.loads(meta["abd"])["steps"] == 2


def test_save_student_records_the_student_architecture(tmp_path: Path):
    """A student of another architecture than the teacher is saved under a scenario
    that names it, so it can be rebuilt without knowing the ABD options."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from fedsec.federation.env import new_model, scenario_from_toml
    from fedsec.plugins.abd import save_student
    from fedsec.scenario import load_scenario

    s = load_scenario(Path(__file__).resolve().parents[2] / "experiments" / "quickstart.toml")
    cfg = ABDConfig(student="mlp", student_params={"hidden": 16})
    student = build_model("mlp", in_shape=IN_SHAPE, num_classes=10, hidden=16)
    save_student(tmp_path / "st.safetensors", student, s, cfg)
    with safe_open(str(tmp_path / "st.safetensors"), "pt") as f:
        back = scenario_from_toml(f.metadata()["scenario"])
    assert back.model.name == "mlp" and back.model.params == {"hidden": 16}
    assert s.model.name != "mlp" and back.data == s.data and back.attack == s.attack
    rebuilt = new_model(back)
    rebuilt.load_state_dict(load_file(str(tmp_path / "st.safetensors")))
    x = torch.rand(4, *IN_SHAPE)
    assert torch.equal(rebuilt(x), student(x))
    assert not list(tmp_path.glob(".*.tmp"))


# --- One loop, one seed ------------------------------------------------------------------


@pytest.mark.parametrize("kd", ["generator", "ood"])
def test_plain_kd_is_the_abd_loop_with_both_defences_off(kd):
    """Plain KD and KD+ABD share one training loop: ABD with SV and SR switched off
    trains the bitwise-same student as the plain baseline."""
    t = _cnn(7)
    kw = dict(in_shape=IN_SHAPE, num_classes=10, make_student=lambda: _cnn(8), **_tiny(kd=kd, sr_start=0.0))
    plain = distill(t, defended=False, **kw)
    off = distill(t, defended=True, sv=False, sr=False, **kw)
    on = distill(t, defended=True, sv=False, sr=True, **kw)
    assert off.info["mode"] == "abd" and plain.info["mode"] == "kd"
    assert all(torch.equal(p, q) for p, q in zip(plain.student.parameters(), off.student.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(plain.student.parameters(), on.student.parameters()))


def test_config_seed_defaults_to_the_run_seed():
    assert ABDConfig().seed is None
    assert ABDConfig().seeded(5).seed == 5 and ABDConfig().seeded().seed == 0
    assert ABDConfig(seed=2).seeded(5).seed == 2


def _plugin_students(tmp_path: Path, run_seed: int, **params) -> tuple[dict, list[torch.Tensor]]:
    from safetensors.torch import load_file

    from fedsec.scenario import load_scenario

    scen = load_scenario(Path(__file__).resolve().parents[2] / "experiments" / "quickstart.toml",
                         [f"run.seed={run_seed}"])
    out_dir = tmp_path / f"run{run_seed}-{params.get('seed')}"
    ctx = PluginContext(scenario=scen, test=_test_set(), num_classes=10, in_shape=IN_SHAPE, run_dir=out_dir,
                        device=torch.device("cpu"), make_model=lambda: _cnn(9), eval_triggers={"p": _trigger()})
    out = ABD(**_tiny(sv_select=False, **params)).on_run_end(_cnn(7), ctx)
    return out, [t for f in ("student_kd.safetensors", "student_kd_abd.safetensors")
                 for t in load_file(str(out_dir / f)).values()]


def test_plugin_seed_derives_from_run_seed_unless_given(tmp_path: Path):
    """Without its own ``seed`` the plugin is seeded by the scenario's run.seed; with one, run.seed is ignored."""
    out3, st3 = _plugin_students(tmp_path, 3)
    out0, st0 = _plugin_students(tmp_path, 0)
    given, st_given = _plugin_students(tmp_path, 0, seed=3)
    pinned, st_pinned = _plugin_students(tmp_path, 3, seed=0)
    assert out3["config"]["seed"] == 3 and out0["config"]["seed"] == 0
    assert all(torch.equal(a, b) for a, b in zip(st3, st_given))
    assert all(torch.equal(a, b) for a, b in zip(st0, st_pinned))
    assert not all(torch.equal(a, b) for a, b in zip(st3, st0))


# --- Generator penalty, vaccine probe, SR step, CutMix -------------------------------------


def test_malicious_synthesis_worked_by_hand():
    """R = mean KL(T || T~) over the inputs where T~ agrees with T (phi = 1); None if there are none."""
    from fedsec.plugins.abd import malicious_synthesis

    t = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    sh = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # phi = 1, 0, 0
    p = torch.softmax(t[0], 0)
    q = torch.softmax(sh[0], 0)
    expected = float((p * (p / q).log()).sum())
    assert float(malicious_synthesis(t, sh)) == pytest.approx(expected, rel=1e-6)
    all_one = torch.tensor([[0.0, 1.0]] * 3)  # agrees with row 1 only
    p1, q1 = torch.softmax(t[1], 0), torch.softmax(all_one[1], 0)
    assert float(malicious_synthesis(t, all_one)) == pytest.approx(float((p1 * (p1 / q1).log()).sum()), rel=1e-6)
    assert malicious_synthesis(t[[0, 2]], torch.tensor([[0.0, 1.0], [0.0, 1.0]])) is None


def test_vaccine_observes_the_first_probe_batches_then_selects_once():
    from fedsec.plugins.abd import Vaccine

    cfg = ABDConfig(sv_probe_steps=3, sv_select=False, sv_layers=1, sv_ensemble=1)
    vac = Vaccine(_cnn(1), cfg, generator(0, "v"))
    vac.observe(_x(4, 1))
    vac.observe(_x(4, 2))
    assert vac.model is None and vac.trials == 0
    vac.observe(_x(4, 3))
    assert vac.model is not None and vac.trials == 1
    chosen = vac.model
    vac.observe(_x(4, 4))
    assert vac.model is chosen and vac.trials == 1


def test_sr_student_step_adds_the_hypergradient_to_the_kd_gradient():
    """The step's gradient is grad(kd_loss) + sr_coef * sr_hypergradient, computed here
    independently on a copy with the same generator stream (lr 0 keeps the parameters)."""
    from fedsec.plugins.abd import sr_student_step

    s = _cnn(2).train()
    x = _x(16)
    target = _cnn(3)(x).detach()
    cfg = ABDConfig(sr_portion=0.5, sr_fp_iters=2, sr_n_delta=2, sr_coef=0.5)

    def kd_loss(model):
        return kl_per_sample(target, model(x)).mean()

    ref = copy.deepcopy(s)
    g_ref = generator(0, "sr-step")
    delta = sr_find_delta(ref, x, cfg, g_ref)
    hyper, outer_ref = sr_hypergradient(ref, x, delta, cfg, g_ref)
    kd_grads = torch.autograd.grad(kd_loss(ref), list(ref.parameters()))
    outer = sr_student_step(s, torch.optim.SGD(s.parameters(), lr=0.0), x, lambda: kd_loss(s), cfg,
                            generator(0, "sr-step"))
    assert outer == pytest.approx(outer_ref)
    for p, k, h in zip(s.parameters(), kd_grads, hyper):
        assert torch.allclose(p.grad, k + 0.5 * h, atol=1e-6)
    assert any(float(h.abs().max()) > 0 for h in hyper)  # the SR term is not zero


def test_cutmix_pastes_one_box_from_a_permutation_of_the_batch():
    from fedsec.plugins.abd import cutmix

    x = torch.arange(6 * 2 * 8 * 8, dtype=torch.float32).view(6, 2, 8, 8)
    before = x.clone()
    for seed in range(5):
        out = cutmix(x, 1.0, generator(seed, "cutmix"))
        assert torch.equal(x, before)  # the input is not modified
        changed = (out != x).any(0).any(0)  # (H, W) pixels changed in some image/channel
        if not changed.any():
            continue
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        box = (slice(int(rows.min()), int(rows.max()) + 1), slice(int(cols.min()), int(cols.max()) + 1))
        assert bool(changed[box].all())  # the changed pixels form one rectangle
        src = [next(j for j in range(6) if torch.equal(out[i, :, box[0], box[1]], x[j, :, box[0], box[1]]))
               for i in range(6)]
        assert sorted(src) == list(range(6))  # its content is a permutation of the batch's boxes
