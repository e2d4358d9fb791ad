"""fedsec: federated-learning simulation for security research."""

from fedsec._layout import install_sibling_finder as _install

_install()
from fedsec.scenario import Scenario, ScenarioError, load_scenario


def __getattr__(name: str):
    # Lazy: importing fedsec (e.g. for Scenario) must not start loading Flower and Ray.
    if name == "run":
        from fedsec.api import run

        return run
    if name == "FederationResult":
        from fedsec.federation.server import FederationResult

        return FederationResult
    if name == "load_sweep":  # a sweep directory -> pandas DataFrame (pandas imported on call)
        from fedsec.bench.frame import load_results

        return load_results
    if name in ("load_run", "RUN_COLUMNS"):  # a run directory -> pandas DataFrame (pandas imported on call)
        import fedsec.report

        return getattr(fedsec.report, name)
    raise AttributeError(f"module 'fedsec' has no attribute {name!r}")


__all__ = ["RUN_COLUMNS", "Scenario", "ScenarioError", "load_run", "load_scenario", "load_sweep", "run"]
