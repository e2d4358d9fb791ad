"""Sweeps: many independent federations described by one TOML file, run, resumed, tabulated.

- :mod:`fedsec.bench.spec`: the sweep file -> a :class:`Sweep` of validated cells
  (the file format is documented there and in experiments/bench/README.md);
- :mod:`fedsec.bench.directory`: the sweep directory's layout and each cell's status;
- :mod:`fedsec.bench.runner`: runs the unfinished cells, in process or as Ray tasks;
- :mod:`fedsec.bench.records`: one record per cell, read back from its run directory;
- :mod:`fedsec.bench.report` and :mod:`fedsec.bench.plots`: results.csv, results.md, plots/;
- :mod:`fedsec.bench.frame`: the sweep as a pandas DataFrame (``fedsec.load_sweep(dir)``).

``load_sweep`` here parses a sweep *file*; ``fedsec.load_sweep`` (= :func:`load_results`)
reads a sweep *directory*'s results.
"""

from fedsec.bench.directory import cell_dir, is_done, read_status, write_manifest
from fedsec.bench.frame import SWEEP_COLUMNS, load_results
from fedsec.bench.plots import write_plots
from fedsec.bench.records import Worst, best_rule, cell_metrics, collect, worst_per_attack, worst_per_rule
from fedsec.bench.report import METRICS, results_csv, results_md, write_report
from fedsec.bench.runner import SweepOutcome, run_cell, run_sweep
from fedsec.bench.spec import (NO_ATTACK, AggregatorEntry, AttackEntry, Cell, Sweep, SweepError, load_sweep,
                               parse_sweep)

__all__ = [
    "METRICS", "NO_ATTACK", "SWEEP_COLUMNS", "AggregatorEntry", "AttackEntry", "Cell", "Sweep", "SweepError",
    "SweepOutcome", "Worst", "best_rule", "cell_dir", "cell_metrics", "collect", "is_done", "load_results",
    "load_sweep", "parse_sweep", "read_status", "results_csv", "results_md", "run_cell", "run_sweep",
    "worst_per_attack", "worst_per_rule", "write_manifest", "write_plots", "write_report",
]
