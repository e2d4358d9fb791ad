"""The detectors as server plugins in a federation, and ``fedsec audit`` on its files."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from fedsec import load_scenario, run
from fedsec.audit.plugins import server_split
from fedsec.audit.runner import client_view, run_audit
from fedsec.cli import app
from fedsec.data import TensorData
from fedsec.scenario import ScenarioError

ATTACK = 'attack=[{behaviour = "badnets", partitions = [0], params = {poison_fraction = 0.3, per = "dataset"}}]'
PLUGINS = ('plugins=[{name = "neural_cleanse", params = {passes = 2, every = 1}}, '
           '{name = "fine_pruning", params = {epochs = 1}}, '
           '{name = "bitflip_deploy", params = {max_flips = 2, attack_batch = 32, compare = ["fine_pruning"]}}]')


@pytest.fixture(scope="module")
def audited_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    s = load_scenario("experiments/quickstart.toml",
                      ["server.rounds=2", "data.num_clients=4", "client.epochs=1", 'run.engine="inline"',
                       f'run.output="{out}"', ATTACK, PLUGINS])
    return run(s)


def test_plugins_report_in_summary_rounds_and_files(audited_run):
    res = audited_run
    plugins = res.summary["plugins"]
    nc = plugins["neural_cleanse"]
    assert set(nc) == {"detector", "flagged", "score", "target", "figures"} and len(nc["figures"]["l1_norms"]) == 10
    assert all("neural_cleanse" in row["plugins"] for row in res.history)  # every = 1
    fp = plugins["fine_pruning"]
    assert fp["model_file"] == "fine_pruned.safetensors" and "badnets" in fp["figures"]["before"]["asr"]
    bf = plugins["bitflip_deploy"]
    assert set(bf) == {"final", "fine_pruning"} and all(v["flips"] <= 2 for v in bf.values())
    for f in ("neural_cleanse.png", "neural_cleanse.md", "fine_pruning.md", "fine_pruned.safetensors",
              "bitflip_deploy.md"):
        assert (res.run_dir / f).is_file(), f


def test_bitflip_compare_without_the_file_says_what_to_do(tmp_path):
    from fedsec.audit.plugins import BitFlipDeploy
    from fedsec.plugins import PluginContext

    g = torch.Generator().manual_seed(0)
    test = TensorData(torch.rand(40, 1, 8, 8, generator=g), torch.arange(40) % 10)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    ctx = PluginContext(scenario=None, test=test, num_classes=10, in_shape=(1, 8, 8), run_dir=tmp_path,
                        device=torch.device("cpu"), make_model=lambda: model)
    out = BitFlipDeploy(max_flips=1, compare=["abd", "neural_cleanse_pruned"]).on_run_end(model, ctx)
    assert "list bitflip_deploy after the 'abd' plugin" in out["abd"]["error"]
    assert "nc_pruned.safetensors not found" in out["neural_cleanse_pruned"]["error"]
    assert "'neural_cleanse' plugin with mitigate = \"prune\"" in out["neural_cleanse_pruned"]["error"]


def test_bad_plugin_params_are_scenario_errors():
    for item, msg in [('plugins=[{name = "neural_cleanse", params = {every = -1}}]', "every"),
                      ('plugins=[{name = "fine_pruning", params = {max_acc_dro = 0.1}}]', "max_acc_drop"),
                      ('plugins=[{name = "bitflip_deploy", params = {compare = ["watermark"]}}]', "compare")]:
        with pytest.raises(ScenarioError, match=msg):
            load_scenario("experiments/quickstart.toml", [item])


def test_server_split_is_disjoint_and_seeded():
    test = TensorData(torch.arange(20.0).view(20, 1, 1, 1), torch.arange(20))
    a, b = server_split(test, 0.25, 0)
    assert len(a) == 5 and len(b) == 15 and not set(a.y.tolist()) & set(b.y.tolist())
    assert torch.equal(server_split(test, 0.25, 0)[0].y, a.y) and not torch.equal(server_split(test, 0.25, 1)[0].y, a.y)


def test_client_view_marks_the_rows_badnets_changed(audited_run):
    view = client_view(audited_run.scenario, 0)
    assert view.behaviour == "badnets"
    assert 0.2 * len(view.data) < int(view.poisoned.sum()) <= 0.3 * len(view.data) + 1
    assert bool((view.data.y[view.poisoned] == 0).all())
    honest = client_view(audited_run.scenario, 1)
    assert honest.behaviour == "honest" and int(honest.poisoned.sum()) == 0


def test_cli_audit_prints_and_writes_json(audited_run, tmp_path):
    model = audited_run.run_dir / "model.safetensors"
    out = tmp_path / "verdict.json"
    r = CliRunner().invoke(app, ["audit", str(model), "--detector", "spectral_signatures", "--param", "eps=0.3",
                                 "--partition", "0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    printed, written = json.loads(r.output), json.loads(out.read_text())
    assert printed == written
    f = written["figures"]
    assert f["source"]["behaviour"] == "badnets" and f["n_poisoned"] == f["source"]["n_changed_by_behaviour"]
    assert 0 <= f["recall"] <= 1 and f["params"]["eps"] == 0.3


def test_cli_audit_errors_are_one_line(audited_run):
    model = str(audited_run.run_dir / "model.safetensors")
    for args, msg in [(["--detector", "nope"], "unknown audit detector 'nope'"),
                      (["--detector", "fine_pruning", "--param", "epochs"], "expected KEY=VALUE"),
                      (["--detector", "fine_pruning", "--param", "epochs=-1"], "fine_pruning.epochs"),
                      (["--detector", "frequency", "--partition", "99"], "partition")]:
        r = CliRunner().invoke(app, ["audit", model, *args])
        assert r.exit_code == 2 and msg in r.output, r.output
    r = CliRunner().invoke(app, ["audit", "missing.safetensors", "--detector", "fine_pruning"])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_run_audit_on_the_fine_pruned_file_measures_the_repair(audited_run):
    res = run_audit(audited_run.run_dir / "fine_pruned.safetensors", "fine_pruning", {"epochs": 0, "prune_ratio": 0.25})
    assert res.figures["source"]["model"].endswith("fine_pruned.safetensors")
    assert "badnets" in res.figures["before"]["asr"]


def test_cli_audit_saves_the_repaired_model_beside_the_verdict(audited_run, tmp_path):
    model = audited_run.run_dir / "model.safetensors"
    out = tmp_path / "fp.json"
    r = CliRunner().invoke(app, ["audit", str(model), "--detector", "fine_pruning", "--param", "epochs=0",
                                 "--param", "prune_ratio=0.25", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text())["figures"]["repaired_model"] == "fp.repaired.safetensors"
    # the saved model is the pruned one, and loads like any model file (scenario embedded)
    again = run_audit(tmp_path / "fp.repaired.safetensors", "fine_pruning", {"epochs": 0, "prune_ratio": 0.25})
    assert again.figures["before"] == json.loads(out.read_text())["figures"]["after_pruning"]
    # a detection-only run writes no model
    r = CliRunner().invoke(app, ["audit", str(model), "--detector", "neural_cleanse", "--param", "passes=2",
                                 "--out", str(tmp_path / "nc.json")])
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "nc.repaired.safetensors").exists()
