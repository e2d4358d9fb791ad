"""`flwr run .` (Flower 1.41 CLI) on the repo: FAB contents, config, and a real local simulation.

The end-to-end test runs the venv's ``flwr`` exactly as a user would (docs/flwr_run.md),
with a throw-away ``FLWR_HOME`` (Flower config file, installed FABs, the local
SuperLink's database and log) and private ports, and stops the local SuperLink that
``flwr run`` started (it is detached and would otherwise outlive the test).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
FLWR = VENV_BIN / "flwr"
PACKAGES = ("fedsec", "strategies", "clients")
TIMEOUT = 240.0


def _fab_names() -> set[str]:
    from flwr.cli.build import build_fab_from_disk

    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(REPO))) as z:
        return set(z.namelist())


def test_fab_ships_every_module():
    """The FAB `flwr run .` builds honours .gitignore: no package file may be ignored."""
    names = _fab_names()
    expected = {
        p.relative_to(REPO).as_posix()
        for pkg in PACKAGES
        for p in (REPO / pkg).rglob("*.py")
        if "__pycache__" not in p.parts and not p.name.startswith("test_") and not p.name.endswith("_test.py")
    }
    missing = sorted(expected - names)
    assert not missing, (
        f"the FAB built by `flwr run .` lacks {missing}: Flower drops files matched by "
        ".gitignore (an unanchored 'data/' also ignores fedsec/data/; anchor it as '/data/')"
    )
    assert "experiments/quickstart.toml" in names  # relative scenario paths resolve in the FAB


def test_pyproject_flwr_sections():
    flwr = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]
    # flwr 1.41 migrates a [tool.flwr.federations] table into $FLWR_HOME/config.toml
    # and comments it out of pyproject.toml on every `flwr run .`: keep it absent.
    assert "federations" not in flwr
    assert flwr["app"]["components"]["serverapp"] == "fedsec.federation.flwr_app:server_app"
    assert set(flwr["app"]["config"]) >= {"scenario", "overrides", "output"}


def test_scenario_path_resolves_inside_app(tmp_path, monkeypatch):
    from fedsec.federation.flwr_app import APP_ROOT, resolve_scenario_path

    monkeypatch.chdir(tmp_path)  # like a SuperLink started from elsewhere
    assert resolve_scenario_path("experiments/quickstart.toml") == APP_ROOT / "experiments/quickstart.toml"
    assert resolve_scenario_path(str(tmp_path / "x.toml")) == tmp_path / "x.toml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_with(marker: str) -> list[int]:
    """Processes whose command line contains ``marker`` (our private port/FLWR_HOME)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd and ("flower-superlink" in cmd or "flower-superexec" in cmd):
            pids.append(int(d.name))
    return pids


def _stop(pids: list[int]) -> None:
    """SIGTERM the detached SuperLink/SuperExec process groups, SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.killpg(os.getpgid(pid), sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.time() + 10
        while time.time() < deadline and any(Path(f"/proc/{p}").exists() and _alive(p) for p in pids):
            time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _ansi_free(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


# 30-75 s on 2 cores (Ray start/stop dominates): in CI, since it is the only test of `flwr run .`
@pytest.mark.skipif(not FLWR.exists(), reason="no flwr CLI next to the interpreter")
def test_flwr_run_local_simulation(tmp_path):
    flwr_home, out = tmp_path / "flwr-home", tmp_path / "runs"
    port, control_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the FAB must be self-contained
    env.update(
        FLWR_HOME=str(flwr_home),  # config.toml, apps/, local-superlink/{state.db,superlink.log}
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(port),  # not the default 39091: ours alone
        FLWR_LOCAL_CONTROL_API_PORT=str(control_port),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",  # no `uv sync` of our deps per run
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # flwr spawns flower-superlink by name
    )
    scenario = REPO / "experiments" / "quickstart.toml"
    cmd = [
        str(FLWR), "run", ".", "--stream",
        "--federation-config", "num-supernodes=4",
        "--run-config",
        f'scenario="{scenario}" overrides="server.rounds=1;data.num_clients=4;client.epochs=1" '
        f'output="{out}"',
    ]
    marker = f"--port {port} "
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        log = _ansi_free(proc.stdout + proc.stderr)
        assert proc.returncode == 0, log[-4000:]
        assert "Starting local SuperLink" in log, log[-4000:]
        # `flwr run --stream` exits 0 even when the ServerApp raised: look for Flower's error line.
        assert "Exit Code:" not in log and "Simulation raised an exception" not in log, log[-4000:]
        assert (flwr_home / "config.toml").is_file()  # created by flwr with the ":local:" default
        assert "(4 simulated SuperNodes)" in log

        run_dirs = sorted(out.glob("quickstart-*"))
        assert len(run_dirs) == 1, (list(out.iterdir()) if out.exists() else None, log[-4000:])
        assert f"run directory {run_dirs[0]}" in log  # the ServerApp tells where results went
        rows = [json.loads(line) for line in (run_dirs[0] / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows] == [1]
        assert sorted(rows[0]["sampled"]) == [0, 1, 2, 3]  # every simulated SuperNode trained
        assert 0.0 <= rows[0]["clean_acc"] <= 1.0
        assert json.loads((run_dirs[0] / "summary.json").read_text())["rounds"] == 1
        assert tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"].get("federations") is None
    finally:
        _stop(_pids_with(marker) + _pids_with(f"127.0.0.1:{port}"))
        print(f"flwr run: {time.time() - t0:.1f}s")
    assert not [p for p in _pids_with(marker) if _alive(p)], "local SuperLink still running"


@pytest.mark.slow
@pytest.mark.skipif(not FLWR.exists(), reason="no flwr CLI next to the interpreter")
def test_flwr_run_user_components(tmp_path):
    """A user's rule, behaviour and plugin named in run.imports run under `flwr run .`.

    The user's module lives outside the app; the SuperLink (and so its ServerApp and
    ClientApp processes) finds it on PYTHONPATH, as on a real deployment where the
    user's package is installed next to fedsec.
    """
    from tests.test_extensions import _check_run, _user_dir

    d = _user_dir(tmp_path, "inline")
    flwr_home = tmp_path / "flwr-home"
    port, control_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(
        PYTHONPATH=str(d), FLWR_HOME=str(flwr_home),
        FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=str(port), FLWR_LOCAL_CONTROL_API_PORT=str(control_port),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1", PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    cmd = [str(FLWR), "run", ".", "--stream", "--federation-config", "num-supernodes=4",
           "--run-config", f'scenario="{d / "s.toml"}" output="{d / "runs"}"']
    marker = f"--port {port} "
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
        log = _ansi_free(proc.stdout + proc.stderr)
        assert proc.returncode == 0, log[-4000:]
        assert "Exit Code:" not in log and "Simulation raised an exception" not in log, log[-4000:]
        _check_run(d)
    finally:
        _stop(_pids_with(marker) + _pids_with(f"127.0.0.1:{port}"))
