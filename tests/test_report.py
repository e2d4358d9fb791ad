"""Per-round metrics, load_run, curves.png, report.md and compare on real tiny runs."""

import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file

from fedsec import load_run, load_scenario, run
from fedsec.federation.env import dataset_of, new_model
from fedsec.federation.federation import RoundOutcome
from fedsec.report import (
    RUN_COLUMNS,
    attack_windows,
    compare_runs,
    curves_figure,
    read_scenario_dict,
    run_labels,
    scenario_line,
    write_curves,
    write_run_report,
)
from fedsec.results import ResultsError, read_metrics

QUICK = "experiments/quickstart.toml"
TINY = ['run.engine="inline"', "data.num_clients=4", "client.epochs=1"]
BADNETS = 'attack=[{behaviour = "badnets", partitions = [0], start_round = 2}]'


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    """3 rounds, 4 clients, partition 0 runs BadNets from round 2 (about 10 s)."""
    s = load_scenario(QUICK, [*TINY, "server.rounds=3", 'name="attacked"', BADNETS])
    return run(s, output=tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def honest(tmp_path_factory):
    s = load_scenario(QUICK, [*TINY, "server.rounds=2", 'name="honest"', 'server.aggregator="median"'])
    return run(s, output=tmp_path_factory.mktemp("runs"))


# -- the new per-round metrics -----------------------------------------------------------
def test_per_class_accuracy_weighted_by_class_counts_is_the_clean_accuracy(attacked):
    counts = torch.bincount(dataset_of(attacked.scenario).test.y, minlength=10).double()
    points = [attacked.summary["initial"], *attacked.history]
    for p in points:
        pc = torch.tensor(p["per_class_acc"], dtype=torch.float64)
        assert len(pc) == 10 and bool(((pc >= 0) & (pc <= 1)).all())
        assert float((pc * counts).sum() / counts.sum()) == pytest.approx(p["clean_acc"], abs=1e-12)
    # not trivially equal: the classes differ (a uniform vector would pass any weighting)
    assert len({round(v, 6) for v in attacked.history[-1]["per_class_acc"]}) > 1


def test_test_loss_and_accuracy_match_an_independent_evaluation_of_the_saved_model(attacked):
    s = attacked.scenario
    model = new_model(s)
    model.load_state_dict(load_file(attacked.run_dir / "model.safetensors"))
    model.eval()
    test = dataset_of(s).test
    with torch.no_grad():
        logits = model(test.x)
    loss = torch.nn.functional.cross_entropy(logits, test.y).item()
    acc = (logits.argmax(1) == test.y).double().mean().item()
    last = attacked.history[-1]
    assert last["test_loss"] == pytest.approx(loss, rel=1e-5)
    assert last["clean_acc"] == pytest.approx(acc, abs=1e-12)
    assert attacked.summary["final_test_loss"] == last["test_loss"]


def test_train_loss_is_the_example_weighted_mean_of_the_clients():
    o = RoundOutcome(round=1, sampled=(0, 1, 2), replied=(0, 1), failed=((2, "boom"),), nonfinite=(),
                     accepted=(0, 1), scores=None, malicious=(), train_loss={0: 1.0, 1: 3.0},
                     num_examples={0: 30.0, 1: 10.0}, bytes_received=8,
                     evaluation={"clean_acc": 0.5, "test_loss": 0.7, "per_class_acc": [0.5], "asr": {}},
                     plugins={}, timings={"train": 1.0, "aggregate": 0.25, "plugins": 0.0, "evaluate": 0.5,
                                          "total": 2.0})
    row = o.row()
    assert row["train_loss"] == pytest.approx((1.0 * 30 + 3.0 * 10) / 40)  # 1.5, not the plain mean 2.0
    assert (row["train_seconds"], row["agg_seconds"], row["eval_seconds"], row["seconds"]) == (1.0, 0.25, 0.5, 2.0)
    assert row["failed"] == [{"partition": 2, "reason": "boom"}]


def test_round_timings_and_bytes_received(attacked):
    model = new_model(attacked.scenario)
    per_client = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    for row in attacked.history:
        replied = len(row["sampled"]) - len(row["failed"])
        assert row["bytes_received"] == replied * per_client
        for k in ("train_seconds", "agg_seconds", "eval_seconds"):
            assert 0 <= row[k] <= row["seconds"], (k, row)
        assert row["train_seconds"] + row["agg_seconds"] + row["eval_seconds"] <= row["seconds"] + 1e-6


def test_asr_of_every_trigger_and_the_summary_figures(attacked):
    rows, sm = attacked.history, attacked.summary
    assert all(set(r["asr"]) == {"badnets"} for r in rows)
    assert [r["malicious"] for r in rows] == [[], [0], [0]]
    accs = [r["clean_acc"] for r in rows]
    assert sm["best_clean_acc"] == max(accs) and sm["best_round"] == rows[accs.index(max(accs))]["round"]
    assert sm["max_asr"]["badnets"] == max(r["asr"]["badnets"] for r in rows)
    assert "badnets" in sm["asr_lifespan"]  # a backdoor ran: its lifespan is reported
    assert sm["final_train_loss"] == rows[-1]["train_loss"]


# -- load_run ------------------------------------------------------------------------------
def _documented(col: str) -> bool:
    for key in RUN_COLUMNS:
        pattern = "^" + re.sub(r"<[^>]+>", "[^.]+", re.escape(key).replace(r"\<", "<").replace(r"\>", ">")) + "$"
        if re.match(pattern, col):
            return True
    return False


def test_load_run_one_row_per_round_flattened(attacked):
    df = load_run(attacked.run_dir)
    rows, initial = attacked.history, attacked.summary["initial"]
    assert list(df["round"]) == [0, 1, 2, 3]
    assert df["clean_acc"].tolist() == [initial["clean_acc"], *[r["clean_acc"] for r in rows]]
    assert df["asr.badnets"].tolist() == [initial["asr"]["badnets"], *[r["asr"]["badnets"] for r in rows]]
    assert [c for c in df.columns if c.startswith("per_class_acc.")] == [f"per_class_acc.{c}" for c in range(10)]
    assert df.loc[3, "per_class_acc.4"] == rows[-1]["per_class_acc"][4]
    assert df["num_malicious"].tolist() == [0, 0, 1, 1]
    assert math.isnan(df.loc[0, "train_loss"]) and df.loc[1, "train_loss"] == rows[0]["train_loss"]
    # JSON nulls (precision with nobody rejected) are NaN in a float column
    assert df["detection.precision"].dtype == "float64" and df["detection.precision"].isna().all()
    assert df["detection.recall"].tolist()[2:] == [r["detection"]["recall"] for r in rows[1:]]
    assert df.attrs["name"] == "attacked" and df.attrs["summary"]["status"] == "completed"
    assert df.attrs["scenario"]["attack"][0]["behaviour"] == "badnets"
    undocumented = [c for c in df.columns if not _documented(c)]
    assert not undocumented, f"columns missing from RUN_COLUMNS: {undocumented}"


def test_load_run_without_round_zero_and_on_a_wrong_directory(attacked, tmp_path):
    df = load_run(attacked.run_dir, initial=False)
    assert list(df["round"]) == [1, 2, 3]
    with pytest.raises(ResultsError, match="not a run directory"):
        load_run(tmp_path)
    with pytest.raises(ResultsError, match="does not exist"):
        load_run(tmp_path / "missing")


def test_the_documented_schema_names_every_fixed_column_once():
    text = open("docs/results.md").read()
    for key in RUN_COLUMNS:
        assert f"`{key}`" in text, key


# -- curves.png ----------------------------------------------------------------------------
def test_attack_windows_merge_consecutive_rounds():
    rows = [{"round": r, "malicious": [0] if r in (2, 3, 5) else []} for r in range(1, 7)]
    assert attack_windows(rows) == [(2, 3), (5, 5)]
    assert attack_windows([{"round": 1, "malicious": []}]) == []


def test_scenario_line_names_rule_attack_fraction_and_split():
    raw = {"data": {"num_clients": 20, "alpha": 0.1, "dataset": "digits"}, "model": {"name": "cnn"},
           "server": {"aggregator": "krum", "aggregator_params": {"f": 4}},
           "attack": [{"behaviour": "alie", "partitions": [0, 1, 2, 3]}]}
    assert scenario_line(raw) == "krum(f=4) vs alie · 4/20 clients malicious (20%) · Dirichlet α=0.1 · digits, cnn"
    honest = {"data": {"num_clients": 10, "partitioner": "iid"}}
    assert scenario_line(honest) == "mean, no attack · 10 clients, all honest · IID · digits, cnn"


def test_curves_figure_of_a_real_run(attacked):
    d = attacked.run_dir
    assert (d / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (d / "accuracy.png").exists()
    fig = curves_figure(read_metrics(d), json.loads((d / "summary.json").read_text()), read_scenario_dict(d))
    top, bottom = fig.axes[0], fig.axes[1]
    title = fig._suptitle.get_text()
    for part in ("attacked", "mean", "badnets", "1/4 clients malicious (25%)", "Dirichlet α=0.5"):
        assert part in title
    acc = top.get_lines()[0]
    assert list(acc.get_xdata()) == [0, 1, 2, 3]  # from round 0
    assert acc.get_ydata()[0] == attacked.summary["initial"]["clean_acc"]
    labels = [t.get_text() for t in top.get_legend().get_texts()]
    assert any(lab.startswith("ASR badnets") for lab in labels)
    assert any(lab.startswith("attack active (rounds 2-3)") for lab in labels)
    xs = sorted(round(v, 2) for p in top.patches for v in (p.get_x(), p.get_x() + p.get_width()))
    assert xs == [1.5, 3.5]  # rounds 2-3 shaded, edges half a round out
    assert top.get_ylabel() and bottom.get_xlabel().startswith("round")
    assert "test loss" in [ln.get_label() for ln in bottom.get_lines()]
    fig.canvas.draw()
    lo, hi = bottom.get_xlim()
    ticks = [t for t in bottom.get_xticks() if lo <= t <= hi]
    assert ticks == [0, 1, 2, 3]  # whole rounds only, even on a 3-round run


def test_curves_from_rows_alone_have_one_panel(tmp_path):
    rows = [{"round": r, "clean_acc": 0.5 + r / 10, "asr": {"x": 0.1}, "malicious": []} for r in (1, 2)]
    out = write_curves(rows, tmp_path)
    assert out.name == "curves.png" and out.stat().st_size > 0
    fig = curves_figure(rows)
    assert len(fig.axes) == 1 and fig._suptitle.get_text() == "run"


# -- report.md and compare -----------------------------------------------------------------
def test_run_report_markdown(attacked, tmp_path):
    files = write_run_report(attacked.run_dir, tmp_path)
    text = files["report"].read_text()
    sm = attacked.summary
    assert text.startswith("# attacked\n")
    assert f"{100 * sm['initial']['clean_acc']:.1f}% → {100 * sm['final_clean_acc']:.1f}%" in text
    assert "| attack active in | rounds 2-3 |" in text
    assert "![clean accuracy, ASR and loss per round](curves.png)" in text
    assert "## Per-class test accuracy" in text and "| initial |" in text
    table = text.split("## Rounds")[1]
    assert len([ln for ln in table.splitlines() if re.match(r"^\| [0-9]+ \|", ln)]) == 4  # rounds 0-3
    assert 'name = "attacked"' in text and (tmp_path / "curves.png").is_file()


def test_compare_overlays_runs_and_labels_them(attacked, honest, tmp_path):
    out = compare_runs([attacked.run_dir, honest.run_dir], tmp_path / "c.png")
    assert out.read_bytes()[:4] == b"\x89PNG"
    raws = [read_scenario_dict(d) for d in (attacked.run_dir, honest.run_dir)]
    assert run_labels(raws, [attacked.run_dir, honest.run_dir]) == ["attacked", "honest"]
    same = [{**r, "name": "x"} for r in raws]
    labels = run_labels(same, [attacked.run_dir, honest.run_dir])
    assert "aggregator=mean" in labels[0] and "aggregator=median" in labels[1]
    assert "attack=badnets x1" in labels[0] and "attack=no attack" in labels[1]
    with pytest.raises(ResultsError, match="2 labels for 1 runs"):
        compare_runs([attacked.run_dir], tmp_path / "d.png", labels=["a", "b"])


def test_cli_report_on_a_run_and_on_neither(attacked, tmp_path):
    from typer.testing import CliRunner

    from fedsec.cli import app

    res = CliRunner().invoke(app, ["report", str(attacked.run_dir), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "report.md").is_file()
    res = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert res.exit_code == 2
    assert "not a sweep directory" in res.output and "nor is it a run directory" in res.output
    res = CliRunner().invoke(app, ["compare", str(attacked.run_dir), str(attacked.run_dir),
                                   "--out", str(tmp_path / "c.png"), "--label", "a", "--label", "b"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c.png").is_file()
