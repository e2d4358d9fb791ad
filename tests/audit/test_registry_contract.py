"""The DETECTORS registry contract and the JSON verdict every detector returns."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import nn

from fedsec.audit import DETECTORS, AuditResult, AuditTarget, Detector, get_detector, register_detector
from fedsec.audit.base import removal_figures
from fedsec.data import TensorData

BUILT_IN = {"neural_cleanse": "model", "fine_pruning": "model", "activation_clustering": "data",
            "spectral_signatures": "data", "frequency": "data"}
TINY = {"neural_cleanse": {"passes": 2}, "fine_pruning": {"epochs": 1}, "activation_clustering": {"reduce": "pca"},
        "spectral_signatures": {}, "frequency": {"epochs": 1, "copies": 1}}


def test_built_ins_are_registered_with_their_kind():
    assert {n: DETECTORS.get(n).kind for n in DETECTORS.names()} == BUILT_IN


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_detector_is_frozen_kw_only_and_rejects_unknown_keys(name):
    cls = DETECTORS.get(name)
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    det = cls()
    assert det.name == name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(det, dataclasses.fields(det)[0].name, 1)
    with pytest.raises(TypeError, match="keyword arguments only"):
        cls(1)
    with pytest.raises(TypeError, match=rf"{name}: unknown parameter 'nope'.*valid:"):
        cls(nope=1)
    json.dumps(det.params())  # hyperparameters are reportable


def test_unknown_and_duplicate_names_are_errors():
    with pytest.raises(KeyError, match="unknown audit detector 'neural_clense'.*did you mean 'neural_cleanse'"):
        get_detector("neural_clense")
    with pytest.raises(ValueError, match="already registered"):
        @register_detector("frequency")
        @dataclasses.dataclass(frozen=True, kw_only=True)
        class Again(Detector):
            pass


def test_register_requires_a_frozen_detector_dataclass():
    with pytest.raises(TypeError, match="subclass"):
        register_detector("x_not_a_detector")(object)

    class Loose(Detector):
        pass

    with pytest.raises(TypeError, match="frozen=True"):
        register_detector("x_loose")(Loose)


def test_audit_result_validates_and_serialises():
    r = AuditResult(flagged=True, score=float("inf"), target=3,
                    figures={"t": torch.tensor([1.5, float("nan")]), "n": torch.tensor(2).item(), "nested": (1, 2)},
                    detector="x")
    d = json.loads(r.to_json())
    assert d == {"detector": "x", "flagged": True, "score": None, "target": 3,
                 "figures": {"t": [1.5, None], "n": 2, "nested": [1, 2]}}
    with pytest.raises(TypeError, match="flagged"):
        AuditResult(flagged=1, score=0.0)
    with pytest.raises(TypeError, match="target"):
        AuditResult(flagged=False, score=0.0, target=-1)
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        AuditResult(flagged=False, score=0.0, figures={"m": nn.Linear(1, 1)})


def test_removal_figures_hand_worked():
    removed = torch.tensor([True, True, False, False, True])
    poisoned = torch.tensor([True, False, False, True, True])
    f = removal_figures(removed, poisoned)
    assert f["removed"] == [0, 1, 4] and f["recall"] == pytest.approx(2 / 3)
    assert f["clean_removed"] == pytest.approx(1 / 2) and f["precision"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_detector_returns_a_json_verdict(name):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(120, 1, 8, 8, generator=g)
    y = torch.arange(120) % 4
    data = TensorData(x, y)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 4))
    t = AuditTarget(model=model, clean=data, data=data, num_classes=4, in_shape=(1, 8, 8), generator=g,
                    poisoned=torch.zeros(120, dtype=torch.bool))
    r = get_detector(name, **TINY[name]).audit(t)
    assert isinstance(r, AuditResult) and r.detector == name
    d = json.loads(r.to_json())
    assert set(d) == {"detector", "flagged", "score", "target", "figures"}
    assert isinstance(d["flagged"], bool) and (d["score"] is None or math.isfinite(d["score"]))
    assert d["target"] is None or 0 <= d["target"] < 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_detector_runs_on_cuda(name):
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.rand(120, 1, 8, 8, generator=g), torch.arange(120) % 4)
    dev = torch.device("cuda")
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 4)).to(dev)
    t = AuditTarget(model=model, clean=data, data=data, num_classes=4, in_shape=(1, 8, 8), generator=g, device=dev)
    json.loads(get_detector(name, **TINY[name]).audit(t).to_json())
