"""Sweep report: the worst case over attacks (ByzFL's way of choosing a rule), its rows in
results.md and results.csv, seed bands and the labels of the figures, on hand-made records."""

import csv
import io
import itertools
import math

import pytest

from fedsec.bench import best_rule, results_csv, results_md, worst_per_attack, worst_per_rule
from fedsec.bench.plots import band, write_plots
from fedsec.bench.records import higher_is_better

AGGS = ["mean", "median", "krum"]
ATTACKS = ["none", "alie", "ipm", "badnets"]
MANIFEST = {"name": "hand", "description": "", "aggregators": AGGS, "attacks": ATTACKS, "vary": []}
# (attack, aggregator) -> final clean accuracy for seeds 0 and 1
ACC = {
    ("none", "mean"): (0.95, 0.93), ("none", "median"): (0.90, 0.92), ("none", "krum"): (0.75, 0.77),
    ("alie", "mean"): (0.40, 0.50), ("alie", "median"): (0.70, 0.60), ("alie", "krum"): (0.80, 0.82),
    ("ipm", "mean"): (0.60, 0.64), ("ipm", "median"): (0.30, 0.20), ("ipm", "krum"): (0.83, 0.81),
    ("badnets", "mean"): (0.90, 0.92), ("badnets", "median"): (0.88, 0.86), ("badnets", "krum"): (0.84, 0.80),
}
# badnets has a trigger; alie and ipm do not (no ASR: not a missing value)
ASR = {("badnets", "mean"): (0.9, 1.0), ("badnets", "median"): (0.5, 0.7), ("badnets", "krum"): (0.1, 0.3)}


def _records(acc=ACC, asr=ASR, failed=()):
    recs = []
    for (att, agg), seed in itertools.product(ACC, (0, 1)):
        r = {"aggregator": agg, "attack": att, "malicious_fraction": 0.2, "alpha": 0.5, "seed": seed,
             "num_malicious": 0 if att == "none" else 2, "digest": f"{att}-{agg}-{seed}", "status": "done",
             "final_clean_acc": acc[att, agg][seed], "curve_round": [0, 1, 2],
             "curve_acc": [0.1, 0.5, acc[att, agg][seed]]}
        if (att, agg) in asr:
            r.update({"final_asr": asr[att, agg][seed], "final_asr.badnets": asr[att, agg][seed]})
        if (att, agg, seed) in failed:
            r = {k: v for k, v in r.items() if k not in ("final_clean_acc", "final_asr", "final_asr.badnets",
                                                        "curve_acc", "curve_round")}
            r.update(status="failed", error="boom")
        recs.append(r)
    return recs


def _seed_mean(table, att, agg):
    return sum(table[att, agg]) / len(table[att, agg])


def test_worst_attack_per_rule_is_the_min_over_attacks_of_the_seed_mean():
    per_rule = worst_per_rule(_records(), "final_clean_acc", ATTACKS, AGGS)
    for agg in AGGS:
        # independent reference: average the seeds, then the lowest accuracy over the attacks
        expected = min((_seed_mean(ACC, att, agg), att) for att in ATTACKS if att != "none")
        assert per_rule[agg].value == pytest.approx(expected[0]) and per_rule[agg].at == expected[1]
        assert (per_rule[agg].counted, per_rule[agg].total) == (3, 3)
    assert (per_rule["mean"].at, per_rule["median"].at, per_rule["krum"].at) == ("alie", "ipm", "alie")
    # the baseline is not an attack: krum's worst would be 0.76 (none) if it counted
    assert per_rule["krum"].value == pytest.approx(0.81)
    # ByzFL's choice: the rule whose worst case is highest (max-min)
    assert best_rule(per_rule, "final_clean_acc") == "krum"


def test_worst_case_of_asr_is_the_max_and_skips_attacks_without_a_trigger():
    assert not higher_is_better("final_asr.badnets") and higher_is_better("det_recall")
    per_rule = worst_per_rule(_records(), "final_asr", ATTACKS, AGGS)
    assert {g: (round(w.value, 6), w.at, w.counted, w.total) for g, w in per_rule.items()} == {
        "mean": (0.95, "badnets", 1, 1), "median": (0.6, "badnets", 1, 1), "krum": (0.2, "badnets", 1, 1)}
    assert best_rule(per_rule, "final_asr") == "krum"  # min-max for a figure the defender wants low
    per_attack = worst_per_attack(_records(), "final_asr", ATTACKS, AGGS)
    assert set(per_attack) == {"badnets"} and per_attack["badnets"].at == "mean"


def test_worst_rule_per_attack_is_the_min_over_rules():
    per_attack = worst_per_attack(_records(), "final_clean_acc", ATTACKS, AGGS)
    for att in ATTACKS:
        expected = min((_seed_mean(ACC, att, agg), agg) for agg in AGGS)
        assert per_attack[att].value == pytest.approx(expected[0]) and per_attack[att].at == expected[1]


def test_a_failed_cell_is_a_missing_value_and_the_worst_case_says_so():
    # both seeds of (alie, mean) failed: mean's worst case is over ipm and badnets only
    recs = _records(failed={("alie", "mean", 0), ("alie", "mean", 1)})
    w = worst_per_rule(recs, "final_clean_acc", ATTACKS, AGGS)["mean"]
    assert (w.at, w.counted, w.total) == ("ipm", 2, 3) and w.value == pytest.approx(0.62)
    md = results_md(MANIFEST, recs)
    assert "0.620 (ipm; 2 of 3 attacks)" in md
    # one seed failed: the mean is over the other one
    recs = _records(failed={("alie", "mean", 0)})
    assert worst_per_rule(recs, "final_clean_acc", ATTACKS, AGGS)["mean"].value == pytest.approx(0.50)


def test_results_md_has_a_worst_attack_row_and_a_worst_rule_column():
    md = results_md(MANIFEST, _records())
    table = md.split("## final clean accuracy", 1)[1].split("\n\n")[1].splitlines()
    assert table[0] == "| attack \\ aggregator | mean | median | krum | worst rule |"
    assert table[2].startswith("| none | 0.940 ± 0.014 | 0.910 ± 0.014 | 0.760 ± 0.014 | 0.760 (krum) |")
    assert table[-1] == "| **worst attack** | 0.450 (alie) | 0.250 (ipm) | **0.810 (alie)** |  |"
    assert "Best worst case: **krum**, 0.810 against its worst attack (alie)" in md


def test_results_csv_appends_worst_case_rows_after_one_row_per_cell():
    recs = _records()
    rows = list(csv.DictReader(io.StringIO(results_csv(MANIFEST, recs))))
    cells, summary = rows[:len(recs)], rows[len(recs):]
    assert [r["cell"] for r in cells] == [r["digest"] for r in recs]
    assert all(r["status"] == "worst-case" and r["cell"] == "" and r["seed"] == "" for r in summary)
    by_rule = {r["aggregator"]: r for r in summary if r["attack"] == "worst-case"}
    by_attack = {r["attack"]: r for r in summary if r["aggregator"] == "worst-case"}
    assert set(by_rule) == set(AGGS) and set(by_attack) == set(ATTACKS)
    per_rule = worst_per_rule(recs, "final_clean_acc", ATTACKS, AGGS)
    for agg in AGGS:
        assert math.isclose(float(by_rule[agg]["final_clean_acc"]), per_rule[agg].value, rel_tol=1e-5)
        assert f"final_clean_acc={per_rule[agg].at}" in by_rule[agg]["worst_of"].split()
        assert (by_rule[agg]["malicious_fraction"], by_rule[agg]["alpha"]) == ("0.2", "0.5")
    # one attack has a trigger: its ASR is no worst case to choose, so none is written
    assert by_rule["mean"]["final_asr"] == "" and "final_asr=" not in by_rule["mean"]["worst_of"]
    assert by_attack["badnets"]["final_asr"] == "0.95" and "final_asr=mean" in by_attack["badnets"]["worst_of"]
    assert float(by_attack["ipm"]["final_clean_acc"]) == pytest.approx(0.25)


def test_one_attack_or_one_rule_gives_no_worst_case_to_choose():
    recs = [r for r in _records() if r["attack"] == "alie"]
    manifest = {**MANIFEST, "attacks": ["alie"]}
    md = results_md(manifest, recs)
    assert "| **worst attack** |" not in md and "Best worst case" not in md
    assert "| attack \\ aggregator | mean | median | krum | worst rule |" in md  # three rules, one attack


def test_band_is_the_mean_and_sample_std_over_seeds_per_round():
    ts, mean, std, n = band([([0, 1, 2], [0.1, 0.5, 0.7]), ([0, 1, 2, 3], [0.1, 0.3, None, 0.9])])
    assert ts == [0, 1, 2, 3] and n == [2, 2, 1, 1]
    assert mean == pytest.approx([0.1, 0.4, 0.7, 0.9])
    assert std == pytest.approx([0.0, math.sqrt(0.02), 0.0, 0.0])  # (0.1^2 + 0.1^2) / (2 - 1)


def test_figures_have_axis_titles_a_labelled_colorbar_and_say_how_many_seeds(tmp_path):
    import matplotlib.pyplot as plt

    figs = []
    real = plt.close
    plt.close = lambda fig=None: figs.append(fig)  # keep the figures to read their labels
    try:
        paths = write_plots(MANIFEST, _records(), tmp_path)
    finally:
        plt.close = real
    names = sorted(p.name for p in paths)
    assert "heatmap_final_clean_acc.png" in names and "curves_alie.png" in names
    heat = figs[[p.name for p in paths].index("heatmap_final_clean_acc.png")]
    ax, cbar = heat.axes
    assert (ax.get_xlabel(), ax.get_ylabel(), cbar.get_ylabel()) == (
        "aggregation rule", "attack", "final clean accuracy")
    assert "mean of 2 seeds" in ax.get_title()
    assert [t.get_text() for t in ax.get_yticklabels()][-1] == "worst attack"
    curves = figs[[p.name for p in paths].index("curves_alie.png")]
    assert "mean of 2 seeds, band: ± 1 std" in curves._suptitle.get_text()
    assert curves.axes[0].get_xlabel().startswith("round") and curves.axes[0].get_ylabel() == "clean accuracy"
    assert len(curves.axes[0].collections) == len(AGGS)  # one seed band per rule
    assert curves.legends[0].get_title().get_text() == "aggregation rule"
    for f in figs:
        real(f)


def test_long_attack_labels_are_broken_after_underscores_to_fit_a_cell():
    from fedsec.bench.plots import _wrap

    assert _wrap("model_replacement") == "model_\nreplacement"
    assert _wrap("label_flip") == "label_flip" and _wrap("alie") == "alie"
    assert _wrap("a_b_c_d_e_f_g").replace("\n", "") == "a_b_c_d_e_f_g"
