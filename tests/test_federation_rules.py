"""The server side of a federation: pre-aggregators, FLTrust's root set, omniscient attackers
given the server's rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedsec import load_scenario, run

QUICK = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.toml"


def small(tmp_path, *extra):
    return load_scenario(QUICK, ['run.engine="inline"', "server.rounds=2", "data.num_clients=6", "client.epochs=1",
                                 f'run.output="{tmp_path}"', *extra])


def test_pre_aggregators_compose_with_the_rule(tmp_path):
    s = small(tmp_path, 'server.aggregator="krum"', "server.aggregator_params={f=1}",
              'server.pre_aggregators=[{name="nnm", params={f=1}}, {name="arc", params={f=1}}]')
    assert [p.name for p in s.server.pre_aggregators] == ["nnm", "arc"]
    r = run(s)
    assert len(r.history) == 2
    for row in r.history:
        # NNM mixes each row with its n - f nearest neighbours, so Krum's one pick accepts
        # exactly the n - f = 5 clients in that row
        assert len(row["accepted"]) == 5 and set(row["accepted"]) <= set(range(6))
    text = (r.run_dir / "scenario.toml").read_text()
    assert 'pre_aggregators = [{name = "nnm"' in text  # the resolved scenario re-runs it


def test_unknown_pre_aggregator_is_a_scenario_error():
    from fedsec.scenario import ScenarioError

    with pytest.raises(ScenarioError, match=r"server.pre_aggregators\[0\].name: got 'nmm'.*did you mean 'nnm'"):
        load_scenario(QUICK, ['server.pre_aggregators=[{name="nmm"}]'])


def test_fltrust_root_set_is_held_out_of_evaluation(tmp_path):
    from fedsec.federation.federation import Federation

    s = small(tmp_path, 'server.aggregator="fltrust"', "server.root_size=50")
    fed = Federation(s)
    assert len(fed.root_set) == 50 and len(fed.eval_set) == len(fed.data.test) - 50
    root = {tuple(x.flatten().tolist()) for x in fed.root_set.x}
    assert not any(tuple(x.flatten().tolist()) in root for x in fed.eval_set.x[:200])
    r = run(s)
    assert all(row["failed"] == [] for row in r.history)
    assert all(row["accepted"] for row in r.history)  # the reference let clients through


def test_fltrust_defaults_to_a_100_example_root_set():
    s = load_scenario(QUICK, ['server.aggregator="fltrust"'])
    assert s.server.root_examples() == 100
    assert load_scenario(QUICK).server.root_examples() == 0


def test_adaptive_attack_receives_the_servers_rule(tmp_path):
    """An omniscient attack's craft gets the rule the server runs (here Krum behind NNM)."""
    from fedsec.federation.federation import Federation, build_rule

    s = small(tmp_path, 'server.aggregator="krum"', "server.aggregator_params={f=1}",
              'server.pre_aggregators=[{name="nnm", params={f=1}}]',
              'attack=[{behaviour="alie", partitions=[0], params={z=1.0}}]')
    fed = Federation(s)
    seen = []
    (a, b), = fed.adversaries
    orig = type(b).craft

    def spy(self, U, malicious, generator, rule=None):
        seen.append(rule)
        return orig(self, U, malicious, generator, rule)

    type(b).craft = spy
    try:
        import torch

        U = torch.randn(6, 10)
        fed._adversary(1, U, list(range(6)), torch.Generator())
    finally:
        type(b).craft = orig
    assert seen and seen[0] is fed.rule
    assert type(build_rule(s)).__name__ == type(fed.rule).__name__


def test_summary_reports_the_no_attack_reference(tmp_path):
    clean = run(small(tmp_path / "clean"))
    attacked = run(small(tmp_path / "attacked", f'run.reference_run="{clean.run_dir}"',
                         'attack=[{behaviour="sign_flip", partitions=[0, 1, 2]}]'))
    ref = attacked.summary["reference"]
    assert ref["final_clean_acc"] == clean.summary["final_clean_acc"]
    assert attacked.summary["clean_acc_drop"] == pytest.approx(
        clean.summary["final_clean_acc"] - attacked.summary["final_clean_acc"])
    from fedsec.scenario import ScenarioError

    with pytest.raises(ScenarioError, match="run.reference_run"):
        small(tmp_path, f'run.reference_run="{tmp_path / "nope"}"')
