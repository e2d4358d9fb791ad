"""Neural Cleanse, fine-pruning and the deployed-model bit search on a small digits CNN."""

from __future__ import annotations

import copy

import pytest
import torch

from fedsec.audit import AuditTarget, get_detector
from fedsec.audit.bitflip_deploy import DeployAttack, progressive_bit_search, quantized_copy
from fedsec.audit.features import last_conv, last_linear
from fedsec.audit.fine_pruning import FinePruning, prune_channels, pruning_order
from fedsec.audit.neural_cleanse import NeuralCleanse, _Schedule, _smallest, from_tanh, stamp, stamp_many, to_tanh
from fedsec.audit.neuron_pruning import activation_gap, gap_order, prune_head_inputs, success_curve
from fedsec.audit.plugins import NeuralCleansePlugin
from fedsec.audit.unlearning import unlearning_set
from fedsec.data import TensorData
from fedsec.metrics import accuracy, attack_success_rate
from fedsec.plugins import PluginContext

from .conftest import TARGET


def target(model, split, eval_triggers, **kw):
    clean, ev = split
    return AuditTarget(model=model, clean=clean, evaluation=ev, num_classes=10, in_shape=(1, 8, 8),
                       generator=torch.Generator().manual_seed(0), eval_triggers=eval_triggers, **kw)


# -- Neural Cleanse ---------------------------------------------------------------------------


def test_tanh_parametrisation_round_trips_and_stamp_blends():
    v = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.allclose(from_tanh(to_tanh(v)), v, atol=1e-6)
    x = torch.zeros(1, 1, 2, 2)
    m = torch.tensor([[1.0, 0.0], [0.5, 0.0]])
    p = torch.ones(1, 2, 2)
    assert stamp(x, m, p).flatten().tolist() == [1.0, 0.0, 0.5, 0.0]


def test_cost_schedule_follows_the_reference():
    s = _Schedule(init_cost=1e-3, up=2.0, down=2.0**1.5, patience=2, early_stop_patience=3)
    assert s.cost == 0
    s.step(True, 5.0)
    s.step(True, 5.0)
    assert s.cost == 1e-3  # set after `patience` successes at cost 0
    s.step(True, 4.0)
    s.step(True, 4.0)
    assert s.cost == 2e-3 and s.up_flag  # up after `patience` more successes
    s.step(False, 4.0)
    s.step(False, 4.0)
    assert s.cost == pytest.approx(2e-3 / 2**1.5) and s.down_flag
    # both flags set: an improving pass resets the counter, then it stops after
    # early_stop_patience passes without improvement
    assert not s.step(False, 3.0)
    assert not s.step(False, 3.0)
    assert not s.step(False, 3.0)
    assert s.step(False, 3.0)


def test_stamp_many_is_stamp_per_trigger():
    g = torch.Generator().manual_seed(0)
    x, m, p = torch.rand(4, 3, 5, 5, generator=g), torch.rand(2, 5, 5, generator=g), torch.rand(2, 3, 5, 5, generator=g)
    out = stamp_many(x, m, p)
    assert out.shape == (2, 4, 3, 5, 5)
    for k in range(2):
        assert torch.allclose(out[k], stamp(x, m[k], p[k]))


def test_restarts_keep_the_smallest_mask_that_reached_the_success_rate():
    runs = [{"l1": 3.0, "reached": False}, {"l1": 5.0, "reached": True}, {"l1": 4.0, "reached": True}]
    assert _smallest(runs)["l1"] == 4.0  # an unsuccessful smaller mask does not count
    assert _smallest([{"l1": 7.0, "reached": False}, {"l1": 6.0, "reached": False}])["l1"] == 6.0


def test_neural_cleanse_flags_backdoor_with_right_target(backdoored, split, eval_triggers, tmp_path):
    assert attack_success_rate(backdoored, split[1], eval_triggers["badnets"]) > 0.9
    before = copy.deepcopy(backdoored.state_dict())
    grads = [None if p.grad is None else p.grad.clone() for p in backdoored.parameters()]
    res = NeuralCleanse(passes=40).audit(target(backdoored, split, eval_triggers, out_dir=tmp_path, prefix="x."))
    assert res.flagged and res.target == TARGET
    assert "mitigation" not in res.figures  # detection only by default
    assert res.score > 2
    norms = res.figures["l1_norms"]
    assert norms[TARGET] == min(norms)
    assert (tmp_path / "x.neural_cleanse.png").stat().st_size > 1000
    assert all(torch.equal(before[k], v) for k, v in backdoored.state_dict().items())  # model untouched
    assert all((g is None and p.grad is None) or torch.equal(g, p.grad)
               for g, p in zip(grads, backdoored.parameters()))


def test_reversed_trigger_sits_on_the_real_trigger(backdoored, split):
    det = NeuralCleanse(passes=25)
    net = copy.deepcopy(backdoored)
    for p in net.parameters():
        p.requires_grad_(False)
    r = det.reverse(net, split[0].x, TARGET, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert r["reached"] and r["success"] >= 0.99
    corner = r["mask"][5:, 5:].sum()  # the 3x3 patch sits at the bottom-right corner
    assert float(corner) > 0.5 * r["l1"]


@pytest.mark.parametrize("kw, field", [({"passes": 0}, "passes"), ({"cost_multiplier": 1.0}, "cost_multiplier"),
                                       ({"attack_success": 1.5}, "attack_success"), ({"lr": -1}, "lr"),
                                       ({"step_samples": -1}, "step_samples"), ({"restarts": 0}, "restarts"),
                                       ({"mitigate": "retrain"}, "mitigate"),
                                       ({"calibrate_fpr": 1.0}, "calibrate_fpr"),
                                       ({"prune_max_fraction": 0}, "prune_max_fraction"),
                                       ({"prune_stop_success": -0.1}, "prune_stop_success"),
                                       ({"unlearn_fraction": 0}, "unlearn_fraction"),
                                       ({"unlearn_epochs": 0}, "unlearn_epochs")])
def test_neural_cleanse_bad_params_name_the_field(kw, field):
    with pytest.raises(ValueError, match=f"neural_cleanse.{field}"):
        NeuralCleanse(**kw)


# -- Neural Cleanse's mitigation: unlearning --------------------------------------------------


def test_unlearning_set_stamps_the_fraction_and_keeps_the_true_labels():
    g = torch.Generator().manual_seed(0)
    clean = TensorData(torch.rand(10, 1, 4, 4, generator=g) * 0.5, torch.arange(10))
    x0 = clean.x.clone()
    m1, m2 = torch.zeros(4, 4), torch.zeros(4, 4)
    m1[0, 0], m2[3, 3] = 1.0, 1.0
    pat = torch.ones(1, 4, 4)
    data, stamped = unlearning_set(clean, [(m1, pat), (m2, pat)], 0.4, torch.Generator().manual_seed(1))
    assert int(stamped.sum()) == 4
    assert torch.equal(data.y, clean.y)  # true labels, never the target
    assert torch.equal(clean.x, x0)  # input untouched
    assert torch.equal(data.x[~stamped], x0[~stamped])
    corner = data.x[stamped][:, 0]
    first = corner[:, 0, 0] == 1.0
    second = corner[:, 3, 3] == 1.0
    assert int(first.sum()) == 2 and int(second.sum()) == 2 and not bool((first & second).any())  # dealt in turn
    # a full mask with pattern 1 turns the image white; m = 0 leaves it as it was
    full, st = unlearning_set(clean, [(torch.ones(4, 4), pat)], 0.3, torch.Generator().manual_seed(2))
    assert int(st.sum()) == 3 and bool((full.x[st] == 1).all())
    with pytest.raises(ValueError, match="fraction"):
        unlearning_set(clean, [(m1, pat)], 1.5, g)


@pytest.fixture(scope="module")
def unlearned(backdoored, split, eval_triggers):
    before = copy.deepcopy(backdoored.state_dict())
    net, res = NeuralCleanse(passes=40, mitigate="unlearn").repair(target(backdoored, split, eval_triggers))
    return before, net, res


def test_unlearning_removes_the_backdoor_at_little_accuracy_cost(unlearned, backdoored, split):
    before, net, res = unlearned
    assert res.flagged and res.target == TARGET
    m = res.figures["mitigation"]
    assert m["applied"] and TARGET in m["classes"]
    assert m["n_stamped"] == round(0.2 * len(split[0])) and m["n_clean"] == len(split[0])
    assert m["before"]["asr"]["badnets"] > 0.9 and m["after"]["asr"]["badnets"] < 0.2  # the paper's direction
    assert m["after"]["acc"] > m["before"]["acc"] - 0.05
    assert net is not backdoored
    assert all(torch.equal(before[k], v) for k, v in backdoored.state_dict().items())  # not modified in place


def test_unflagged_or_detection_only_models_are_not_repaired(backdoored, split, eval_triggers):
    net, res = NeuralCleanse(passes=2, mitigate="unlearn", threshold=1e6).repair(target(backdoored, split,
                                                                                          eval_triggers))
    m = res.figures["mitigation"]
    assert net is None and not res.flagged and not m["applied"] and m["after"] == m["before"]
    net, res = NeuralCleanse(passes=2).repair(target(backdoored, split, eval_triggers))
    assert net is None and "mitigation" not in res.figures


@pytest.mark.parametrize("mitigate, saved, other, described", [
    ("unlearn", "nc_unlearned.safetensors", "nc_pruned.safetensors", "unlearning the reversed trigger of class(es) [0"),
    ("prune", "nc_pruned.safetensors", "nc_unlearned.safetensors", "pruning the penultimate neurons"),
])
def test_plugin_option_repairs_and_saves_the_repaired_model(backdoored, digits, eval_triggers, tmp_path, mitigate,
                                                            saved, other, described):
    ctx = PluginContext(scenario=None, test=digits.test, num_classes=10, in_shape=(1, 8, 8), run_dir=tmp_path,
                        device=torch.device("cpu"), make_model=lambda: copy.deepcopy(backdoored),
                        eval_triggers=eval_triggers)
    out = NeuralCleansePlugin(passes=40, mitigate=mitigate).on_run_end(backdoored, ctx)
    assert out["flagged"] and out["model_file"] == saved
    assert (tmp_path / saved).is_file() and not (tmp_path / other).exists()
    assert out["figures"]["mitigation"]["after"]["asr"]["badnets"] < 0.2
    assert described in (tmp_path / "neural_cleanse.md").read_text()


def _per_class(norms):
    return [{"l1": v, "success": 1.0, "reached": True, "passes": 10, "mask": torch.zeros(8, 8),
             "pattern": torch.zeros(1, 8, 8)} for v in norms]


def test_calibrated_verdict_controls_the_minimum_of_c(backdoored, split, eval_triggers):
    # norms sorted: 7, 9, 9.5, 10, 10, 10.5, 10.8, 11, 11.5, 12 -> median 10.25;
    # |x - 10.25|: 3.25 1.25 .75 .25 .25 .25 .55 .75 1.25 1.75 -> median .75, MAD 1.11195;
    # index of the 7: 3.25 / 1.11195 = 2.923: above the paper's 2, below the 5%-calibrated 3.89
    norms = [10.0, 7.0, 10.5, 11.0, 9.5, 12.0, 10.0, 9.0, 11.5, 10.8]
    t = target(backdoored, split, eval_triggers)
    paper = NeuralCleanse().verdict(_per_class(norms), 100, t)
    calibrated = NeuralCleanse(calibrate_fpr=0.05).verdict(_per_class(norms), 100, t)
    assert paper.score == pytest.approx(3.25 / (1.4826 * 0.75))
    assert paper.flagged and paper.target == 1 and paper.figures["threshold"] == 2.0
    assert not calibrated.flagged and calibrated.target is None
    assert calibrated.figures["threshold"] == pytest.approx(3.89, abs=0.05)
    assert 0.08 < paper.figures["p_value_min"] < 0.16 and paper.figures["p_value_min"] == calibrated.figures[
        "p_value_min"]
    # a shortcut far below the rest is flagged either way
    norms[1] = 3.0
    strong = NeuralCleanse(calibrate_fpr=0.05).verdict(_per_class(norms), 100, t)
    assert strong.flagged and strong.target == 1 and strong.figures["p_value_min"] < 0.01
    with pytest.raises(ValueError, match="neural_cleanse.calibrate_fpr.*at least 3 classes"):
        NeuralCleanse(calibrate_fpr=0.05).verdict(_per_class([3.0, 9.0]), 100, t)


# -- Neural Cleanse's mitigation: pruning neurons by the reversed trigger ----------------------


def test_activation_gap_and_its_order_hand_worked():
    clean = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 2.0]])  # mean 2, 0, 2
    trig = torch.tensor([[2.0, 5.0, 3.0], [2.0, 7.0, 1.0]])  # mean 2, 6, 2
    assert activation_gap(clean, trig).tolist() == [0.0, 6.0, 0.0]
    assert gap_order(torch.tensor([0.0, 6.0, 6.0, -1.0])).tolist() == [1, 2, 0, 3]  # largest first, stable
    with pytest.raises(ValueError, match="activation_gap"):
        activation_gap(clean, trig[:, :2])


def test_success_curve_hand_worked():
    # class 1 listens only to neuron 0 (the "trigger neuron"); class 0 to neurons 1 and 2
    w = torch.tensor([[0.0, 1.0, 1.0], [5.0, 0.0, 0.0]])
    feats = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.1, 1.0, 0.0]])
    # logits (class 0, class 1): (1, 5), (1, 5), (1, 0.5) -> 2 of 3 rows reach class 1;
    # without neuron 0: (1, 0) for all -> none
    curve = success_curve(w, None, feats, torch.ones(3, dtype=torch.long), torch.tensor([0, 1]), 2)
    assert curve.tolist() == pytest.approx([2 / 3, 0.0, 0.0])
    assert w[1, 0] == 5.0  # the head itself is not modified


def test_neuron_pruning_removes_the_backdoor(backdoored, split, eval_triggers):
    before = copy.deepcopy(backdoored.state_dict())
    net, res = NeuralCleanse(passes=40, mitigate="prune").repair(target(backdoored, split, eval_triggers))
    m = res.figures["mitigation"]
    assert res.flagged and m["applied"] and m["method"] == "prune"
    k = len(m["pruned"])
    assert 0 < k <= 0.3 * m["neurons"] and m["stopped"] == "unresponsive"
    assert m["reversed_success_curve"][0] > 0.9 and m["reversed_success_curve"][k] <= 0.05
    assert m["before"]["asr"]["badnets"] > 0.9 and m["after"]["asr"]["badnets"] < 0.2  # the real trigger too
    assert m["after"]["acc"] > 0.7  # the cost, measured: 96.1% -> 85.0% on this 32-neuron fixture
    head = last_linear(net)
    assert float(head.weight.detach()[:, m["pruned"]].abs().max()) == 0
    assert all(torch.equal(before[key], v) for key, v in backdoored.state_dict().items())  # not in place


def test_prune_head_inputs_keeps_the_state_dict(backdoored):
    net = prune_head_inputs(backdoored, torch.tensor([0, 2]))
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in backdoored.state_dict().items()}
    head = last_linear(backdoored)
    assert float(head.weight.detach()[:, 0].abs().max()) > 0  # the original keeps its weights


# -- fine-pruning -------------------------------------------------------------------------------


def test_prune_channels_silences_them_and_keeps_the_state_dict(backdoored):
    net = copy.deepcopy(backdoored)
    name, conv = last_conv(net)
    out = {}
    h = conv.register_forward_hook(lambda m, i, o: out.__setitem__("o", o))
    prune_channels(net, name, torch.tensor([0, 3]))
    with torch.no_grad():
        net(torch.rand(4, 1, 8, 8))
    h.remove()
    assert float(out["o"][:, [0, 3]].abs().max()) == 0
    assert float(out["o"][:, 1].abs().max()) > 0
    assert {k: v.shape for k, v in net.state_dict().items()} == {k: v.shape for k, v in backdoored.state_dict().items()}


def test_pruning_order_is_increasing_activation_with_stable_ties():
    assert pruning_order(torch.tensor([0.5, 0.0, 0.2, 0.0])).tolist() == [1, 3, 2, 0]


def test_fine_pruning_respects_the_accuracy_bound_and_keeps_channels_dead(backdoored, split, eval_triggers):
    det = FinePruning(max_acc_drop=0.05, epochs=5)
    net, res = det.repair(target(backdoored, split, eval_triggers))
    f = res.figures
    base = accuracy(backdoored, split[0])
    assert all(base - a <= 0.05 + 1e-9 for a in f["clean_acc_curve"])
    assert 0 < len(f["pruned"]) < f["channels"] and res.score == len(f["pruned"]) / f["channels"]
    name, conv = last_conv(net)
    assert float(conv.weight.detach()[f["pruned"]].abs().sum()) == 0 and float(conv.bias.detach()[f["pruned"]].abs().sum()) == 0
    assert not res.flagged and res.target is None
    assert f["before"]["asr"]["badnets"] > 0.9
    assert f["after_fine_tuning"]["asr"]["badnets"] < f["before"]["asr"]["badnets"]  # the published direction


def test_fine_pruning_fixed_ratio_prunes_that_many(backdoored, split, eval_triggers):
    net, res = FinePruning(prune_ratio=0.5, epochs=0).repair(target(backdoored, split, eval_triggers))
    assert len(res.figures["pruned"]) == 8  # 16 channels in the last conv of a width-8 cnn
    assert res.figures["after_pruning"] == res.figures["after_fine_tuning"]


# -- bit flips on the deployed model -------------------------------------------------------------


def test_quantized_copy_is_int8_on_a_grid_and_leaves_the_model(backdoored):
    before = copy.deepcopy(backdoored.state_dict())
    net, layers, qs, scales = quantized_copy(backdoored)
    for (_, w), q, s in zip(layers, qs, scales):
        assert q.dtype == torch.int8 and torch.allclose(w, q.float() * s)
    assert all(torch.equal(before[k], v) for k, v in backdoored.state_dict().items())


@pytest.mark.parametrize("budget", [0, 1, 4])
def test_flip_budget_is_never_exceeded(backdoored, split, budget):
    x, y = split[0].x[:64], split[0].y[:64]

    def objective(m):
        out = m(x)
        return torch.nn.functional.cross_entropy(out, y), float((out.argmax(1) == y).float().mean())

    out = progressive_bit_search(backdoored, objective, lambda acc: acc <= 0.0, max_flips=budget)
    assert out.flips == len(out.flipped) == budget  # one bit per iteration, each a distinct bit
    assert len(set(out.flipped)) == budget and len(out.trace) == budget + 1
    assert not out.reached
    if budget:
        assert out.trace[-1] < out.trace[0]  # the search lowers the attacker-batch accuracy


def test_goal_met_at_start_flips_nothing(backdoored, split):
    out = progressive_bit_search(backdoored, lambda m: (torch.zeros(()), 1.0), lambda v: v >= 1.0, max_flips=5)
    assert out.flips == 0 and out.reached and out.trace == [1.0]


def test_deploy_attack_reaches_chance_and_reports(backdoored, split):
    res = DeployAttack(max_flips=25, attack_batch=64).run(backdoored, split[0], split[1], 10,
                                                           torch.Generator().manual_seed(0))
    assert res["flips"] <= 25 and res["acc_after"] < res["acc_quantized"]
    assert abs(res["acc_quantized"] - res["acc"]) < 0.05  # int8 costs little
    if res["reached"]:
        assert res["attack_metric"][-1] <= 0.11


def test_deploy_attack_bad_params_name_the_field():
    with pytest.raises(ValueError, match="bitflip_deploy.mode"):
        DeployAttack(mode="sideways")
    with pytest.raises(TypeError, match="did you mean 'max_flips'"):
        DeployAttack(max_flip=3)


def test_get_detector_fine_pruning_is_a_repair(backdoored, split, eval_triggers):
    res = get_detector("fine_pruning", epochs=1).audit(target(backdoored, split, eval_triggers))
    assert res.to_dict()["flagged"] is False


def test_budget_mode_spends_every_flip_and_tracks_held_out_accuracy(backdoored, split):
    res = DeployAttack(max_flips=3, attack_batch=64, stop_on="budget").run(
        backdoored, split[0], split[1], 10, torch.Generator().manual_seed(0))
    assert res["flips"] == 3 and len(res["eval_metric"]) == len(res["attack_metric"]) == 4
    assert res["eval_metric"][0] == pytest.approx(res["acc_quantized"])
    assert res["eval_metric"][-1] == pytest.approx(res["acc_after"])
    fl = res["flips_to_goal_on_eval"]
    assert fl is None or res["eval_metric"][fl] <= 0.11
