"""fedsec.testing over the project's own registries, and its checks catching broken components."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from fedsec.plugins import PLUGINS, Plugin
from fedsec.strategies import AGGREGATORS, AggregationResult, Aggregator
from fedsec.testing import check_aggregator, check_plugin, check_pre_aggregator

# Cheap settings for rules whose defaults need more clients than the check's 12.
RULE_PARAMS: dict[str, dict] = {"krum": {"f": 2}, "multikrum": {"f": 2}, "bulyan": {"f": 2},
                                "trimmed_mean": {"f": 2}, "mda": {"f": 2}, "meamed": {"f": 2}}
# Plugins whose hooks train or distil for minutes run the construction checks only here;
# their behaviour is tested in tests/plugins/ and tests/audit/.
HEAVY_PLUGINS = {"abd", "watermark", "neural_cleanse", "fine_pruning", "bitflip_deploy",
                 "activation_clustering", "spectral_signatures", "frequency", "tensorboard"}


@pytest.mark.parametrize("name", AGGREGATORS.names())
def test_every_rule_conforms(name):
    check_aggregator(AGGREGATORS.get(name), RULE_PARAMS.get(name, {}))


def test_every_pre_aggregator_conforms():
    import fedsec.strategies as s

    for name in s.PRE_AGGREGATORS.names():
        check_pre_aggregator(s.PRE_AGGREGATORS.get(name))


@pytest.mark.parametrize("name", PLUGINS.names())
def test_every_plugin_conforms(name):
    try:
        PLUGINS.get(name)()
    except Exception as e:  # an optional tracker whose package is not installed
        if "not installed" in str(e):
            pytest.skip(str(e))
    check_plugin(PLUGINS.get(name), run_hooks=name not in HEAVY_PLUGINS)


# -- the checks can fail ------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class _InPlace(Aggregator):
    def aggregate(self, U, weights, *, generator=None, rows=None):
        U.mul_(1.0)  # harmless value, but writes U: the base passes a view of finite rows
        U[0, 0] += 1.0
        return AggregationResult(vector=U.mean(0), accepted=torch.ones(len(U), dtype=torch.bool))


@dataclass(frozen=True, kw_only=True)
class _Random(Aggregator):
    def aggregate(self, U, weights, *, generator=None, rows=None):
        return AggregationResult(vector=U.mean(0) + torch.randn(U.shape[1], dtype=U.dtype),
                                 accepted=torch.ones(len(U), dtype=torch.bool))


@dataclass(frozen=True, kw_only=True)
class _WrongShape(Aggregator):
    def aggregate(self, U, weights, *, generator=None, rows=None):
        return AggregationResult(vector=U.mean(0)[:-1], accepted=torch.ones(len(U), dtype=torch.bool))


@pytest.mark.parametrize("bad, fragment", [(_InPlace, "in place"), (_Random, "deterministic"),
                                           (_WrongShape, "vector shape")])
def test_check_aggregator_catches(bad, fragment):
    with pytest.raises(AssertionError, match=fragment):
        check_aggregator(bad)


class _Chatty(Plugin):
    def __init__(self, **kw):
        if kw:
            raise TypeError(f"unknown {sorted(kw)}")

    def on_run_end(self, model, ctx):
        return {"noise": float(torch.rand(1))}


class _NotJson(Plugin):
    def on_run_end(self, model, ctx):
        return {"model": model}


def test_check_plugin_catches():
    with pytest.raises(AssertionError, match="different figures"):
        check_plugin(_Chatty)
    with pytest.raises(AssertionError, match="unknown-parameter|accepted"):
        check_plugin(_NotJson)
