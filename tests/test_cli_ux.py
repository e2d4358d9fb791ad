"""The command line explains itself: --version, -q/-v, list, describe, did-you-mean, quiet runs."""

import ast
import dataclasses
import importlib.metadata
import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedsec import cli
from fedsec.catalog import catalog, find, first_sentence, parameters, reflow, registries, symbol_of
from fedsec.cli import app
from fedsec.logging_setup import NORMAL, QUIET, SILENCED, configure

runner = CliRunner()
QUICK = "experiments/quickstart.toml"
ROOT = Path(__file__).resolve().parent.parent
FEDSEC = Path(sys.executable).parent / "fedsec"


@pytest.fixture
def wide():
    """A console wide enough that rich wraps no table cell (so a sentence can be found whole)."""
    old = cli.console.width
    cli.console.width = 400
    yield
    cli.console.width = old


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.output.startswith(f"fedsec {importlib.metadata.version('fedsec')} (flwr ")


def test_quiet_and_verbose_exclude_each_other():
    res = runner.invoke(app, ["--quiet", "--verbose", "list"])
    assert res.exit_code == 2 and "exclude each other" in res.output


# -- list / describe -----------------------------------------------------------------------
@pytest.mark.parametrize(("doc", "sentence"), [
    ("BadNets (Gu et al. 2017): stamp a trigger.\n\nMore.", "BadNets (Gu et al. 2017): stamp a trigger."),
    ("Krum-based selection of theta = n - 2f updates, then for every\ncoordinate the mean. Rest.",
     "Krum-based selection of theta = n - 2f updates, then for every coordinate the mean."),
    ("No full stop at all", "No full stop at all"),
    ("1. Norm filter: S1 = {i : L < |g_i|}.\n2. Cluster.", "1. Norm filter: S1 = {i : L < |g_i|}."),
    ("Scale by e.g. two. Then stop.", "Scale by e.g. two."),
])
def test_first_sentence_is_whole(doc, sentence):
    assert first_sentence(doc) == sentence


@pytest.mark.parametrize(("name", "doc", "symbol"), [
    ("z", "z: deviation in standard deviations", "z"),
    ("iters", "L, the number of clipping iterations", "L"),
    ("perturbation", "nabla_p: 'unit_vec' or 'std'", "nabla_p"),
    ("server_lr", "eta: the aggregated update is added times this", "eta"),
    ("mode", "raise: exception in training; exit: the process dies", ""),
    ("min_weight", "MGDA: keep each weight in [w, 1 - w]", ""),
    ("tau", "a fixed clipping norm, or None", ""),
])
def test_symbol_of(name, doc, symbol):
    assert symbol_of(name, doc)[0] == symbol


def test_reflow_joins_plain_paragraphs_only():
    doc = "A plain\nparagraph.\n\nParameters\n----------\nf : f, the number\n    of clients."
    assert reflow(doc) == "A plain paragraph.\n\nParameters\n----------\nf : f, the number\n    of clients."


def test_parameters_of_dataclass_components_are_their_init_fields():
    checked = 0
    for kind, reg, _ in registries():
        for name, cls in reg.items():
            if dataclasses.is_dataclass(cls):
                want = [f.name for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")]
                assert [p.name for p in parameters(cls, kind)] == want, name
                checked += 1
    assert checked > 40


def test_parameters_know_types_defaults_and_symbols():
    from fedsec.strategies import AGGREGATORS

    (f,) = parameters(AGGREGATORS.get("krum"), "aggregation rule")
    assert (f.name, f.type, f.default, f.symbol) == ("f", "int", "0", "f")
    assert f.doc.startswith("the number of Byzantine clients tolerated")
    (cc,) = find("centered_clip")
    assert {p.name: p.symbol for p in cc.params}["iters"] == "L"
    (dirichlet,) = find("dirichlet")
    assert [(p.name, p.where) for p in dirichlet.params] == [
        ("alpha", "data.alpha"), ("min_partition_size", "data.partitioner_params")]
    (cnn,) = find("cnn")
    assert [p.name for p in cnn.params] == ["width", "hidden"]  # in_shape, num_classes are fedsec's


def _every_entry():
    return [(kind, e.name) for kind, entries in catalog() for e in entries]


def test_describe_every_registry_entry(wide):
    """Every component of every registry describes itself: name, kind, each parameter, usage."""
    entries = _every_entry()
    assert {k for k, _ in entries} == {k for k, _, _ in registries()}
    for kind, name in entries:
        res = runner.invoke(app, ["describe", name, "--kind", kind])
        assert res.exit_code == 0, (kind, name, res.output)
        assert f"{name}: {kind}" in res.output
        (e,) = find(name, kind)
        for p in e.params:
            assert re.search(rf"│ {re.escape(p.name)}\s+│", res.output), (name, p.name)
        assert "in a scenario:" in res.output or kind == "audit detector"


def test_describe_a_name_in_two_registries_shows_both():
    res = runner.invoke(app, ["describe", "neural_cleanse"])
    assert res.exit_code == 0
    assert "neural_cleanse: plugin" in res.output and "neural_cleanse: audit detector" in res.output


def test_describe_unknown_name_suggests_the_closest():
    res = runner.invoke(app, ["describe", "krumm"])
    assert res.exit_code == 2 and "did you mean 'krum'" in res.output
    res = runner.invoke(app, ["describe", "krum", "--kind", "rulez"])
    assert res.exit_code == 2 and "unknown kind 'rulez' (did you mean 'rule'?)" in res.output


def test_list_shows_whole_first_sentences_and_parameters(wide):
    res = runner.invoke(app, ["list"])
    assert res.exit_code == 0, res.output
    for title in ("datasets", "models", "partitioners", "aggregation rules", "pre-aggregators",
                  "client behaviours", "plugins", "engines", "audit detectors"):
        assert title in res.output
    # cut mid-sentence before issue 21
    assert ("Bulyan: Krum-based selection of theta = n - 2f updates, then for every coordinate the mean "
            "of the beta = theta - 2f selected values closest to their median.") in res.output
    assert re.search(r"│ krum\s+│ Krum: Return the update x_i\* with the lowest Krum score .*│ f=0\s+│", res.output)
    assert "tensorboard" in res.output and "log_dir=''" in res.output
    res = runner.invoke(app, ["list", "behaviour"])
    assert "client behaviours" in res.output and "aggregation rules" not in res.output


# -- scenario mistakes ---------------------------------------------------------------------
def test_registry_typo_did_you_mean_and_every_error_at_once(tmp_path):
    res = runner.invoke(app, ["run", QUICK, "--set", 'server.aggregator="krumm"', "--set", "server.rouns=3",
                              "--set", 'plugins=[{name = "tensorbord"}]', "--output", str(tmp_path)])
    assert res.exit_code == 2
    out = res.output
    assert "3 problems in the scenario" in out
    assert "server.rouns: unknown key (did you mean 'rounds'?)" in out
    assert "server.aggregator: got 'krumm'" in out and "(did you mean 'krum'?)" in out
    assert "plugins[0].name: got 'tensorbord'" in out and "(did you mean 'tensorboard'?)" in out
    assert not list(tmp_path.iterdir())


# -- logging ------------------------------------------------------------------------------
def test_fedsec_logger_levels():
    buf = io.StringIO()
    log = logging.getLogger("fedsec.test")
    try:
        configure(NORMAL, stream=buf)
        log.info("an info")
        log.debug("a debug")
        configure(QUIET, stream=buf)
        log.info("hidden")
        log.warning("a warning")
    finally:
        configure(NORMAL)
    assert buf.getvalue() == "fedsec: an info\nfedsec warning: a warning\n"


def _prints(node, where, out):
    """print() calls outside command-line entry points (a ``main`` function, an ``if __name__ ==
    "__main__"`` block), which are programs, not library code."""
    if isinstance(node, ast.FunctionDef) and node.name == "main":
        return
    if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
        return
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
        out.append(f"{where}:{node.lineno}")
    for child in ast.iter_child_nodes(node):
        _prints(child, where, out)


def test_library_code_never_prints():
    offenders: list[str] = []
    for folder in ("fedsec", "strategies", "clients"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "cli.py":
                continue
            _prints(ast.parse(path.read_text()), path.relative_to(ROOT), offenders)
    assert not offenders, f"library code prints (use logging.getLogger(__name__)): {offenders}"
    probe: list[str] = []  # the check itself finds a print
    _prints(ast.parse("def f():\n    print(1)\ndef main():\n    print(2)\n"), "probe", probe)
    assert probe == ["probe:2"]


SILENCE_PROBE = """
import logging, warnings, sys
from fedsec.logging_setup import configure
configure(int(sys.argv[1]))
warnings.warn("Tip: In future versions of Ray ... set RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0", FutureWarning)
logging.getLogger("flwr").warning("DEPRECATED FEATURE: The `run_simulation` function is deprecated and will go")
logging.getLogger("flwr").warning("fraction_evaluate is set to 0.0. Federated evaluation will be skipped.")
warnings.warn("an unrelated warning", UserWarning)
"""


@pytest.mark.parametrize("verbosity", [0, 1])
def test_known_third_party_warnings_hidden_unless_verbose(verbosity):
    res = subprocess.run([sys.executable, "-c", SILENCE_PROBE, str(verbosity)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    out = res.stdout + res.stderr
    assert "an unrelated warning" in out  # only the listed ones are hidden
    for s in SILENCED:
        assert (s.match in out) == (verbosity == 1), (s.match, out)


def _quickstart(tmp_path, *extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONWARNINGS", "COLUMNS"))}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([str(FEDSEC), *extra, "run", QUICK, "--set", "server.rounds=1", "--set",
                           "data.num_clients=4", "--engine", "inline", "--output", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)


def test_quickstart_prints_no_warning_and_each_round_once(tmp_path):
    res = _quickstart(tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert not re.search(r"warning", out, re.I), out
    assert len(re.findall(r"(?m)^\s*round\s+clean acc.*ASR$", out)) == 1  # the header, on one line
    assert len(re.findall(r"(?m)^\s+1\s+0\.\d{3}\s", out)) == 1, out  # round 1, once
    assert len(re.findall(r"(?m)^\s+0\s+0\.\d{3}\s", out)) == 1, out  # round 0, the initial model
    assert "final clean accuracy:" in out and "run directory:" in out


def test_quiet_run_prints_results_only(tmp_path):
    res = _quickstart(tmp_path, "--quiet")
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    assert len(lines) == 2 and lines[0].startswith("final clean accuracy:") and lines[1].startswith("run directory:")
    assert res.stderr == ""


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ray", "flower"])
def test_other_engines_print_no_warning(tmp_path, engine):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([str(FEDSEC), "run", QUICK, "--set", "server.rounds=1", "--set", "data.num_clients=4",
                          "--engine", engine, "--output", str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=600, env=env)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert not re.search(r"warning", out, re.I), out
