import json

from typer.testing import CliRunner

from fedsec.cli import app

runner = CliRunner()


def test_run_prints_table_accuracy_and_run_dir(tmp_path):
    res = runner.invoke(app, ["run", "experiments/quickstart.toml", "--set", "server.rounds=2",
                              "--set", "data.num_clients=4", "--set", "data.alpha=0.1",
                              "--output", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "final clean accuracy:" in res.output and "run directory:" in res.output
    (d,) = list(tmp_path.iterdir())
    assert str(d.name) in res.output.replace("\n", "")
    assert 'alpha = 0.1' in (d / "scenario.toml").read_text()
    assert len((d / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((d / "summary.json").read_text())["rounds"] == 2


def test_run_rejects_invalid_scenario_before_running(tmp_path):
    res = runner.invoke(app, ["run", "experiments/quickstart.toml", "--set", "server.rouns=2",
                              "--output", str(tmp_path)])
    assert res.exit_code == 2
    assert "server.rouns: unknown key (did you mean 'rounds'?)" in res.output
    assert not list(tmp_path.iterdir())


def test_list_shows_every_registry():
    res = runner.invoke(app, ["list"])
    assert res.exit_code == 0, res.output
    for word in ("datasets", "digits", "models", "wrn", "partitioners", "dirichlet",
                 "aggregation rules", "mean", "client behaviours", "honest", "plugins", "engines", "inline"):
        assert word in res.output
