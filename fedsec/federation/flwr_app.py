"""The ServerApp that ``flwr run .`` loads (pyproject ``[tool.flwr.app.components]``).

The scenario path comes from the run config (``--run-config 'scenario="x.toml"'``);
results go to the scenario's ``run.output`` as with ``fedsec run``.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsec.federation.server import run_server
from fedsec.scenario import load_scenario

server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    path = context.run_config.get("scenario")
    if not path:
        raise ValueError("run config lacks 'scenario': pass --run-config 'scenario=\"path.toml\"'")
    overrides = str(context.run_config.get("overrides", "") or "")
    result = run_server(grid, load_scenario(str(path), [o for o in overrides.split(";") if o]))
    print(f"fedsec: final clean accuracy {result.summary['final_clean_acc']:.4f}; run directory {result.run_dir}")
