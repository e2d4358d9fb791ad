"""Deployment mode: nodes that come and go, partition ids that are not 0..N-1, a node's own
data file, and a real SuperLink with 4 SuperNodes as separate OS processes on loopback.

The in-process tests drive the Federation on a ``LocalGrid`` whose nodes can vanish
(as a SuperLink stops listing a node whose heartbeat stopped); the slow test runs
Flower 1.41's own ``flower-superlink`` / ``flower-supernode`` / ``flwr run`` as a user
would (docs/deployment.md), with a throw-away ``FLWR_HOME``, private loopback ports,
and kills every process it started, whatever happens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fedsec import load_scenario, run
from fedsec.federation.deployment import NodeDataError, export_partitions, node_data, read_node_data
from tests.test_flwr_run import _alive, _ansi_free, _free_port

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "experiments" / "quickstart.toml"
VENV_BIN = Path(sys.executable).parent
BASE = ['run.engine="inline"', "data.num_clients=4", "client.epochs=1", "server.rounds=3"]


# -- a LocalGrid whose nodes can vanish --------------------------------------------------------------
def _grid_with(partitions: list[int], num_clients: int, *, lose: int | None = None, after_round: int = 1,
               node_config: dict[int, dict] | None = None):
    """LocalGrid over nodes holding ``partitions``; the node of partition ``lose`` stops answering
    in round ``after_round + 1`` (its train message gets no reply) and is no longer listed after."""
    from flwr.app import Context, RecordDict

    from fedsec.federation.client import client_app
    from fedsec.federation.engines import LocalGrid, _server_context, node_id_of

    class Grid(LocalGrid):
        rounds_seen = 0
        gone: set[int] = set()

        def get_node_ids(self):
            return [n for n in self.contexts if n not in self.gone]

        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            if messages and messages[0].metadata.message_type == "train":
                self.rounds_seen += 1
            lost = node_id_of(lose) if lose is not None else None
            if lost is not None and self.rounds_seen > after_round and messages[0].metadata.message_type == "train":
                self.gone.add(lost)
            live = [m for m in messages if m.metadata.dst_node_id not in self.gone]
            return super().send_and_receive(live, timeout=timeout)

    _server_context()
    g = Grid(client_app, num_clients)
    g.contexts = {node_id_of(p): Context(run_id=1, node_id=node_id_of(p),
                                         node_config={"partition-id": p, "num-partitions": num_clients,
                                                      **(node_config or {}).get(p, {})},
                                         state=RecordDict(), run_config={})
                  for p in partitions}
    return g


def _run_on(grid, scenario, tmp_path):
    from fedsec.federation.server import run_server

    return run_server(grid, scenario, output=tmp_path)


def test_a_node_lost_mid_run_is_a_failed_client_and_the_run_goes_on(tmp_path):
    s = load_scenario(QUICK, BASE + ["server.min_nodes=3", 'attack=[{behaviour = "badnets", partitions = [1]}]'])
    r = _run_on(_grid_with([0, 1, 2, 3], 4, lose=3, after_round=1), s, tmp_path)
    rows = [json.loads(x) for x in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["round"] for x in rows] == [1, 2, 3]
    assert rows[0]["sampled"] == [0, 1, 2, 3] and rows[0]["failed"] == []
    # Round 2: the node was sampled while still listed, its reply never came: failed, not a hang.
    assert rows[1]["sampled"] == [0, 1, 2, 3]
    assert [f["partition"] for f in rows[1]["failed"]] == [3]
    assert "no reply" in rows[1]["failed"][0]["reason"]
    assert rows[1]["accepted"] == [0, 1, 2]
    # Round 3: sampled among the three nodes still connected (server.min_nodes = 3).
    assert rows[2]["sampled"] == [0, 1, 2] and rows[2]["failed"] == []
    assert all(x["malicious"] == [1] for x in rows)
    assert json.loads((r.run_dir / "summary.json").read_text())["rounds"] == 3


def test_below_min_nodes_the_round_waits_then_stops_with_a_clear_error(tmp_path):
    from fedsec.federation.discovery import DiscoveryError

    s = load_scenario(QUICK, BASE + ["server.min_nodes=4", "server.wait_timeout=1"])
    with pytest.raises(DiscoveryError, match=r"round 3: only 3 of 4 nodes connected after 1s"):
        _run_on(_grid_with([0, 1, 2, 3], 4, lose=3, after_round=1), s, tmp_path)


def test_partition_ids_need_not_be_0_to_n_minus_1(tmp_path):
    """Nodes holding partitions 1, 4 and 5 of 6: the server samples among those."""
    s = load_scenario(QUICK, BASE[:1] + ["data.num_clients=6", "client.epochs=1", "server.rounds=2",
                                         "server.min_nodes=3", "server.fraction_train=0.67"])
    r = _run_on(_grid_with([1, 4, 5], 6), s, tmp_path)
    for row in r.history:
        assert set(row["sampled"]) <= {1, 4, 5} and len(row["sampled"]) == 2 and row["failed"] == []


def test_waits_for_min_nodes_then_names_the_shortfall(tmp_path):
    from fedsec.federation.discovery import DiscoveryError

    s = load_scenario(QUICK, BASE + ["server.min_nodes=3", "server.wait_timeout=0.5"])
    with pytest.raises(DiscoveryError, match=r"only 2 of 3 nodes connected after 0.5s .*server.min_nodes = 3"):
        _run_on(_grid_with([0, 2], 4), s, tmp_path)


@pytest.mark.parametrize("partitions, config, match", [
    ([0, 7], {}, r"node \d+ reports partition-id 7, expected 0..3 \(data.num_clients = 4\)"),
    ([0, 1], {1: {"num-partitions": 9}}, r"reports num-partitions 9, but data.num_clients = 4"),
])
def test_discovery_rejects_partitions_the_scenario_does_not_have(tmp_path, partitions, config, match):
    from fedsec.federation.discovery import DiscoveryError

    s = load_scenario(QUICK, BASE + ["server.min_nodes=2"])
    with pytest.raises(DiscoveryError, match=match):
        _run_on(_grid_with(partitions, 4, node_config=config), s, tmp_path)


def test_two_nodes_claiming_one_partition_is_an_error():
    from flwr.app import Context, RecordDict

    from fedsec.federation.discovery import DiscoveryError, Roster

    g = _grid_with([0, 1], 4)
    g.contexts[42] = Context(run_id=1, node_id=42, node_config={"partition-id": 1}, state=RecordDict(),
                             run_config={})
    toml = load_scenario(QUICK, BASE).to_toml()
    with pytest.raises(DiscoveryError, match=r"nodes \d+ and \d+ both hold partition 1"):
        Roster(toml, 4, min_nodes=2, timeout=5).wait(g)


def test_min_nodes_is_validated():
    from fedsec.scenario import ScenarioError

    with pytest.raises(ScenarioError) as e:
        load_scenario(QUICK, ["data.num_clients=4", "server.min_nodes=5", "server.wait_timeout=0",
                              "server.round_timeout=-1"])
    msgs = e.value.errors
    assert any(m.startswith("server.min_nodes: got 5, expected at most data.num_clients = 4") for m in msgs)
    assert any(m.startswith("server.wait_timeout: got 0.0") for m in msgs)
    assert any(m.startswith("server.round_timeout: got -1.0") for m in msgs)


def test_collect_turns_a_missing_reply_into_a_failed_client():
    from flwr.app import ConfigRecord, Message, MessageType, RecordDict

    from fedsec.federation.discovery import NODE_UNAVAILABLE, collect
    from fedsec.federation.engines import node_id_of

    g = _grid_with([0, 1], 2, lose=1, after_round=0)
    msgs = [Message(RecordDict({"config": ConfigRecord({"scenario": load_scenario(QUICK, BASE[:2]).to_toml()})}),
                    node_id_of(p), MessageType.QUERY) for p in (0, 1)]
    g.rounds_seen = 5  # past after_round, but a query is not a train message: nothing is lost yet
    replies = collect(g, msgs, timeout=2.0)
    assert len(replies) == 2 and not any(r.has_error() for r in replies)
    g.gone.add(node_id_of(1))
    replies = collect(g, msgs, timeout=2.0)
    bad = [r for r in replies if r.has_error()]
    assert len(bad) == 1 and bad[0].metadata.src_node_id == node_id_of(1)
    assert bad[0].error.code == NODE_UNAVAILABLE and "no reply within 2s" in bad[0].error.reason


def test_an_unavailable_node_reported_by_the_superlink_is_charged_to_its_partition():
    """Flower's SuperLink answers for a node whose heartbeat stopped with an error sent as
    itself (node 1); collect re-addresses it to the node, so ``failed`` names the partition."""
    from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict

    from fedsec.federation.discovery import NODE_UNAVAILABLE, collect
    from fedsec.federation.engines import node_id_of

    g = _grid_with([0, 1], 2)

    class Link(type(g)):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            ok = super().send_and_receive(messages[:1], timeout=timeout)
            gone = Message(Error(code=NODE_UNAVAILABLE, reason="Node Unavailable (heartbeat)"), reply_to=messages[1])
            gone.metadata.__dict__["_src_node_id"] = 1  # as the SuperLink sends it
            return [*ok, gone]

    g.__class__ = Link
    toml = load_scenario(QUICK, BASE[:2]).to_toml()
    msgs = [Message(RecordDict({"config": ConfigRecord({"scenario": toml})}), node_id_of(p), MessageType.QUERY)
            for p in (0, 1)]
    replies = collect(g, msgs)
    bad = [r for r in replies if r.has_error()]
    assert len(replies) == 2 and len(bad) == 1
    assert bad[0].metadata.src_node_id == node_id_of(1) and "heartbeat" in bad[0].error.reason


# -- a node's own data file ----------------------------------------------------------------------------
def test_node_with_its_own_file_trains_exactly_as_on_its_partition(tmp_path):
    """A node given its exported partition file (data-path) gives the bitwise-same run as one
    that takes its rows of the named dataset."""
    s = load_scenario(QUICK, BASE[:3] + ["server.rounds=2", "server.min_nodes=4"])
    files = export_partitions(s, tmp_path / "parts")
    assert [f.name for f in files] == [f"partition-{i}.safetensors" for i in range(4)]
    packed, meta = read_node_data(files[2])
    assert packed.codes.dtype.name == "uint8" and meta["dataset"] == "digits"  # digits: 0..16 ink, exact
    a = _run_on(_grid_with([0, 1, 2, 3], 4), s, tmp_path / "a")
    b = _run_on(_grid_with([0, 1, 2, 3], 4, node_config={2: {"data-path": str(files[2])}}), s, tmp_path / "b")
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_node_data_file_must_fit_the_scenario(tmp_path):
    s = load_scenario(QUICK, BASE)
    files = export_partitions(s, tmp_path)
    with pytest.raises(NodeDataError, match=r"written for partition 0, but this node's partition-id is 3"):
        node_data(s, {"partition-id": 3, "data-path": str(files[0])})
    other = s.replace(**{"data.dataset": "digits_scenes"})
    with pytest.raises(NodeDataError, match=r"holds dataset 'digits', but the scenario's data.dataset is 'digits_scenes'"):
        node_data(other, {"partition-id": 0, "data-path": str(files[0])})
    with pytest.raises(NodeDataError, match=r"data-path '.*nope.safetensors': No such file"):
        node_data(s, {"partition-id": 0, "data-path": str(tmp_path / "nope.safetensors")})
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(NodeDataError, match=r"not a readable node data file"):
        node_data(s, {"partition-id": 0, "data-path": str(junk)})
    assert node_data(s, {"partition-id": 0}) is None  # a partition-id node reads the named dataset


# -- a real SuperLink and SuperNodes ------------------------------------------------------------------------
def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill_tree(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """``proc``, its process group and every descendant (SuperExec, ServerApp/ClientApp processes)."""
    pids = [proc.pid, *_descendants(proc.pid)]
    try:
        os.killpg(proc.pid, sig)  # each process we start leads its own group
    except (ProcessLookupError, PermissionError):
        pass
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _rows(out: Path) -> list[dict]:
    files = list(out.glob("*/metrics.jsonl"))
    if not files:
        return []
    return [json.loads(x) for x in files[0].read_text().splitlines() if x.strip()]


# 134-205 s on 2 loaded cores: Flower starts a fresh ClientApp process (torch import, data)
# for every message, and a SIGKILLed node is declared unavailable only after its heartbeat lapses (~60 s).
@pytest.mark.slow
@pytest.mark.skipif(not (VENV_BIN / "flower-superlink").exists(), reason="no Flower binaries next to the interpreter")
def test_real_superlink_and_supernodes_survive_a_killed_node(tmp_path):
    flwr_home, out = tmp_path / "flwr-home", tmp_path / "runs"
    flwr_home.mkdir()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the FAB must be self-contained
    env.update(FLWR_HOME=str(flwr_home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
               OMP_NUM_THREADS="1", PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    # Node 2 holds only its own file (data-path); the others take their rows of the named dataset.
    s = load_scenario(QUICK, ["data.num_clients=4"])
    part2 = export_partitions(s, tmp_path / "parts")[2]
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "lab"\n\n[superlink.lab]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
    procs: list[subprocess.Popen] = []
    logs = {}

    def start(name: str, cmd: list[str], cwd: Path = tmp_path) -> subprocess.Popen:
        logs[name] = open(tmp_path / f"{name}.log", "w")
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=logs[name], stderr=subprocess.STDOUT,
                             start_new_session=True)
        procs.append(p)
        return p

    t0 = time.time()
    try:
        start("superlink", [str(VENV_BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
                            "--port", str(port), "--disable-runtime-dependency-installation"])
        nodes = []
        for i in range(4):
            cfg = f"partition-id={i} num-partitions=4" + (f' data-path="{part2}"' if i == 2 else "")
            nodes.append(start(f"supernode{i}", [
                str(VENV_BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}",
                "--port", str(_free_port()), "--node-config", cfg]))
        overrides = ("data.num_clients=4;server.rounds=3;client.epochs=1;server.min_nodes=3;"
                     'server.round_timeout=300;attack=[{behaviour = "badnets", partitions = [1]}]')
        # `flwr run .` builds the app (FAB) from the repo, so it runs there.
        runner = start("flwr-run", [
            str(VENV_BIN / "flwr"), "run", ".", "lab", "--stream", "--run-config",
            f'scenario="{QUICK}" overrides=\'{overrides}\' output="{out}"'], cwd=REPO)
        # Kill node 3 (SuperNode, its SuperExec and ClientApp: a machine lost) once round 1 is recorded.
        deadline = time.time() + 600
        while len(_rows(out)) < 1:
            assert runner.poll() is None, (tmp_path / "flwr-run.log").read_text()[-4000:]
            assert time.time() < deadline, "round 1 never finished"
            time.sleep(1)
        _kill_tree(nodes[3])
        runner.wait(timeout=max(deadline - time.time(), 1))
        log = _ansi_free((tmp_path / "flwr-run.log").read_text())
        rows = _rows(out)
        assert [r["round"] for r in rows] == [1, 2, 3], log[-4000:]
        assert "fedsec: final clean accuracy" in log, log[-4000:]
        assert rows[0]["sampled"] == [0, 1, 2, 3] and rows[0]["failed"] == []
        failed = [(r["round"], f["partition"], f["reason"]) for r in rows for f in r["failed"]]
        assert failed and {p for _, p, _ in failed} == {3}, failed
        # Partition 3 fails in the round it was lost, and is no longer sampled once gone.
        assert 3 not in rows[-1]["sampled"] or rows[-1]["failed"], rows[-1]
        assert all(r["malicious"] == [1] for r in rows)
        assert all(p in r["accepted"] for r in rows for p in (0, 2))  # node 2 trained on its own file
    finally:
        for p in procs:
            _kill_tree(p)
        for f in logs.values():
            f.close()
        time.sleep(1)
        print(f"deployment test: {time.time() - t0:.1f}s")
    left = [p.pid for p in procs if _alive(p.pid)] + [c for p in procs for c in _descendants(p.pid) if _alive(c)]
    assert not left, f"processes still running: {left}"


def test_export_command_writes_one_file_per_partition(tmp_path, capsys):
    from fedsec.federation.deployment import main

    assert main(["export", str(QUICK), str(tmp_path), "--set", "data.num_clients=3"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / f"partition-{i}.safetensors") for i in range(3)]
    s = load_scenario(QUICK, ["data.num_clients=3"])
    from fedsec.federation.env import local_data

    for i in range(3):
        got = node_data(s, {"partition-id": i, "data-path": printed[i]})
        assert torch.equal(got.x, local_data(s, i).x) and torch.equal(got.y, local_data(s, i).y)
