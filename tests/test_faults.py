"""Fault injection under every rule: bad replies are counted with their reason, the run
completes, and the global model stays finite.

Faulty clients use the ``fault`` behaviour (a real client that raises, or sends NaN, inf,
1e30, a tensor of the wrong shape or dtype, a missing or an extra tensor, or zero examples).
CI runs every rule with 30% faulty clients and a few rules at 10% and 49%; the slow suite
runs every rule and pre-aggregator at every fraction.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedsec import load_scenario, run
from fedsec.strategies import AGGREGATORS, PRE_AGGREGATORS

QUICK = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.toml"
MODES = ["raise", "nan", "shape", "huge", "dtype", "inf", "missing", "extra", "zero_examples"]
REJECTED = {"raise": "client error", "shape": "array", "dtype": "array", "missing": "array names",
            "extra": "array names", "zero_examples": "num-examples"}
PARAMS = {"krum": {"f": 1}, "multikrum": {"f": 1}, "bulyan": {"f": 1}, "mda": {"f": 1}, "trimmed_mean": {"f": 1}}


def _run(tmp_path, n: int, k: int, rule: str, pre: str | None = None):
    attack = ", ".join(f'{{behaviour="fault", partitions=[{i}], params={{mode="{MODES[i % len(MODES)]}"}}}}'
                       for i in range(k))
    params = PARAMS.get(rule, {})
    sets = ['run.engine="inline"', f"data.num_clients={n}", "server.rounds=1", "client.epochs=1",
            'data.partitioner="iid"', f'run.output="{tmp_path}"', f'server.aggregator="{rule}"',
            "server.aggregator_params={" + ", ".join(f"{a}={b}" for a, b in params.items()) + "}",
            f"attack=[{attack}]"]
    if pre:
        sets.append(f'server.pre_aggregators=[{{name="{pre}"}}]')
    return run(load_scenario(QUICK, sets))


def _check(result, k: int) -> None:
    (row,) = result.history
    failed = {f["partition"]: f["reason"] for f in row["failed"]}
    for i in range(k):
        mode = MODES[i % len(MODES)]
        if mode in REJECTED:
            assert REJECTED[mode] in failed.get(i, ""), (mode, failed)
        elif mode in ("nan", "inf"):
            assert i in row["nonfinite"] and i not in row["accepted"], (mode, row)
    assert not set(failed) & set(row["accepted"])
    for v in result.model.state_dict().values():
        assert bool(torch.isfinite(v.float()).all()), "the global model became non-finite"
    if "aggregation_error" not in row:
        assert row["accepted"], "the rule aggregated but accepted nobody"


@pytest.mark.parametrize("rule", AGGREGATORS.names())
def test_every_rule_survives_30_percent_faulty_clients(tmp_path, rule):
    _check(_run(tmp_path, 10, 3, rule), 3)


@pytest.mark.parametrize("rule, k", [("mean", 1), ("median", 4), ("krum", 4), ("flame", 4)])
def test_one_and_49_percent(tmp_path, rule, k):
    _check(_run(tmp_path, 10 if k == 4 else 10, k, rule), k)


@pytest.mark.slow
@pytest.mark.parametrize("rule", AGGREGATORS.names())
@pytest.mark.parametrize("n, k", [(100, 1), (10, 3), (100, 49)])
def test_every_rule_every_fraction(tmp_path, rule, n, k):
    _check(_run(tmp_path, n, k, rule), k)


@pytest.mark.slow
@pytest.mark.parametrize("pre", PRE_AGGREGATORS.names())
@pytest.mark.parametrize("rule", ["mean", "median", "krum", "trimmed_mean"])
def test_pre_aggregators_with_faulty_clients(tmp_path, pre, rule):
    _check(_run(tmp_path, 10, 4, rule, pre), 4)


def test_a_rule_that_cannot_decide_leaves_the_model_unchanged(tmp_path):
    """Bulyan with f=2 needs 11 clients; with 10 replies the round is recorded, not fatal."""
    s = load_scenario(QUICK, ['run.engine="inline"', "data.num_clients=10", "server.rounds=1", "client.epochs=1",
                              f'run.output="{tmp_path}"', 'server.aggregator="bulyan"',
                              "server.aggregator_params={f=2}"])
    r = run(s)
    (row,) = r.history
    assert "Bulyan needs" in row["aggregation_error"] and row["accepted"] == []
    assert row["clean_acc"] == r.summary["initial"]["clean_acc"]


def test_a_straggler_replies_late_with_the_honest_update(tmp_path):
    """mode "slow" changes only when the reply arrives, not what it holds."""
    from fedsec.clients.faults import Fault

    base = ['run.engine="inline"', "data.num_clients=3", "server.rounds=1", "client.epochs=1",
            f'run.output="{tmp_path}"']
    honest = run(load_scenario(QUICK, base))
    slow = run(load_scenario(QUICK, base + [
        'attack=[{behaviour="fault", partitions=[1], params={mode="slow", seconds=0.2}}]']))
    sa, sb = honest.model.state_dict(), slow.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert slow.history[0]["failed"] == []
    with pytest.raises(ValueError, match="seconds: got -1"):
        Fault(mode="slow", seconds=-1)
