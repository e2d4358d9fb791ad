"""Sweeps: many independent federations described by one TOML file, run, resumed, tabulated.

- :mod:`fedsec.bench.spec`: the sweep file -> a :class:`Sweep` of validated cells
  (the file format is documented there and in experiments/bench/README.md);
- :mod:`fedsec.bench.directory`: the sweep directory's layout and each cell's status;
- :mod:`fedsec.bench.runner`: runs the unfinished cells, in process or as Ray tasks;
- :mod:`fedsec.bench.records`: one record per cell, read back from its run directory;
- :mod:`fedsec.bench.report` and :mod:`fedsec.bench.plots`: results.csv, results.md, plots/.
"""

from fedsec.bench.directory import cell_dir, is_done, read_status, write_manifest
from fedsec.bench.plots import write_plots
from fedsec.bench.records import cell_metrics, collect
from fedsec.bench.report import METRICS, results_csv, results_md, write_report
from fedsec.bench.runner import SweepOutcome, run_cell, run_sweep
from fedsec.bench.spec import (NO_ATTACK, AggregatorEntry, AttackEntry, Cell, Sweep, SweepError, load_sweep,
                               parse_sweep)


__all__ = [
    "METRICS", "NO_ATTACK", "AggregatorEntry", "AttackEntry", "Cell", "Sweep", "SweepError", "SweepOutcome",
    "cell_dir", "cell_metrics", "collect", "is_done", "load_sweep", "parse_sweep", "read_status",
    "results_csv", "results_md", "run_cell", "run_sweep", "write_manifest", "write_plots", "write_report",
]
