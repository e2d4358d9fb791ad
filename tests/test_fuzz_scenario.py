"""Hypothesis-generated scenarios: a valid plan or a ScenarioError naming fields, nothing else.

Scenarios are drawn around valid ones: each field kept, replaced by a value of the wrong type
or range, by an unknown registry name, or joined by an unknown key. Valid ones on the bundled
digits are also partitioned (the plan a run would execute).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsec.scenario import Scenario, ScenarioError

SECTIONS = {
    "data": {"dataset": ["digits", "digitz", "mnist", 3], "num_clients": [2, 4, 20, 1, 0, -3, "x", 2.5],
             "partitioner": ["iid", "dirichlet", "shards", "zipf", 1], "alpha": [0.1, 1.0, 0.0, -1, "a"],
             "shards_per_client": [1, 2, 0, "2"], "partitioner_params": [{}, {"bogus": 1}, 5]},
    "model": {"name": ["cnn", "mlp", "resnet", 7], "params": [{}, {"width": 8}, {"nope": 1}, "x"],
              "init": ["", "/no/such/file.safetensors", 3]},
    "client": {"epochs": [1, 0, -1, 1.5], "batch_size": [32, 0, "big"], "lr": [0.05, 0, -1, "x"],
               "momentum": [0.9, 1.0, -0.1], "weight_decay": [0.0, -1.0]},
    "server": {"rounds": [1, 3, 0, "3"], "fraction_train": [1.0, 0.5, 0.0, 1.5],
               "aggregator": ["mean", "krum", "krumm", None], "aggregator_params": [{}, {"f": 1}, {"f": -1}, {"zz": 1}],
               "server_lr": [1.0, 0.0, -2], "root_size": [0, 50, -1],
               "pre_aggregators": [[], [{"name": "nnm"}], [{"name": "nope"}], [{"params": {}}], "x"]},
    "run": {"seed": [0, 7, "s"], "engine": ["inline", "ray", "warp"], "device": ["cpu", "gpu", "cuda:0"],
            "threads": [1, 0], "checkpoint_every": [0, 5, -1], "imports": [[], ["no_such_mod_qq"], "x", [3]]},
}
ATTACKS = [[], [{"behaviour": "badnets", "partitions": [0]}], [{"behaviour": "badnet", "partitions": [0]}],
           [{"behaviour": "alie", "partitions": [0, 0]}], [{"behaviour": "dba", "partitions": [99]}],
           [{"behaviour": "badnets", "partitions": [0], "params": {"target": -1}}],
           [{"behaviour": "badnets", "partitions": [0], "start_round": 3, "end_round": 1}],
           [{"partitions": [0]}], "oops"]
PLUGINS = [[], [{"name": "watermark"}], [{"name": "watermrk"}], [{"name": "abd", "params": {"steps": -1}}]]
FIELD = re.compile(r"^(scenario|name|data|model|client|server|run|attack|plugins|run\.imports|--import)\b")


@st.composite
def raw_scenarios(draw):
    raw: dict = {}
    for section, fields in SECTIONS.items():
        if draw(st.booleans()):
            continue
        table = {}
        for key, values in fields.items():
            if draw(st.integers(0, 3)) == 0:
                table[key] = draw(st.sampled_from(values))
        if draw(st.integers(0, 9)) == 0:
            table[draw(st.sampled_from(["rouns", "epoch", "seeed", "x"]))] = 1
        raw[section] = table if draw(st.integers(0, 19)) else draw(st.sampled_from([3, "x", [1]]))
    if draw(st.booleans()):
        raw["attack"] = draw(st.sampled_from(ATTACKS))
    if draw(st.integers(0, 3)) == 0:
        raw["plugins"] = draw(st.sampled_from(PLUGINS))
    if draw(st.integers(0, 9)) == 0:
        raw["name"] = draw(st.sampled_from(["ok", "", "a/b", 5]))
    return raw


def _check(raw: dict) -> None:
    try:
        s = Scenario.from_dict(raw)
    except ScenarioError as e:
        assert e.errors, "a ScenarioError must list its problems"
        for msg in e.errors:
            assert FIELD.match(msg), f"error does not start with a field path: {msg!r}"
        return
    assert isinstance(s, Scenario)
    assert Scenario.from_dict(__import__("tomllib").loads(s.to_toml())) == s  # the plan round-trips
    if s.data.dataset == "digits":
        from fedsec.federation.env import partitions_of

        try:
            parts = partitions_of(s)
        except ScenarioError as e:  # e.g. an unsatisfiable split: named, not a crash
            assert all(FIELD.match(m) for m in e.errors), e.errors
        else:
            assert len(parts) == s.data.num_clients


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_scenarios())
def test_fuzzed_scenarios_fail_only_with_named_fields(raw):
    _check(raw)


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_scenarios())
def test_fuzzed_scenarios_many(raw):
    _check(raw)
