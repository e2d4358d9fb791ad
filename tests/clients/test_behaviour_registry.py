"""Every registered behaviour through the conformance checks (fedsec.testing.behaviours),
and the checks themselves on deliberately broken behaviours (so that they can fail)."""

from dataclasses import dataclass

import pytest
import torch
from fedsec.testing.behaviours import (
    check_behaviour,
    check_client_stages,
    check_craft,
    check_declaration,
    digits_task_factory,
)

from fedsec.clients import BEHAVIOURS, Behaviour, Colluding, get_behaviour, local_train
from fedsec.clients.attacks.omniscient import replace_rows

NAMES = BEHAVIOURS.names()
# Parameters that keep a training run tiny (bitflip, feature_collision) or let it finish
# (fault's default mode raises by design).
TRAIN_PARAMS = {
    "fault": {"mode": "nan"},
    "bitflip": {"max_flips": 2, "attack_batch": 32},
    "feature_collision": {"num_poisons": 3, "iterations": 5},
}


def test_the_zoo_is_registered():
    expected = {"honest", "badnets", "dba", "model_replacement", "pretrained", "code_poisoning", "bitflip",
                "bitflip_random", "feature_collision", "label_flip", "sign_flip", "gaussian",
                "alie", "ipm", "minmax", "minsum", "fault"}
    assert expected <= set(NAMES)
    colluding = {n for n in NAMES if BEHAVIOURS.get(n).omniscient}
    assert {"alie", "ipm", "minmax", "minsum"} <= colluding
    assert all(issubclass(BEHAVIOURS.get(n), Colluding) for n in colluding)


@pytest.mark.parametrize("name", NAMES)
def test_defaults_declare_correctly(name):
    check_declaration(BEHAVIOURS.get(name))


@pytest.mark.parametrize("name", NAMES)
def test_behaviour_conforms(name):
    check_behaviour(BEHAVIOURS.get(name), TRAIN_PARAMS.get(name))


@pytest.fixture(scope="module")
def factory():
    return digits_task_factory()


# data-level attacks an engine may batch; everything that edits the loss, the gradients or
# the submitted model (bar DBA's per-client rescale) takes the general path
VECTORIZABLE = {"honest": True, "badnets": True, "dba": True, "label_flip": True, "pretrained": True,
                "alie": True, "ipm": True, "minmax": True, "minsum": True,
                "model_replacement": False, "code_poisoning": False, "feature_collision": False,
                "bitflip": False, "bitflip_random": False, "sign_flip": False, "gaussian": False,
                "fault": False}


@pytest.mark.parametrize("name", sorted(VECTORIZABLE))
def test_vectorizable_flags(name):
    assert BEHAVIOURS.get(name).vectorizable() is VECTORIZABLE[name]


def test_fault_raise_mode_fails_training(factory):
    with pytest.raises(RuntimeError, match="injected fault in partition 0"):
        local_train(get_behaviour("fault"), factory(0))


def test_badnets_dataset_mode_is_deterministic(factory):
    check_client_stages(get_behaviour("badnets", per="dataset"), factory)


# -- the checks catch broken behaviours -----------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class _Stateful(Behaviour):
    """Keeps what it saw on self (forbidden: one object serves every client)."""

    def prepare(self, task):
        object.__setattr__(self, "seen", len(task.data))


@dataclass(frozen=True, kw_only=True)
class _MutatesGlobal(Behaviour):
    def finalize(self, task):
        next(iter(task.global_state.values())).add_(1.0)


@dataclass(frozen=True, kw_only=True)
class _MutatesData(Behaviour):
    def prepare(self, task):
        task.data.y[0] = (task.data.y[0] + 1) % task.num_classes


@dataclass(frozen=True, kw_only=True)
class _GlobalRng(Behaviour):
    """Draws from the global RNG instead of task.generator."""

    def finalize(self, task):
        with torch.no_grad():
            for p in task.model.parameters():
                p.add_(torch.randn(p.shape))


@dataclass(frozen=True, kw_only=True)
class _CarriesAcrossCalls(Behaviour):
    """A mutable default shared by every call: the second run differs from the first."""

    memory: list = None  # type: ignore[assignment]

    def __post_init__(self):
        object.__setattr__(self, "memory", [])

    def finalize(self, task):
        self.memory.append(1)
        with torch.no_grad():
            next(task.model.parameters()).view(-1)[0] += float(len(self.memory))


@dataclass(frozen=True, kw_only=True)
class _ClaimsVectorizable(Behaviour):
    def loss(self, model, x, y, task):
        return super().loss(model, x, y, task) * 2

    @classmethod
    def vectorizable(cls):
        return True


@dataclass(frozen=True, kw_only=True)
class _ShadowsOmniscient(Colluding):
    omniscient: bool = True

    def craft(self, U, malicious, generator, rule=None):
        return replace_rows(U, malicious, U[~malicious].mean(0))


class _NotADataclassInit(Behaviour):
    def __init__(self, strength=1.0):
        object.__setattr__(self, "strength", strength)


@dataclass(frozen=True, kw_only=True)
class _InPlaceCraft(Colluding):
    def craft(self, U, malicious, generator, rule=None):
        U[malicious] = 0.0
        return U


@dataclass(frozen=True, kw_only=True)
class _TouchesHonestRows(Colluding):
    def craft(self, U, malicious, generator, rule=None):
        return U * 2


@dataclass(frozen=True, kw_only=True)
class _LosesDtype(Colluding):
    def craft(self, U, malicious, generator, rule=None):
        return replace_rows(U, malicious, U.mean(0)).float()


@dataclass(frozen=True, kw_only=True)
class _UnseededCraft(Colluding):
    def craft(self, U, malicious, generator, rule=None):
        return replace_rows(U, malicious, torch.randn(U.shape[1], dtype=U.dtype, device=U.device))


@pytest.mark.parametrize("cls, message", [
    (_Stateful, "attributes changed"),
    (_MutatesGlobal, "global_state was modified"),
    (_MutatesData, "caller's data was modified"),
    (_GlobalRng, "same generator seed submit different models"),
    (_CarriesAcrossCalls, "same generator seed submit different models"),
])
def test_training_checks_fail_on_broken_behaviours(cls, message, factory):
    with pytest.raises(AssertionError, match=message):
        check_client_stages(cls(), factory)


@pytest.mark.parametrize("cls, message", [
    (_ClaimsVectorizable, "claims vectorizable"),
    (_ShadowsOmniscient, "'omniscient' must stay a class-level bool"),
    (_NotADataclassInit, "not fields"),
])
def test_declaration_checks_fail_on_broken_behaviours(cls, message):
    with pytest.raises(AssertionError, match=message):
        check_declaration(cls)


@pytest.mark.parametrize("cls, message", [
    (_InPlaceCraft, "U was modified in place"),
    (_TouchesHonestRows, "an honest row changed"),
    (_LosesDtype, "dtype/device changed"),
    (_UnseededCraft, "not deterministic"),
])
def test_craft_checks_fail_on_broken_attacks(cls, message):
    with pytest.raises(AssertionError, match=message):
        check_craft(cls())
