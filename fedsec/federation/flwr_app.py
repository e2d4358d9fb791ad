"""The ServerApp that ``flwr run .`` loads (pyproject ``[tool.flwr.app.components]``).

Run config keys (``[tool.flwr.app.config]``, overridden with ``--run-config``):

- ``scenario``: path of the scenario TOML. ``flwr run`` ships the app as a FAB that
  the SuperLink unpacks under ``$FLWR_HOME/apps/...`` and runs from the SuperLink's
  working directory, so a relative path is looked up first relative to that
  working directory and then inside the installed app (the FAB carries
  ``experiments/**/*.toml``, so ``experiments/quickstart.toml`` always resolves).
  An absolute path is the robust choice for a scenario outside the repo.
- ``overrides``: ``;``-separated ``KEY=VALUE`` scenario overrides, as ``fedsec run --set``
  (``"server.rounds=1;data.num_clients=4"``).
- ``output``: directory for the run directory; empty means the scenario's
  ``run.output``. A relative path is relative to the SuperLink's working directory
  (the directory ``flwr run`` was first started from), so pass an absolute one.

The ServerApp logs the absolute run directory (``flwr run . --stream`` or
``flwr log <run-id>`` show it).
"""

from __future__ import annotations

import logging
from pathlib import Path

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedsec.federation.server import run_server
from fedsec.scenario import load_scenario

server_app = ServerApp()

# The installed app's root: <app>/fedsec/federation/flwr_app.py -> <app>
APP_ROOT = Path(__file__).resolve().parents[2]


def resolve_scenario_path(path: str) -> Path:
    """An absolute path as is; a relative one against the cwd, then the app root."""
    p = Path(path).expanduser()
    if p.is_absolute() or p.is_file():
        return p
    in_app = APP_ROOT / p
    return in_app if in_app.is_file() else p


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    path = str(context.run_config.get("scenario", "") or "")
    if not path:
        raise ValueError("run config lacks 'scenario': pass --run-config 'scenario=\"path.toml\"'")
    overrides = str(context.run_config.get("overrides", "") or "")
    output = str(context.run_config.get("output", "") or "")
    scenario = load_scenario(resolve_scenario_path(path), [o.strip() for o in overrides.split(";") if o.strip()])
    result = run_server(grid, scenario, output=Path(output).expanduser() if output else None)
    run_dir = Path(result.run_dir).resolve()
    msg = f"fedsec: final clean accuracy {result.summary['final_clean_acc']:.4f}; run directory {run_dir}"
    log(logging.INFO, msg)
