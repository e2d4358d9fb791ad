"""The ``ray`` engine: same model as inline, survives failures, joins an existing cluster."""

import contextlib
import os
import signal
import socket
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

from fedsec import load_scenario, run
from fedsec.federation import ray_engine

QUICK = "experiments/quickstart.toml"
BASE = ["server.rounds=2", "data.num_clients=4", "client.epochs=1", "server.fraction_train=0.75"]


def test_ray_matches_inline_bitwise(tmp_path):
    a = run(load_scenario(QUICK, BASE + ['run.engine="inline"']), output=tmp_path)
    b = run(load_scenario(QUICK, BASE + ['run.engine="ray"']), output=tmp_path)
    assert [r["sampled"] for r in a.history] == [r["sampled"] for r in b.history]
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_raising_client_and_dead_actor_are_counted_and_replaced(tmp_path):
    s = load_scenario(QUICK, [
        "server.rounds=3", "data.num_clients=5", "client.epochs=1", 'run.engine="ray"',
        'attack=[{behaviour = "fault", partitions = [0]},'
        ' {behaviour = "fault", partitions = [3], params = {mode = "exit"}, start_round = 2, end_round = 2}]',
    ])
    r = run(s, output=tmp_path)
    failed = [sorted(f["partition"] for f in row["failed"]) for row in r.history]
    assert failed == [[0], [0, 3], [0]]
    reasons = {f["partition"]: f["reason"] for f in r.history[1]["failed"]}
    assert "injected fault" in reasons[0] and "actor died" in reasons[3]
    assert ray_engine._POOL["pool"].replaced >= 1
    assert r.history[2]["accepted"] == [1, 2, 3, 4]  # partition 3 is back in round 3
    assert all(torch.isfinite(v).all() for v in r.model.state_dict().values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_nodes(address: str, n: int, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run([str(Path(sys.executable).parent / "ray"), "status", "--address", address],
                             capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.count("node_") >= n:
            return
        time.sleep(2)
    raise TimeoutError(f"cluster at {address} did not show {n} nodes")


@contextlib.contextmanager
def two_node_cluster():
    """A real Ray cluster on loopback: a head and a second node, each with one CPU, each its
    own process group. Yields (address, kill_second_node)."""
    ray_engine.shutdown()  # leave any in-process local cluster from earlier tests
    ray_bin = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    # Ray's unix sockets live under --temp-dir and must fit in 107 bytes: not pytest's long tmp_path.
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    common = ["--block", "--num-cpus=1", "--disable-usage-stats"]
    procs = []

    def kill(p, sig):
        try:
            os.killpg(p.pid, sig)
            p.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)

    try:
        procs.append(subprocess.Popen(
            [ray_bin, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
             "--include-dashboard=false", f"--temp-dir={temp_dir}", *common],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(5)
        procs.append(subprocess.Popen(
            [ray_bin, "start", f"--address={address}", "--node-ip-address=127.0.0.1",
             '--resources={"second_node": 1}', *common],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        _wait_for_nodes(address, 2)
        # The whole second node at once, its raylet and its workers: a machine that is lost.
        yield address, lambda: kill(procs[1], signal.SIGKILL)
    finally:
        ray_engine.shutdown()
        for p in reversed(procs):
            kill(p, signal.SIGTERM)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_joins_an_existing_two_node_cluster(tmp_path):
    with two_node_cluster() as (address, _):
        s = load_scenario(QUICK, BASE + ['run.engine="ray"', f'run.ray_address="{address}"'])
        r = run(s, output=tmp_path / "runs")
        import ray

        assert ray.cluster_resources().get("second_node") == 1.0
        assert len(ray_engine._POOL["actors"]) == 2  # one client actor per node's CPU
        ref = run(load_scenario(QUICK, BASE + ['run.engine="inline"']), output=tmp_path / "runs")
        sa, sb = r.model.state_dict(), ref.model.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
def test_lost_worker_node_mid_round(tmp_path):
    """The second node dies while its actor trains a round-2 client (every client is a 3 s
    straggler in round 2): that round completes with the lost clients counted as failed,
    the pool does not wait for the lost node's CPU, and round 3 runs on the head alone."""
    with two_node_cluster() as (address, kill_second_node):
        s = load_scenario(QUICK, [
            "server.rounds=3", "data.num_clients=4", "client.epochs=1", "server.fraction_train=1.0",
            'run.engine="ray"', f'run.ray_address="{address}"',
            'attack=[{behaviour = "fault", partitions = [0, 1, 2, 3], params = {mode = "slow", seconds = 3.0},'
            ' start_round = 2, end_round = 2}]'])
        out = tmp_path / "runs"
        killer_done = threading.Event()

        def kill_in_round_2():
            deadline = time.time() + 300
            while time.time() < deadline:
                for m in out.glob("*/metrics.jsonl"):
                    if '"round": 1' in m.read_text():
                        time.sleep(1.5)  # both actors are inside a round-2 straggler now
                        kill_second_node()
                        killer_done.set()
                        return
                time.sleep(0.1)

        killer = threading.Thread(target=kill_in_round_2, daemon=True)
        killer.start()
        r = run(s, output=out)
        killer.join(timeout=60)
        assert killer_done.is_set()
        rounds = {row["round"]: row for row in r.history}
        assert sorted(rounds) == [1, 2, 3]
        assert rounds[1]["failed"] == []
        lost = rounds[2]["failed"]
        assert lost and all("actor died" in f["reason"] for f in lost), lost
        assert len(lost) + len(rounds[2]["accepted"]) == 4  # every other client of round 2 replied
        assert rounds[3]["failed"] == [] and len(rounds[3]["accepted"]) == 4
        pool = ray_engine._POOL["pool"]
        assert pool.replaced >= 1 and pool.starting  # the lost node's replacement never started
        assert all(torch.isfinite(v).all() for v in r.model.state_dict().values())


def test_flower_engine_after_ray_engine_in_one_process(tmp_path):
    """The ray engine's pool must not starve Flower's own Ray actors afterwards."""
    run(load_scenario(QUICK, BASE + ['run.engine="ray"']), output=tmp_path)
    b = run(load_scenario(QUICK, BASE + ['run.engine="flower"']), output=tmp_path)
    assert len(b.history) == 2
