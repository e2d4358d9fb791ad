"""The ``fedsec`` command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Federated-learning security simulations (Flower + PyTorch).")
console = Console()


def _fmt(v) -> str:
    return "-" if v is None or v != v else f"{v:.3f}"


@app.command()
def run(
    scenario: Annotated[Path, typer.Argument(help="scenario TOML file")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a field: KEY=VALUE")] = None,
    output: Annotated[Optional[Path], typer.Option(help="parent directory of the run directory")] = None,
    engine: Annotated[Optional[str], typer.Option(help="override run.engine")] = None,
) -> None:
    """Run a federation and write its run directory."""
    import logging

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedsec import ScenarioError, load_scenario
    from fedsec.api import run as run_federation
    from fedsec.federation.server import Progress as Hooks

    overrides = list(set_ or [])
    if engine:
        overrides.append(f'run.engine="{engine}"')
    try:
        s = load_scenario(scenario, overrides)
    except ScenarioError as e:
        console.print(f"[red]invalid scenario:[/] {e}")
        raise typer.Exit(2) from None
    logging.getLogger("flwr").setLevel(logging.WARNING)

    table = Table(title=f"{s.name}: {s.data.num_clients} clients, {s.server.aggregator}, engine {s.run.engine}")
    for col in ("round", "clean acc", "ASR", "accepted", "malicious", "failed", "s"):
        table.add_column(col, justify="right")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        rounds = bar.add_task("rounds", total=s.server.rounds)

        def on_round_end(row) -> None:
            bar.advance(rounds)
            asr = ", ".join(f"{k}={_fmt(v)}" for k, v in row["asr"].items()) or "-"
            table.add_row(str(row["round"]), _fmt(row["clean_acc"]), asr, str(len(row["accepted"])),
                          str(len(row["malicious"])), str(len(row["failed"])), f"{row['seconds']:.2f}")
            console.print(f"round {row['round']:>3}  clean_acc {_fmt(row['clean_acc'])}  asr {asr}")

        result = run_federation(s, output=output, progress=Hooks(on_round_end=on_round_end))
    console.print(table)
    console.print(f"final clean accuracy: [bold]{result.summary['final_clean_acc']:.4f}[/]")
    for k, v in result.summary.get("final_asr", {}).items():
        console.print(f"final ASR {k}: {v:.4f}")
    console.print(f"run directory: {result.run_dir}")


@app.command("list")
def list_() -> None:
    """List the registered datasets, models, partitioners, rules, behaviours, plugins, engines."""
    from clients import BEHAVIOURS
    from fedsec.data import DATASETS, PARTITIONERS
    from fedsec.federation.engines import ENGINES
    from fedsec.models import MODELS
    from fedsec.plugins import PLUGINS
    from strategies import AGGREGATORS

    for title, reg in [("datasets", DATASETS), ("models", MODELS), ("partitioners", PARTITIONERS),
                       ("aggregation rules", AGGREGATORS), ("client behaviours", BEHAVIOURS),
                       ("plugins", PLUGINS), ("engines", ENGINES)]:
        console.print(f"[bold]{title}[/] ({len(reg)})")
        t = Table(show_header=False)
        for name, obj in reg.items():
            doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            t.add_row(name, doc[0] if doc else "")
        console.print(t)


def _scenario_of_checkpoint(path: Path, scenario: Optional[Path]):
    from safetensors import safe_open

    from fedsec import load_scenario
    from fedsec.federation.env import scenario_from_toml

    if scenario is not None:
        return load_scenario(scenario)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "scenario" not in meta:
        console.print(f"[red]{path}: no embedded scenario; pass --scenario FILE.toml[/]")
        raise typer.Exit(2)
    return scenario_from_toml(meta["scenario"])


@app.command()
def distill(
    model: Annotated[Path, typer.Argument(help="global model (.safetensors) to distil, e.g. a run's model.safetensors")],
    scenario: Annotated[Optional[Path], typer.Option(help="scenario TOML (default: the one embedded in MODEL)")] = None,
    param: Annotated[Optional[list[str]], typer.Option("--param", help="ABD option KEY=VALUE (see fedsec.plugins.abd)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="write the results table (markdown) here")] = None,
) -> None:
    """Anti-backdoor data-free distillation (ABD) of a saved model: teacher vs KD vs KD+ABD."""
    from safetensors.torch import load_file

    from fedsec.federation.env import dataset_of, device_of, new_model
    from fedsec.federation.server import eval_triggers_of
    from fedsec.plugins.abd import ABDConfig, compare, markdown_table
    from fedsec.scenario import parse_value

    if not model.is_file():
        console.print(f"[red]model file {str(model)!r} does not exist[/]")
        raise typer.Exit(2)
    s = _scenario_of_checkpoint(model, scenario)
    kwargs = {}
    for item in param or []:
        key, sep, value = item.partition("=")
        if not sep:
            console.print(f"[red]--param {item!r}: expected KEY=VALUE[/]")
            raise typer.Exit(2)
        kwargs[key.strip()] = parse_value(value.strip())
    try:
        cfg = ABDConfig(**kwargs)
    except (TypeError, ValueError) as e:
        console.print(f"[red]invalid ABD option: {e}[/]")
        raise typer.Exit(2) from None
    teacher = new_model(s)
    teacher.load_state_dict(load_file(str(model)))
    data = dataset_of(s)
    res = compare(teacher, in_shape=data.in_shape, num_classes=data.num_classes, test=data.test,
                  eval_triggers=eval_triggers_of(s), make_student=lambda: new_model(s, "student"),
                  device=device_of(s), config=cfg, log=None)
    table = markdown_table(res)
    console.print(table)
    if out is not None:
        from fedsec.results import atomic_write

        atomic_write(out, table + "\n")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
