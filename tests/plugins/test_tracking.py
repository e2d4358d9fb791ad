"""Tracking plugins: TensorBoard event files from a real run; W&B / MLflow call patterns on fakes."""

import json
import sys
import types

import pytest
import torch

from fedsec import Scenario, ScenarioError, load_scenario, run
from fedsec.plugins import PLUGINS, PluginContext
from fedsec.plugins import tracking
from fedsec.plugins.tracking import MissingTracker, final_scalars, scalars
from fedsec.results import RunWriter

QUICK = "experiments/quickstart.toml"
ROW = {"round": 2, "clean_acc": 0.5, "asr": {"badnets": 0.25}, "detection": {"precision": None, "recall": 1.0,
       "fpr": 0.0}, "per_class_acc": [1.0, 0.0], "sampled": [0, 1], "accepted": [1], "malicious": [0],
       "failed": [], "nonfinite": [], "seconds": 1.5, "train_loss": float("nan"), "scores": {"0": 3.0, "1": 0.5}}


def _accumulator(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(path), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    return ea


def _ctx(run_dir, scenario=None):
    return PluginContext(scenario=scenario or Scenario(name="t"), test=None, num_classes=2, in_shape=(1, 8, 8),
                         run_dir=run_dir, device=torch.device("cpu"), make_model=lambda: None)


def test_scalars_flatten_the_numeric_fields():
    assert scalars(ROW) == {"clean_acc": 0.5, "asr/badnets": 0.25, "detection/recall": 1.0, "detection/fpr": 0.0,
                            "per_class_acc/0": 1.0, "per_class_acc/1": 0.0, "seconds": 1.5,
                            "scores/0": 3.0, "scores/1": 0.5, "num_sampled": 2.0, "num_accepted": 1.0,
                            "num_malicious": 1.0, "num_failed": 0.0, "num_nonfinite": 0.0}
    rows = [{**ROW, "round": 1, "clean_acc": 0.7, "asr": {"badnets": 0.9}}, ROW]
    assert final_scalars(rows) == {"final/clean_acc": 0.5, "final/asr/badnets": 0.25, "best/clean_acc": 0.7,
                                   "max/asr/badnets": 0.9}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tensorboard_plugin_writes_event_files_of_a_real_run(tmp_path):
    s = load_scenario(QUICK, ['run.engine="inline"', "server.rounds=2", "data.num_clients=4", "client.epochs=1",
                              'attack=[{behaviour = "badnets", partitions = [0]}]',
                              'plugins=[{name = "tensorboard"}]'])
    r = run(s, output=tmp_path)
    tb = r.run_dir / "tensorboard"
    assert list(tb.glob("events.out.tfevents.*"))
    assert r.summary["plugins"]["tensorboard"] == {"rounds_logged": 2, "log_dir": str(tb)}
    ea = _accumulator(tb)
    rows = [json.loads(line) for line in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
    for tag, value in (("clean_acc", lambda row: row["clean_acc"]), ("asr/badnets", lambda row: row["asr"]["badnets"]),
                       ("test_loss", lambda row: row["test_loss"]), ("per_class_acc/3", lambda row: row["per_class_acc"][3])):
        events = ea.Scalars(tag)
        # the Federation's on_round_recorded hook logs round 0 (the initial model) too
        assert [e.step for e in events] == [0, 1, 2], tag
        assert [e.value for e in events][1:] == pytest.approx([value(row) for row in rows], rel=1e-6), tag
    assert ea.Scalars("final/clean_acc")[0].value == pytest.approx(rows[-1]["clean_acc"])
    assert "curves" in ea.Tags()["images"]
    assert "scenario/text_summary" in ea.Tags()["tensors"]


def test_tensorboard_hook_logs_round_zero_and_each_round_once(tmp_path):
    writer = RunWriter(tmp_path, "t")
    plugin = PLUGINS.get("tensorboard")()
    ctx = _ctx(writer.path)
    plugin.on_round_recorded({"round": 0, "clean_acc": 0.1, "asr": {}, "per_class_acc": [0.1, 0.1]}, ctx)
    for r in (1, 2):
        row = {**ROW, "round": r, "clean_acc": r / 10}
        writer.append_round(row)
        plugin.on_round_end(r, None, ctx)  # hooked: reads nothing from metrics.jsonl
        plugin.on_round_recorded(row, ctx)
    figures = plugin.on_run_end(None, ctx)  # catches up from metrics.jsonl: nothing new
    assert figures["rounds_logged"] == 2
    events = _accumulator(writer.path / "tensorboard").Scalars("clean_acc")
    assert [(e.step, round(e.value, 6)) for e in events] == [(0, 0.1), (1, 0.1), (2, 0.2)]


def test_without_the_hook_rounds_are_read_from_metrics_jsonl(tmp_path):
    writer = RunWriter(tmp_path, "t")
    plugin = PLUGINS.get("tensorboard")(log_dir=str(tmp_path / "tb"))
    ctx = _ctx(writer.path)
    for r in (1, 2, 3):
        writer.append_round({**ROW, "round": r, "clean_acc": r / 10})
        plugin.on_round_end(r, None, ctx)  # runs before round r is recorded: logs rounds < r
    assert sorted(plugin._state["seen"]) == [1, 2]
    plugin.on_run_end(None, ctx)
    events = _accumulator(tmp_path / "tb").Scalars("clean_acc")
    assert [e.step for e in events] == [1, 2, 3]


def test_a_resumed_run_sends_no_round_twice(tmp_path):
    from fedsec.federation.checkpointing import stateful_parts

    writer = RunWriter(tmp_path, "t")
    ctx = _ctx(writer.path)
    first = PLUGINS.get("tensorboard")()
    for r in (1, 2):
        writer.append_round({**ROW, "round": r, "clean_acc": r / 10})
        first.on_round_end(r + 1, None, ctx)
    parts = stateful_parts(None, [("tensorboard", first)])
    saved = json.loads(json.dumps(parts["plugin0.tensorboard"].state_dict()))  # what a checkpoint keeps
    first._close()  # the process dies here
    second = PLUGINS.get("tensorboard")()
    second.load_state_dict(saved)
    writer.append_round({**ROW, "round": 3, "clean_acc": 0.3})
    assert second.on_run_end(None, ctx)["rounds_logged"] == 3
    events = _accumulator(writer.path / "tensorboard").Scalars("clean_acc")
    assert sorted(e.step for e in events) == [1, 2, 3]


def test_missing_tracker_package_is_a_clear_scenario_error(monkeypatch):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(MissingTracker, match=r"pip install 'fedsec\[tensorboard\]'"):
        PLUGINS.get("tensorboard")()
    with pytest.raises(ScenarioError, match=r"plugins\[0\]\.params: the tensorboard plugin needs the 'tensorboard' "
                                            r"package, which is not installed"):
        load_scenario(QUICK, ['plugins=[{name = "tensorboard"}]'])


def test_bad_parameters_name_the_field():
    with pytest.raises(ValueError, match=r"tensorboard.flush_secs: got 0"):
        PLUGINS.get("tensorboard")(flush_secs=0)


class _Recorder:
    """A stand-in tracker module: records every call (the real packages are optional)."""

    def __init__(self):
        self.calls = []

    def __getattr__(self, name):
        def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            return self
        return call


@pytest.fixture
def fake(monkeypatch):
    def install(name):
        rec = _Recorder()
        module = types.ModuleType(name)
        module.__getattr__ = rec.__getattr__
        monkeypatch.setitem(sys.modules, name, module)
        real = tracking.importlib.util.find_spec
        monkeypatch.setattr(tracking.importlib.util, "find_spec",
                            lambda n, *a: object() if n == name else real(n, *a))
        return rec
    return install


def test_wandb_runs_offline_and_logs_every_round(tmp_path, fake):
    wandb = fake("wandb")
    run_obj = _Recorder()
    run_obj.summary = {}
    wandb.init = lambda **kw: wandb.calls.append(("init", (), kw)) or run_obj  # type: ignore[attr-defined]
    sys.modules["wandb"].init = wandb.init
    writer = RunWriter(tmp_path, "t")
    plugin = PLUGINS.get("wandb")()
    ctx = _ctx(writer.path, Scenario(name="wb"))
    for r in (1, 2):
        plugin.on_round_recorded({**ROW, "round": r}, ctx)
        writer.append_round({**ROW, "round": r})
    plugin.on_run_end(None, ctx)
    (init,) = [c for c in wandb.calls if c[0] == "init"]
    assert init[2]["mode"] == "offline" and init[2]["name"] == "wb" and init[2]["dir"] == str(writer.path)
    assert init[2]["config"]["name"] == "wb"
    logs = [c for c in run_obj.calls if c[0] == "log"]
    assert [c[2]["step"] for c in logs] == [1, 2, 2]  # two rounds, then the curves image at the last step
    assert logs[0][1][0]["clean_acc"] == 0.5 and "curves" in logs[2][1][0]
    assert run_obj.summary["final/clean_acc"] == 0.5
    assert run_obj.calls[-1][0] == "finish"


def test_mlflow_logs_to_a_file_store_under_the_run(tmp_path, fake):
    mlflow = fake("mlflow")
    writer = RunWriter(tmp_path, "t")
    plugin = PLUGINS.get("mlflow")()
    ctx = _ctx(writer.path, Scenario(name="ml"))
    for r in (1, 2):
        writer.append_round({**ROW, "round": r})
        plugin.on_round_end(r + 1, None, ctx)  # no hook: read back from metrics.jsonl
    plugin.on_run_end(None, ctx)
    names = [c[0] for c in mlflow.calls]
    assert names[:4] == ["set_tracking_uri", "set_experiment", "start_run", "log_params"]
    assert mlflow.calls[0][1][0] == (writer.path / "mlruns").resolve().as_uri()
    assert mlflow.calls[3][1][0]["server.aggregator"] == "mean"
    steps = [c[2]["step"] for c in mlflow.calls if c[0] == "log_metrics" and "step" in c[2]]
    assert steps == [1, 2]
    assert names[-2:] == ["log_figure", "end_run"] and mlflow.calls[-2][1][1] == "curves.png"
