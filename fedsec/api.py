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
        from fedsec.scenario import parse_value

        scenario = scenario.replace(**{k: parse_value(v) for k, v in (o.split("=", 1) for o in overrides)})
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
