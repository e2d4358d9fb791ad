"""A run directory read, drawn and reported: ``load_run``, ``curves.png``, ``report.md``, ``compare``.

- :func:`load_run` turns a run directory into a pandas DataFrame, one row per round
  (round 0 is the initial model), nested fields flattened; :data:`RUN_COLUMNS` is its schema.
- :func:`curves_figure` / :func:`write_curves`: ``curves.png``, clean accuracy and the ASR of
  every trigger against rounds (attack window shaded) over a panel of test and training loss.
- :func:`write_run_report`: ``report.md``, what a researcher pastes into notes (the
  scenario in one line, the headline figures, the curves, per-class accuracy, every round).
- :func:`compare_runs`: several runs' curves overlaid in one PNG (``fedsec compare``).

Everything here reads only the run directory's files (scenario.toml, metrics.jsonl,
summary.json, env.json), so it works on a finished, failed or still-running run and on
one copied from another machine. Figures are drawn on a bare ``matplotlib.figure.Figure``
(no pyplot), so drawing changes no global matplotlib state.
"""

from fedsec.report.figures import (  # noqa: F401
    attack_windows,
    compare_figure,
    compare_runs,
    curves_figure,
    flat_scenario,
    run_labels,
    write_curves,
)
from fedsec.report.frame import (  # noqa: F401
    CURVES,
    REPORT,
    RUN_COLUMNS,
    attack_text,
    attackers,
    flat_rows,
    is_run_dir,
    load_run,
    read_scenario_dict,
    rule_text,
    scenario_line,
    scenario_parts,
    split_text,
)
from fedsec.report.markdown import run_report_markdown, write_run_report  # noqa: F401
