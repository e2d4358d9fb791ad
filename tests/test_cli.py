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


def test_craft_backdoor_then_a_federation_starts_from_it(tmp_path):
    ckpt = tmp_path / "bd.safetensors"
    res = runner.invoke(app, ["craft-backdoor", str(ckpt), "--epochs", "2"])
    assert res.exit_code == 0, res.output
    assert ckpt.is_file() and "ASR" in res.output
    res = runner.invoke(app, ["run", "experiments/quickstart.toml", "--set", "server.rounds=1", "--set", 'run.engine="inline"',
                              "--set", "data.num_clients=4", "--set", f'model.init="{ckpt}"',
                              "--output", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    (d,) = list((tmp_path / "runs").iterdir())
    initial = json.loads((d / "summary.json").read_text())["initial"]["clean_acc"]
    assert initial > 0.8  # round 0 is the crafted model, not a random init


def test_craft_backdoor_bad_argument_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["craft-backdoor", str(tmp_path / "bd.bin")])
    assert res.exit_code == 2 and "out: got" in res.output and ".safetensors" in res.output


def test_distill_a_run_model_with_its_embedded_scenario(tmp_path):
    res = runner.invoke(app, ["run", "experiments/quickstart.toml", "--set", "server.rounds=1", "--set", 'run.engine="inline"',
                              "--set", "data.num_clients=4", "--output", str(tmp_path)])
    assert res.exit_code == 0, res.output
    (d,) = list(tmp_path.iterdir())
    out = tmp_path / "abd.md"
    res = runner.invoke(app, ["distill", str(d / "model.safetensors"), "--param", "steps=3",
                              "--param", "kd=\"ood\"", "--param", "ood_n=64", "--param", "batch_size=16",
                              "--param", "sv=false", "--param", "sr=false", "--param", "eval_every=2",
                              "--out", str(out), "--students", str(tmp_path / "students")])
    assert res.exit_code == 0, res.output
    assert "[kd] step 2/3 acc" in res.output and "step 3/3" not in res.output  # eval_every prints the curve
    assert "Teacher" in out.read_text() or "teacher" in out.read_text()
    # the distilled student is kept, with a scenario that rebuilds it; KD alone -> one file
    assert sorted(p.name for p in (tmp_path / "students").iterdir()) == ["student_kd.safetensors"]
    from safetensors import safe_open
    from safetensors.torch import load_file

    from fedsec.federation.env import dataset_of, new_model, scenario_from_toml
    from fedsec.metrics import accuracy

    path = tmp_path / "students" / "student_kd.safetensors"
    with safe_open(str(path), "pt") as f:
        s = scenario_from_toml(f.metadata()["scenario"])
    student = new_model(s)
    student.load_state_dict(load_file(str(path)))
    row = out.read_text().splitlines()[2]  # no attack in quickstart: one row, ASR "-"
    assert row.startswith("| (no trigger) |")
    kd_cell = row.split("|")[3].strip()  # "acc/asr" of the KD column
    assert kd_cell.split("/")[0] == f"{100 * accuracy(student.eval(), dataset_of(s).test):.1f}"
    bad = runner.invoke(app, ["distill", str(d / "model.safetensors"), "--param", "stepz=3"])
    assert bad.exit_code == 2 and "invalid ABD option" in bad.output


def test_run_prints_a_plugin_report(tmp_path):
    """`fedsec run` prints the watermark plugin's paper-style table after the rounds."""
    wm = ('plugins=[{name = "watermark", params = {n_surrogate = 128, n_verify_ood = 64, epochs = 1, '
          'perturb_epochs = 1, attacks = ["FT-LL"], attack_epochs = 1, control_epochs = 1}}]')
    res = runner.invoke(app, ["run", "experiments/quickstart.toml", "--set", "server.rounds=1",
                              "--set", 'run.engine="inline"', "--set", "data.num_clients=4",
                              "--set", wm, "--output", str(tmp_path)])
    assert res.exit_code == 0, res.output
    (d,) = list(tmp_path.iterdir())
    assert (d / "watermark.md").is_file()
    for text in ("OoD WSR", "FT-LL", "negative control"):
        assert text in res.output
