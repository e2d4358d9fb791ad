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
# Errors go to stderr unwrapped, so a long did-you-mean stays on one greppable line.
err_console = Console(stderr=True, soft_wrap=True)
_verbosity = {"level": 0}


def _version_text() -> str:
    import importlib.metadata as md
    import platform

    def v(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "not installed"

    return (f"fedsec {v('fedsec')} (flwr {v('flwr')}, torch {v('torch')}, ray {v('ray')}, "
            f"python {platform.python_version()})")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(_version_text())
        raise typer.Exit()


def _set_verbosity(quiet: bool, verbose: bool) -> int:
    from fedsec.logging_setup import NORMAL, QUIET, VERBOSE, configure

    if quiet and verbose:
        raise typer.BadParameter("--quiet and --verbose exclude each other")
    level = QUIET if quiet else VERBOSE if verbose else NORMAL
    configure(level)
    _verbosity["level"] = level
    return level


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="print fedsec's version (and Flower's, torch's, Ray's) and exit")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="results and errors only: no progress, no per-round lines")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="debug logging, and Flower's and Ray's warnings "
                                                                  "that are hidden by default (fedsec.logging_setup.SILENCED)")] = False,
) -> None:
    """Federated-learning security simulations (Flower + PyTorch)."""
    _set_verbosity(quiet, verbose)


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


def _round_line(row) -> str:
    """One round as a fixed-width line (``row`` None: the header); ASR last, it varies in width."""
    cols = [("round", 5), ("clean acc", 9), ("test loss", 9), ("train loss", 10), ("accepted", 8),
            ("malicious", 9), ("failed", 6), ("s", 5)]
    if row is None:
        return "  ".join(f"{c:>{w}}" for c, w in cols) + "  ASR"

    def n(key: str) -> str:
        return str(len(row[key])) if isinstance(row.get(key), list) else "-"

    cells = [str(row["round"]), _fmt(row.get("clean_acc")), _fmt(row.get("test_loss")),
             _fmt(row.get("train_loss")), n("accepted"), n("malicious"), n("failed"),
             f"{row['seconds']:.2f}" if isinstance(row.get("seconds"), (int, float)) else "-"]
    asr = ", ".join(f"{k}={_fmt(v)}" for k, v in (row.get("asr") or {}).items()) or "-"
    return "  ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, cols)) + f"  {asr}"


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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="results only (same as fedsec --quiet run)")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="same as fedsec --verbose run")] = False,
) -> None:
    """Run a federation and write its run directory (or continue one with --resume)."""
    import logging

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from fedsec import ScenarioError, load_scenario
    from fedsec.api import run as run_federation
    from fedsec.federation.server import Progress as Hooks

    level = _set_verbosity(quiet, verbose) if quiet or verbose else _verbosity["level"]
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
        err_console.print(f"[red]invalid scenario:[/] {e}", highlight=False)
        raise typer.Exit(2) from None
    from fedsec.federation.env import dataset_of, device_of, initial_state, partitions_of

    # Missing data, an unsatisfiable split, an absent GPU or a bad model.init stop the
    # run here, in one line, before any engine starts (they are cached for the run).
    dataset_of(s), partitions_of(s), device_of(s), initial_state(s)
    logging.getLogger("flwr").setLevel(logging.WARNING)

    from fedsec.report import scenario_line

    if level >= 0:
        console.print(f"[bold]{s.name}[/]: {scenario_line(s.to_dict())}; {s.server.rounds} "
                      f"round{'s' if s.server.rounds > 1 else ''}, engine {s.run.engine}", highlight=False,
                      soft_wrap=True)
    hooks = Hooks()
    per_round = max(int(s.data.num_clients * s.server.fraction_train), 1)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True, disable=level < 0) as bar:
        rounds = bar.add_task("rounds", total=s.server.rounds)
        clients = bar.add_task("round 1 clients", total=per_round)

        def on_reply(reply) -> None:
            if reply.metadata.message_type.startswith("train"):  # not the discovery queries
                bar.advance(clients)

        def on_round_end(row) -> None:
            bar.advance(rounds)
            bar.reset(clients, total=per_round, description=f"round {row['round'] + 1} clients")
            if level < 0:
                return
            if not hooks.extra.get("header_printed"):  # once, with round 0 when the run starts fresh
                hooks.extra["header_printed"] = True
                console.print(_round_line(None), highlight=False, style="bold", soft_wrap=True)
                if row["round"] == 1 and hooks.extra.get("initial"):
                    console.print(_round_line({"round": 0, **hooks.extra["initial"]}), highlight=False,
                                  soft_wrap=True)
            console.print(_round_line(row), highlight=False, soft_wrap=True)

        hooks.on_round_end, hooks.on_reply = on_round_end, on_reply
        result = run_federation(s, output=output, resume=resume, progress=hooks)
    sm = result.summary
    best = (f" (best {sm['best_clean_acc']:.4f} at round {sm['best_round']})"
            if isinstance(sm.get("best_clean_acc"), float) and sm.get("best_round") is not None else "")
    console.print(f"final clean accuracy: [bold]{sm['final_clean_acc']:.4f}[/]{best}", highlight=False)
    for k, v in sm.get("final_asr", {}).items():
        console.print(f"final ASR {k}: {v:.4f}", highlight=False)
    # A plugin's human-readable report (watermark.md, abd.md) is printed with the run.
    for name in dict.fromkeys(pl.name for pl in s.plugins) if result.run_dir and level >= 0 else ():
        report = result.run_dir / f"{name}.md"
        if report.is_file():
            # rendered on a terminal; piped, as the markdown itself (a rendered table is cut to 80 columns)
            console.print(Markdown(report.read_text())) if console.is_terminal else typer.echo(report.read_text())
    console.print(f"run directory: {result.run_dir}", highlight=False, soft_wrap=True)
    if level >= 0:
        console.print(f"curves: {result.run_dir / 'curves.png'}; a report to paste into notes: "
                      f"fedsec report {result.run_dir}", highlight=False, soft_wrap=True)


@app.command("list")
def list_(
    kind: Annotated[Optional[str], typer.Argument(help="only this kind (e.g. rule, behaviour, plugin)")] = None,
) -> None:
    """List every registered component (datasets, models, partitioners, rules, pre-aggregators,
    behaviours, plugins, engines, audit detectors): its first sentence and its parameters."""
    from rich.text import Text

    from fedsec.catalog import UnknownComponent, catalog, kinds_matching

    try:
        wanted = kinds_matching(kind) if kind is not None else None
    except UnknownComponent as e:
        err_console.print(f"[red]error:[/] {e}", highlight=False)
        raise typer.Exit(2) from None
    for title, entries in catalog():
        if wanted is not None and title not in wanted:
            continue
        console.print(f"[bold]{title}s[/] ({len(entries)})")
        t = Table(show_header=True, header_style="dim", expand=True)
        t.add_column("name", no_wrap=True)
        t.add_column("what it is", ratio=3)
        t.add_column("parameters (default)", ratio=2)
        for e in entries:
            ps = [f"{p.name}={p.default}" for p in e.params]
            shown = ", ".join(ps[:6]) + (f", ... +{len(ps) - 6} (fedsec describe {e.name})" if len(ps) > 6 else "")
            t.add_row(e.name, Text(e.summary), Text(shown or "-"))
        console.print(t)


@app.command()
def describe(
    name: Annotated[str, typer.Argument(help="a registered name: a rule, behaviour, plugin, dataset, model, ...")],
    kind: Annotated[Optional[str], typer.Option(help="look only in this kind (when a name is in several)")] = None,
) -> None:
    """Everything about one component: its docstring, its parameters (type, default, the paper's
    symbol) and how a scenario uses it."""
    from rich.markup import escape
    from rich.text import Text

    from fedsec.catalog import UnknownComponent, find, reflow

    try:
        entries = find(name, kind)
    except UnknownComponent as e:
        err_console.print(f"[red]error:[/] {e}", highlight=False)
        raise typer.Exit(2) from None
    for e in entries:
        console.rule(f"[bold]{escape(e.name)}[/]: {e.kind}")
        console.print(f"[dim]{e.target}[/]", highlight=False)
        console.print(reflow(e.doc) or "(no docstring)", highlight=False, markup=False)
        if e.note:
            console.print(e.note, highlight=False)
        if e.params:
            t = Table(title="parameters", title_justify="left", expand=True)
            for col in ("name", "type", "default", "symbol"):
                t.add_column(col, no_wrap=col != "type")
            t.add_column("meaning", ratio=1)
            for p in e.params:
                meaning = " ".join([p.doc, f"(set as {p.where})" if p.where and p.where != "data.partitioner_params"
                                    else f"(in {p.where})" if p.where else ""]).strip()
                t.add_row(*(Text(c) for c in (p.name, p.type, p.default, p.symbol, meaning)))
            console.print(t)
        elif not e.note:
            console.print("parameters: none")
        console.print(f"in a scenario: [bold]{escape(e.usage)}[/]", highlight=False)
        if e.module_doc:
            console.print(f"\n[dim]module {e.target.split(':')[0]}:[/]", highlight=False)
            console.print(reflow(e.module_doc), highlight=False, markup=False)


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


def _load_model_file(path: Path, scenario: Optional[Path]):
    """(scenario, model) of a model file: its embedded scenario, or ``--scenario``."""
    from fedsec import load_scenario
    from fedsec.checkpoint import load_model, load_state
    from fedsec.federation.env import new_model

    if scenario is None:
        return load_model(path, what="MODEL")
    s = load_scenario(scenario)
    net = new_model(s)
    net.load_state_dict(load_state(path, expected=net.state_dict(), what="MODEL"))
    return s, net


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
    from fedsec.data import in_memory
    from fedsec.federation.env import dataset_of, device_of, new_model
    from fedsec.federation.server import eval_triggers_of
    from fedsec.plugins.abd import STUDENT_FILES, ABDConfig, compare, markdown_table, save_student
    from fedsec.scenario import parse_override

    s, teacher = _load_model_file(model, scenario)
    kwargs = dict(parse_override(item, "--param", "steps=2000") for item in param or [])
    try:
        # ABD's randomness follows the teacher's run.seed unless --param seed=... is given.
        cfg = ABDConfig(**kwargs).seeded(s.run.seed)
    except (TypeError, ValueError) as e:
        console.print(f"[red]invalid ABD option: {e}[/]")
        raise typer.Exit(2) from None
    data = dataset_of(s)
    res = compare(teacher, in_shape=data.in_shape, num_classes=data.num_classes, test=in_memory(data.test),
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
    out: Annotated[Optional[Path], typer.Option(help="write the verdict here (JSON); images, and a repair's model (<OUT stem>.repaired.safetensors), go beside it")] = None,
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
    backend: Annotated[str, typer.Option("--backend", help="local (in process / Ray tasks with --jobs) or slurm (one job array via submitit)")] = "local",
    slurm: Annotated[Optional[list[str]], typer.Option("--slurm", help="submitit option KEY=VALUE for --backend slurm: partition, timeout_min, gpus_per_node, array_parallelism, cluster=local, ... (docs/scaling.md)")] = None,
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
            from fedsec.scenario import parse_override

            slurm_opts = dict(parse_override(item, "--slurm", "partition=gpu") for item in slurm or [])
            res = run_sweep(sw, out, jobs=jobs, on_cell=on_cell, on_start=on_start, backend=backend,
                            slurm=slurm_opts)
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
    directory: Annotated[Path, typer.Argument(help="a run directory (`fedsec run`) or a sweep directory (`fedsec bench`)")],
    out: Annotated[Optional[Path], typer.Option(help="run directory only: write report.md and curves.png here "
                                                      "instead of into the run directory")] = None,
) -> None:
    """A run's report.md (summary table, curves.png, per-class accuracy, every round), or a
    sweep's results.csv, results.md and plots rebuilt from its cells' run directories."""
    from rich.markup import escape

    from fedsec.bench import SweepError, write_report
    from fedsec.report import is_run_dir, write_run_report

    if is_run_dir(directory):
        files = write_run_report(directory, out)
        console.print(f"wrote {files['report']} and {files['curves']}", highlight=False, soft_wrap=True)
        return
    try:
        rep = write_report(directory)
    except SweepError as e:
        err_console.print(f"[red]error:[/] {escape(str(e))}; nor is it a run directory (scenario.toml and "
                          "metrics.jsonl)", highlight=False)
        raise typer.Exit(2) from None
    states: dict[str, int] = {}
    for r in rep["records"]:
        states[r["status"]] = states.get(r["status"], 0) + 1
    console.print(f"{len(rep['records'])} cells ({', '.join(f'{v} {k}' for k, v in sorted(states.items()))}); "
                  f"wrote {rep['csv']}, {rep['md']} and {len(rep['plots'])} plots in {directory / 'plots'}")


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="two or more run directories")],
    out: Annotated[Path, typer.Option(help="the PNG to write")] = Path("compare.png"),
    label: Annotated[Optional[list[str]], typer.Option(
        "--label", help="a legend label per run, in order (default: their names, else the scenario "
                        "fields that differ)")] = None,
) -> None:
    """Overlay several runs' clean accuracy, ASR and test loss against rounds in one PNG."""
    from fedsec.report import compare_runs

    path = compare_runs(runs, out, labels=label or None)
    console.print(f"wrote {path}", highlight=False, soft_wrap=True)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
