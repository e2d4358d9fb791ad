"""End-to-end federations on the bundled digits (inline engine unless stated)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from fedsec import load_scenario, run
from fedsec.plugins import PLUGINS, Plugin, register_plugin
from fedsec.results import read_run

QUICK = "experiments/quickstart.toml"
INLINE = 'run.engine="inline"'  # quickstart uses the default engine (ray)
ROW_KEYS = {"round", "clean_acc", "asr", "accepted", "malicious", "detection", "seconds", "sampled", "failed"}

if "test_interrupt" not in PLUGINS:

    @register_plugin("test_interrupt")
    class _Interrupt(Plugin):
        def __init__(self, *, at_round: int = 2):
            self.at_round = at_round

        def on_round_end(self, server_round, model, ctx):
            if server_round == self.at_round:
                raise KeyboardInterrupt


def small(tmp_path, *extra):
    return load_scenario(QUICK, [INLINE, "server.rounds=3", "data.num_clients=6", "client.epochs=2", *extra])


def test_inline_run_learns_and_writes_the_run_directory(tmp_path):
    s = small(tmp_path, "server.rounds=4")
    r = run(s, output=tmp_path)
    accs = [row["clean_acc"] for row in r.history]
    assert len(accs) == 4
    assert accs[-1] > r.summary["initial"]["clean_acc"] + 0.3, accs

    d = r.run_dir
    assert {p.name for p in d.iterdir()} >= {"scenario.toml", "metrics.jsonl", "summary.json",
                                               "model.safetensors", "curves.png"}
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        assert ROW_KEYS <= set(row)
        assert set(row["detection"]) == {"precision", "recall", "fpr"}
        assert row["accepted"] == list(range(6)) and row["malicious"] == []
    summary = json.loads((d / "summary.json").read_text())
    assert summary["final_clean_acc"] == pytest.approx(accs[-1])
    saved = load_file(d / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in r.model.state_dict().items())
    # the resolved scenario reproduces the run
    again = read_run(d)
    assert again["scenario"] == s and again["rows"] == rows


def test_same_seed_same_model_other_seed_differs(tmp_path):
    a = run(small(tmp_path, "server.rounds=2"), output=tmp_path).model.state_dict()
    b = run(small(tmp_path, "server.rounds=2"), output=tmp_path).model.state_dict()
    c = run(small(tmp_path, "server.rounds=2", "run.seed=1"), output=tmp_path).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_partial_participation_is_seeded_by_round(tmp_path):
    r = run(small(tmp_path, "server.fraction_train=0.5"), output=tmp_path)
    sampled = [row["sampled"] for row in r.history]
    assert all(len(s) == 3 for s in sampled)
    assert len({tuple(s) for s in sampled}) > 1
    r2 = run(small(tmp_path, "server.fraction_train=0.5"), output=tmp_path)
    assert [row["sampled"] for row in r2.history] == sampled


def test_failed_and_nonfinite_clients_never_reach_the_model(tmp_path):
    s = load_scenario(QUICK, [INLINE, 
        "server.rounds=3", "data.num_clients=6", "client.epochs=2",
        'attack=[{behaviour = "fault", partitions = [1]}, {behaviour = "fault", partitions = [4], params = {mode = "nan"}}]',
    ])
    r = run(s, output=tmp_path)
    for row in r.history:
        assert [f["partition"] for f in row["failed"]] == [1]
        assert "injected fault in partition 1" in row["failed"][0]["reason"]
        assert row["nonfinite"] == [4]
        assert 4 not in row["accepted"] and 1 not in row["accepted"]
        # only replies that arrived are judged: the NaN client is a true rejection
        assert row["detection"] == {"precision": 1.0, "recall": 1.0, "fpr": 0.0}
    assert all(torch.isfinite(v).all() for v in r.model.state_dict().values())
    assert r.history[-1]["clean_acc"] > r.summary["initial"]["clean_acc"] + 0.2


def test_interrupted_run_leaves_valid_files(tmp_path):
    s = load_scenario(QUICK, [INLINE, "server.rounds=4", "data.num_clients=4", "client.epochs=1",
                              'plugins=[{name = "test_interrupt", params = {at_round = 3}}]'])
    with pytest.raises(KeyboardInterrupt):
        run(s, output=tmp_path)
    (d,) = list(tmp_path.iterdir())
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [1, 2]
    assert load_scenario(d / "scenario.toml") == s
    assert not list(d.glob(".*.tmp"))


def test_flower_engine_matches_inline_bitwise(tmp_path):
    """Flower's own simulation runtime (Ray) and the inline grid give the same model."""
    base = ["server.rounds=2", "data.num_clients=4", "client.epochs=1", "server.fraction_train=0.75"]
    a = run(load_scenario(QUICK, base + ['run.engine="inline"']), output=tmp_path)
    b = run(load_scenario(QUICK, base + ['run.engine="flower"']), output=tmp_path)
    assert [r["sampled"] for r in a.history] == [r["sampled"] for r in b.history]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_round_where_every_update_is_nonfinite_keeps_the_global_model(tmp_path):
    s = load_scenario(QUICK, [INLINE, "server.rounds=3", "data.num_clients=4", "client.epochs=1",
                              'attack=[{behaviour = "fault", partitions = [0, 1, 2, 3], params = {mode = "inf"},'
                              ' start_round = 2, end_round = 2}]'])
    r = run(s, output=tmp_path)
    assert r.history[1]["accepted"] == [] and r.history[1]["nonfinite"] == [0, 1, 2, 3]
    assert r.history[1]["clean_acc"] == r.history[0]["clean_acc"]  # round 2 changed nothing
    assert r.history[2]["accepted"] == [0, 1, 2, 3]
    assert all(torch.isfinite(v).all() for v in r.model.state_dict().values())


def test_discovery_names_the_nodes_that_did_not_answer():
    """A node that stays silent past the timeout (a slow worker start) is reported as
    such, not as a wrong partition count."""
    from fedsec.federation.client import client_app
    from fedsec.federation.engines import LocalGrid, _server_context
    from fedsec.federation.server import discover

    _server_context()  # Flower's Message needs the sender identity the engines set

    class _Silent(LocalGrid):  # the last node's reply never arrives
        def send_and_receive(self, messages, *, timeout=None):
            return super().send_and_receive(messages, timeout=timeout)[:-1]

    toml_text = load_scenario(QUICK, [INLINE, "data.num_clients=3"]).to_toml()
    assert sorted(discover(LocalGrid(client_app, 3), toml_text, 3).values()) == [0, 1, 2]
    silent = _Silent(client_app, 3)
    last = list(silent.get_node_ids())[-1]  # discover messages nodes in this order
    with pytest.raises(RuntimeError, match=rf"only 2 of 3 nodes answered .* within 5s \(silent node ids: \[{last}\]\)"):
        discover(silent, toml_text, 3, timeout=5)
