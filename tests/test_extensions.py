"""A user's own rule, behaviour and plugin, in their own module, on every engine.

The module is written into a temp directory that is not on fedsec's path; the
scenario names it in ``run.imports`` (or the CLI's ``--import``), and every
process that parses the scenario (driver, Ray actors, Flower's ClientApp and
ServerApp) must import it before validating. Each federation runs in a fresh
subprocess whose working directory is the user's folder, as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

USER_MODULE = '''
"""A user's components (not part of fedsec)."""
from dataclasses import dataclass

import torch

from fedsec.clients import Behaviour, register_behaviour
from fedsec.plugins import Plugin, register_plugin
from fedsec.strategies import AggregationResult, Aggregator, register_aggregator


@register_aggregator("my_mean")
@dataclass(frozen=True, kw_only=True)
class MyMean(Aggregator):
    """Unweighted mean; scores are the row norms (so a zero update is visible)."""

    def aggregate(self, U, weights, *, generator=None, rows=None):
        return AggregationResult(vector=U.mean(0), accepted=torch.ones(len(U), dtype=torch.bool),
                                 scores=U.norm(dim=1))


@register_behaviour("my_lazy")
@dataclass(frozen=True, kw_only=True)
class MyLazy(Behaviour):
    """Trains, then submits G^t + scale * (trained - G^t)."""

    scale: float = 0.0

    def finalize(self, task):
        with torch.no_grad():
            for k, p in task.model.state_dict().items():
                if p.is_floating_point():
                    g = task.global_state[k]
                    p.copy_(g + self.scale * (p - g))
        task.metrics["lazy"] = 1.0


@register_plugin("my_counter")
class MyCounter(Plugin):
    def __init__(self, tag: str = "x") -> None:
        self.tag = tag

    def on_round_end(self, server_round, model, ctx):
        ctx.round_metrics["my_counter"] = server_round
        return None

    def on_run_end(self, model, ctx):
        return {"tag": self.tag}
'''

SCENARIO = '''
name = "ext"
[data]
num_clients = 4
[client]
epochs = 1
[server]
rounds = 2
aggregator = "my_mean"
[[attack]]
behaviour = "my_lazy"
partitions = [0]
[[plugins]]
name = "my_counter"
params = {{tag = "hello"}}
[run]
engine = "{engine}"
output = "{output}"
{imports}
'''


def _user_dir(tmp_path: Path, engine: str, imports: bool = True) -> Path:
    d = tmp_path / "user"
    d.mkdir()
    (d / "myext.py").write_text(USER_MODULE)
    # A folder named like fedsec's card folders must not shadow fedsec's own packages.
    (d / "clients").mkdir()
    (d / "clients" / "__init__.py").write_text("USERS_OWN = True\n")
    (d / "s.toml").write_text(SCENARIO.format(engine=engine, output=d / "runs",
                                              imports='imports = ["myext"]' if imports else ""))
    return d


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _check_run(d: Path) -> None:
    (run_dir,) = (d / "runs").glob("ext-*")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for r in rows:
        assert r["failed"] == [], r["failed"]
        assert r["plugins"]["my_counter"] == r["round"]
        assert sorted(r["accepted"]) == [0, 1, 2, 3]
        # partition 0 ran my_lazy with scale 0: its update is exactly zero
        assert r["scores"]["0"] == 0.0 and all(r["scores"][str(p)] > 0 for p in (1, 2, 3))
        assert r["malicious"] == [0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["plugins"]["my_counter"] == {"tag": "hello"}


def _run_python(d: Path, timeout: float = 600) -> None:
    code = textwrap.dedent("""
        import clients
        assert getattr(clients, "USERS_OWN", False)   # the user's own package, untouched
        from fedsec import load_scenario, run
        run(load_scenario("s.toml"))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=d, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def test_user_components_inline(tmp_path):
    d = _user_dir(tmp_path, "inline")
    _run_python(d)
    _check_run(d)


def test_user_components_ray(tmp_path):
    d = _user_dir(tmp_path, "ray")
    _run_python(d)
    _check_run(d)


@pytest.mark.slow
def test_user_components_flower(tmp_path):
    d = _user_dir(tmp_path, "flower")
    _run_python(d)
    _check_run(d)


def test_user_components_cli_import(tmp_path):
    d = _user_dir(tmp_path, "inline", imports=False)
    fedsec = Path(sys.executable).parent / "fedsec"
    proc = subprocess.run([str(fedsec), "run", "s.toml", "--import", "myext"], cwd=d, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    _check_run(d)
    (run_dir,) = (d / "runs").glob("ext-*")
    assert 'imports = ["myext"]' in (run_dir / "scenario.toml").read_text()  # re-running reproduces it


def test_unknown_user_module_is_a_scenario_error(tmp_path):
    from fedsec.scenario import Scenario, ScenarioError

    with pytest.raises(ScenarioError, match=r"run.imports\[0\]: cannot import 'no_such_module_xyz'"):
        Scenario.from_dict({"run": {"imports": ["no_such_module_xyz"]}})


def test_every_client_failing_stops_the_run_with_its_reason(tmp_path):
    from fedsec import load_scenario, run
    from fedsec.federation.federation import FederationError

    s = load_scenario(REPO / "experiments/quickstart.toml", [
        'run.engine="inline"', "data.num_clients=4", "server.rounds=3", "client.epochs=1",
        f'run.output="{tmp_path}"',
        'attack=[{behaviour="fault", partitions=[0, 1, 2, 3], params={mode="raise"}, start_round=2}]'])
    with pytest.raises(FederationError, match=r"all 4 clients failed in round 2: client error: "
                                              r"RuntimeError: injected fault in partition 0"):
        run(s)
    (run_dir,) = tmp_path.glob("quickstart-*")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "round 2" in summary["error"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2] and len(rows[1]["failed"]) == 4
    assert not (run_dir / "model.safetensors").exists()  # no final model claimed


def test_every_client_failing_cli_exit_code(tmp_path):
    fedsec = Path(sys.executable).parent / "fedsec"
    proc = subprocess.run(
        [str(fedsec), "run", str(REPO / "experiments/quickstart.toml"), "--engine", "inline",
         "--output", str(tmp_path), "--set", "data.num_clients=4", "--set", "server.rounds=1",
         "--set", "client.epochs=1",
         "--set", 'attack=[{behaviour="fault", partitions=[0, 1, 2, 3], params={mode="raise"}}]'],
        env=_env(), capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "all 4 clients failed in round 1" in out and "injected fault" in out
    assert "load_state_dict" not in out and "Missing key" not in out


def test_entry_point_components_load_in_every_process(tmp_path):
    """An installed package's `fedsec.components` entry point registers its components."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "ep_ext.py").write_text(USER_MODULE.replace('"my_mean"', '"ep_mean"').replace('"my_lazy"', '"ep_lazy"')
                                    .replace('"my_counter"', '"ep_counter"'))
    dist = site / "ep_ext-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-ext\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fedsec.components]\nep = ep_ext\n")
    env = {**_env(), "PYTHONPATH": str(site)}
    code = ("from fedsec.scenario import Scenario; "
            "s = Scenario.from_dict({'server': {'aggregator': 'ep_mean'}, "
            "'attack': [{'behaviour': 'ep_lazy', 'partitions': [0]}], 'plugins': [{'name': 'ep_counter'}]}); "
            "print(s.server.aggregator)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ep_mean", proc.stderr[-3000:]
