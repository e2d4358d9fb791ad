"""``run``: the one entry point for a federation, from Python or the CLI."""

from __future__ import annotations

from pathlib import Path

from fedsec.federation.server import FederationResult, Progress, run_server
from fedsec.scenario import Scenario, load_scenario


def run(
    scenario: Scenario | str | Path,
    *,
    overrides: list[str] | None = None,
    output: str | Path | None = None,
    progress: Progress | None = None,
    resume: str | Path | None = None,
) -> FederationResult:
    """Run a federation; ``scenario`` is a :class:`Scenario` or a TOML path.

    ``resume``: a run directory to continue from its last checkpoint (``scenario`` is
    then ignored and may be None: the run directory's own scenario.toml is used).

    Returns the per-round ``history`` (the rows of metrics.jsonl), the
    ``summary``, the final global ``model`` and the ``run_dir``.
    """
    from fedsec.federation import ENGINES

    if resume is not None:
        scenario = load_scenario(Path(resume) / "scenario.toml")
    elif not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario, overrides)
    elif overrides:
        from fedsec.scenario import parse_override

        scenario = scenario.replace(**dict(parse_override(o, "override", "server.rounds=3") for o in overrides))
    preflight(scenario)
    holder: list[FederationResult] = []

    def main(grid, context) -> None:
        holder.append(run_server(grid, scenario, output=output, progress=progress, resume=resume))

    import logging

    # Flower logs every round at INFO, including the train config (the whole scenario
    # text); keep its warnings, silence the chatter, restore the caller's level.
    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    flwr_logger.setLevel(max(level, logging.WARNING))
    try:
        ENGINES.get(scenario.run.engine)(scenario, main, on_reply=getattr(progress, "on_reply", None))
    finally:
        flwr_logger.setLevel(level)
    if not holder:
        raise RuntimeError(f"engine {scenario.run.engine!r} finished without a result")
    return holder[0]


def preflight(scenario: Scenario) -> None:
    """Fail in the driver, in one clear message, before any engine starts: missing data, an
    unsatisfiable split, a device this machine lacks, a bad ``model.init``, GPUs the engine's
    clients would not get. (Each result is cached for the run.)"""
    import logging

    from fedsec.federation.env import dataset_of, device_of, initial_state, partitions_of
    from fedsec.scenario import ScenarioError

    dataset_of(scenario), partitions_of(scenario), initial_state(scenario)
    device = device_of(scenario)
    r = scenario.run
    if device.type == "cuda" and r.engine in ("ray", "flower") and r.num_gpus == 0:
        # Ray hides the GPUs from actors that reserve none: the clients would have no CUDA.
        raise ScenarioError(
            f"run.num_gpus: got 0 with run.device = {r.device!r} on the {r.engine!r} engine, whose clients "
            "would then see no GPU; set run.num_gpus to each client's share (e.g. 0.25 = 4 clients per GPU)")
    clients = device if r.engine == "inline" or r.num_gpus > 0 or device.type == "cpu" else "cpu"
    logging.getLogger("fedsec").info("server trains/evaluates on %s, clients on %s (engine %s)",
                                     device, clients, r.engine)
