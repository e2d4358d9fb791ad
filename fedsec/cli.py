"""The ``fedsec`` command."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table
from typer.core import TyperGroup


def _expected_error(e: BaseException) -> BaseException | None:
    """``e`` (or the error a Ray task wrapped) if it is a user's mistake rather than a bug."""
    from fedsec.checkpoint import CheckpointError
    from fedsec.data.datasets import DatasetMissing
    from fedsec.results import ResultsError
    from fedsec.scenario import ScenarioError

    expected = (ScenarioError, CheckpointError, DatasetMissing, ResultsError)
    for err in (e, getattr(e, "cause", None)):
        if isinstance(err, expected):
            return err
    return None


class _Commands(TyperGroup):
    """Every command: an expected error is one line on stderr and exit code 2; a bug keeps its traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as e:
            err = _expected_error(e)
            if err is None:
                raise
            typer.echo(f"error: {' '.join(str(err).split())}", err=True)
            raise typer.Exit(2) from None


# Locals in tracebacks print whole tensors and scenarios: hundreds of lines that hide the error.
app = typer.Typer(add_completion=False, no_args_is_help=True, cls=_Commands, pretty_exceptions_show_locals=False,
                  help="Federated-learning security simulations (Flower + PyTorch).")
console = Console()


def _fmt(v) -> str:
    return "-" if v is None or v != v else f"{v:.3f}"


def load_scenario_with_imports(path: Path, overrides: list[str], imports: list[str]):
    """Import ``--import`` modules, load the scenario, and add them to its ``run.imports``."""
    from fedsec import ScenarioError, load_scenario
    from fedsec.registry import import_components

    try:
        import_components(imports, where="--import")
    except ImportError as e:
        raise ScenarioError(str(e)) from None
    s = load_scenario(path, overrides)
    extra = [m for m in imports if m not in s.run.imports]
    return s.replace(**{"run.imports": [*s.run.imports, *extra]}) if extra else s


@app.command()
def run(
    scenario: Annotated[Optional[Path], typer.Argument(help="scenario TOML file (not with --resume)")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a field: KEY=VALUE")] = None,
    output: Annotated[Optional[Path], typer.Option(help="parent directory of the run directory")] = None,
    engine: Annotated[Optional[str], typer.Option(help="override run.engine")] = None,
    import_: Annotated[Optional[list[str]], typer.Option(
        "--import", help="a module registering your own components (repeatable; added to run.imports "
                         "so every engine's workers import it too)")] = None,
    resume: Annotated[Optional[Path], typer.Option(
        help="continue the run in this run directory from its last checkpoint")] = None,
) -> None:
    """Run a federation and write its run directory (or continue one with --resume)."""
    import logging

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedsec import ScenarioError, load_scenario
    from fedsec.api import run as run_federation
    from fedsec.federation.server import Progress as Hooks

    overrides = list(set_ or [])
    if engine:
        overrides.append(f'run.engine="{engine}"')
    if (scenario is None) == (resume is None):
        console.print("[red]error:[/] give a scenario file or --resume RUN_DIR (not both)")
        raise typer.Exit(2)
    if resume is not None and (overrides or import_):
        console.print("[red]error:[/] --resume continues the run's own scenario.toml: no --set/--engine/--import")
        raise typer.Exit(2)
    try:
        s = (load_scenario_with_imports(scenario, overrides, import_ or []) if resume is None
             else load_scenario(resume / "scenario.toml"))
    except ScenarioError as e:
        console.print(f"[red]invalid scenario:[/] {e}")
        raise typer.Exit(2) from None
    from fedsec.federation.env import dataset_of, device_of, initial_state, partitions_of

    # Missing data, an unsatisfiable split, an absent GPU or a bad model.init stop the
    # run here, in one line, before any engine starts (they are cached for the run).
    dataset_of(s), partitions_of(s), device_of(s), initial_state(s)
    logging.getLogger("flwr").setLevel(logging.WARNING)

    table = Table(title=f"{s.name}: {s.data.num_clients} clients, {s.server.aggregator}, engine {s.run.engine}")
    for col in ("round", "clean acc", "ASR", "accepted", "malicious", "failed", "s"):
        table.add_column(col, justify="right")
    per_round = max(int(s.data.num_clients * s.server.fraction_train), 1)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        rounds = bar.add_task("rounds", total=s.server.rounds)
        clients = bar.add_task("round 1 clients", total=per_round)

        def on_reply(reply) -> None:
            if reply.metadata.message_type.startswith("train"):  # not the discovery queries
                bar.advance(clients)

        def on_round_end(row) -> None:
            bar.advance(rounds)
            bar.reset(clients, total=per_round, description=f"round {row['round'] + 1} clients")
            asr = ", ".join(f"{k}={_fmt(v)}" for k, v in row["asr"].items()) or "-"
            table.add_row(str(row["round"]), _fmt(row["clean_acc"]), asr, str(len(row["accepted"])),
                          str(len(row["malicious"])), str(len(row["failed"])), f"{row['seconds']:.2f}")
            console.print(f"round {row['round']:>3}  clean_acc {_fmt(row['clean_acc'])}  asr {asr}")

        result = run_federation(s, output=output, resume=resume,
                                progress=Hooks(on_round_end=on_round_end, on_reply=on_reply))
    console.print(table)
    console.print(f"final clean accuracy: [bold]{result.summary['final_clean_acc']:.4f}[/]")
    for k, v in result.summary.get("final_asr", {}).items():
        console.print(f"final ASR {k}: {v:.4f}")
    # A plugin's human-readable report (watermark.md, abd.md) is printed with the run.
    for name in dict.fromkeys(pl.name for pl in s.plugins) if result.run_dir else ():
        report = result.run_dir / f"{name}.md"
        if report.is_file():
            console.print(Markdown(report.read_text()))
    console.print(f"run directory: {result.run_dir}")


@app.command("list")
def list_() -> None:
    """List the registered datasets, models, partitioners, rules, behaviours, plugins, engines."""
    from fedsec.clients import BEHAVIOURS
    from fedsec.data import DATASETS, PARTITIONERS
    from fedsec.federation import ENGINES
    from fedsec.models import MODELS
    from fedsec.plugins import PLUGINS
    from fedsec.strategies import AGGREGATORS

    for title, reg in [("datasets", DATASETS), ("models", MODELS), ("partitioners", PARTITIONERS),
                       ("aggregation rules", AGGREGATORS), ("client behaviours", BEHAVIOURS),
                       ("plugins", PLUGINS), ("engines", ENGINES)]:
        console.print(f"[bold]{title}[/] ({len(reg)})")
        t = Table(show_header=False)
        for name, obj in reg.items():
            doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            t.add_row(name, doc[0] if doc else "")
        console.print(t)


@app.command("craft-backdoor")
def craft_backdoor_cmd(
    out: Annotated[Path, typer.Argument(help="where to write the backdoored model (.safetensors)")],
    dataset: Annotated[str, typer.Option(help="attacker's data (train split of this dataset)")] = "digits",
    root: Annotated[str, typer.Option(help="data.root for torchvision datasets")] = "data",
    model: Annotated[str, typer.Option(help="architecture; must match the scenario's [model]")] = "cnn",
    target: Annotated[int, typer.Option(help="backdoor target class")] = 0,
    poison_fraction: Annotated[float, typer.Option(help="fraction of each batch carrying the trigger")] = 0.1,
    epochs: Annotated[int, typer.Option()] = 10,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Train a backdoored model (the poisoned-pretrained-model attack); start a federation
    from it with `model.init = "OUT"` in the scenario."""
    from fedsec.clients.attacks.pretrained import craft_backdoor

    try:
        res = craft_backdoor(out, dataset=dataset, root=root, model=model, target=target,
                             poison_fraction=poison_fraction, epochs=epochs, seed=seed)
    except (ValueError, TypeError, FileNotFoundError) as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    console.print(f"wrote {res['path']}: clean accuracy {res['clean_acc']:.4f}, ASR {res['asr']:.4f}")
    console.print(f'use it with: fedsec run SCENARIO.toml --set model.init="{res["path"]}"')


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
    students: Annotated[Optional[Path], typer.Option(
        help="write the distilled students here (student_kd.safetensors, student_kd_abd.safetensors)")] = None,
) -> None:
    """Anti-backdoor data-free distillation (ABD) of a saved model: teacher vs KD vs KD+ABD."""
    from safetensors.torch import load_file

    from fedsec.federation.env import dataset_of, device_of, new_model
    from fedsec.federation.server import eval_triggers_of
    from fedsec.plugins.abd import STUDENT_FILES, ABDConfig, compare, markdown_table, save_student
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
                  device=device_of(s), config=cfg,
                  log=typer.echo if cfg.eval_every else None,  # --param eval_every=N: the learning curve
                  on_student=None if students is None
                  else lambda key, st: save_student(students / STUDENT_FILES[key], st, s, cfg))
    table = markdown_table(res)
    console.print(table)
    if out is not None:
        from fedsec.results import atomic_write

        atomic_write(out, table + "\n")


@app.command()
def audit(
    model: Annotated[Path, typer.Argument(help="model (.safetensors) written by a run or plugin, e.g. runs/<run>/model.safetensors")],
    detector: Annotated[str, typer.Option(help="neural_cleanse, fine_pruning, activation_clustering, spectral_signatures, frequency")],
    param: Annotated[Optional[list[str]], typer.Option("--param", help="detector parameter KEY=VALUE (repeatable)")] = None,
    data: Annotated[Optional[Path], typer.Option(help="scenario TOML or run directory giving the data (default: the one embedded in MODEL)")] = None,
    partition: Annotated[Optional[int], typer.Option(help="data detectors: audit this client's round-1 data (default: the whole train split)")] = None,
    server_fraction: Annotated[float, typer.Option(help="part of the test split used as the clean set; the rest measures accuracy/ASR")] = 0.5,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Optional[Path], typer.Option(help="write the verdict here (JSON); images go beside it")] = None,
) -> None:
    """Audit a saved model (or its training data) with a backdoor detector; prints the JSON verdict."""
    from fedsec.audit.runner import run_audit
    from fedsec.scenario import ScenarioError, parse_override

    try:
        params = dict(parse_override(item, "--param", "passes=50") for item in param or [])
        res = run_audit(model, detector, params, data=data, partition=partition, server_fraction=server_fraction,
                        seed=seed, out_dir=out.parent if out is not None else None,
                        prefix=f"{out.stem}." if out is not None else "")
    except (ScenarioError, KeyError, TypeError, ValueError, FileNotFoundError) as e:
        console.print(f"[red]{e.args[0] if isinstance(e, KeyError) and e.args else e}[/]")
        raise typer.Exit(2) from None
    text = res.to_json()
    typer.echo(text)
    if out is not None:
        from fedsec.results import atomic_write

        atomic_write(out, text + "\n")


@app.command()
def bench(
    sweep: Annotated[Path, typer.Argument(help="sweep TOML file (format: fedsec/bench/spec.py, experiments/bench/README.md)")],
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="cells run at once, as Ray tasks when > 1 ($RAY_ADDRESS joins a cluster)")] = 1,
    out: Annotated[Optional[Path], typer.Option(help="sweep directory (default runs/bench/<sweep name>)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate the sweep and list its cells; run nothing")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="override a base-scenario field for every cell: KEY=VALUE")] = None,
) -> None:
    """Run a sweep (aggregators x attacks x fractions x alphas x seeds); rerunning resumes it."""
    import logging

    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from fedsec.bench import SweepError, cell_dir, is_done, load_sweep, run_sweep

    try:
        sw = load_sweep(sweep, list(set_ or []))
    except SweepError as e:
        console.print(f"[red]invalid sweep:[/] {e}")
        raise typer.Exit(2) from None
    out = out if out is not None else Path("runs") / "bench" / sw.name
    unique = sw.unique()
    console.print(f"sweep [bold]{sw.name}[/]: {len(sw.cells)} cells ({len(unique)} distinct federations), "
                  f"{len(sw.aggregators)} aggregators x {len(sw.attacks)} attacks; directory {out}")
    if dry_run:
        t = Table("cell", "aggregator", "attack", "fraction", "attackers", "alpha", *sw.vary, "seed", "done")
        for c in sw.cells:
            a = c.axes
            t.add_row(c.digest, str(a["aggregator"]), str(a["attack"]), str(a["malicious_fraction"]),
                      str(c.num_malicious), str(a["alpha"]), *[str(a[k]) for k in sw.vary], str(a["seed"]),
                      "yes" if is_done(cell_dir(out, c.digest)) else "")
        console.print(t)
        return
    logging.getLogger("flwr").setLevel(logging.WARNING)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task("cells", total=len(unique))

        def on_start(total: int, skipped: int) -> None:
            bar.update(task, total=total, completed=skipped)
            if skipped:
                console.print(f"{skipped} cell(s) already finished: skipped")

        def on_cell(c, st) -> None:
            bar.advance(task)
            ok = st.get("status") == "done"
            line = f"{'done  ' if ok else '[red]FAILED[/]'} {c.describe()}  ({st.get('wall_seconds', 0):.1f} s)"
            console.print(line if ok else f"{line}: {st.get('error', '')}", highlight=False)

        try:
            res = run_sweep(sw, out, jobs=jobs, on_cell=on_cell, on_start=on_start)
        except SweepError as e:
            console.print(f"[red]{e}[/]")
            raise typer.Exit(2) from None
    console.print(f"{res.done} ran, {res.skipped} skipped, {len(res.failed)} failed; "
                  f"results: {out / 'results.csv'}, {out / 'results.md'}, {out / 'plots'}")
    if res.failed:
        console.print("[red]failed cells (rerun the same command to retry them; tracebacks in cells/<id>/error.txt):[/]")
        for c, err in res.failed:
            console.print(f"  {c.digest} {c.describe()}: {err}", highlight=False)
        raise typer.Exit(1)


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="sweep directory written by `fedsec bench`")],
) -> None:
    """Rebuild a sweep's results.csv, results.md and plots from its cells' run directories."""
    from fedsec.bench import SweepError, write_report

    try:
        rep = write_report(directory)
    except SweepError as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    states: dict[str, int] = {}
    for r in rep["records"]:
        states[r["status"]] = states.get(r["status"], 0) + 1
    console.print(f"{len(rep['records'])} cells ({', '.join(f'{v} {k}' for k, v in sorted(states.items()))}); "
                  f"wrote {rep['csv']}, {rep['md']} and {len(rep['plots'])} plots in {directory / 'plots'}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
