"""docs/extending.md's examples run as written: registered, conformant, and usable in a federation."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _python_blocks() -> list[str]:
    text = (REPO / "docs" / "extending.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_extending_examples_run(tmp_path):
    blocks = _python_blocks()
    assert len(blocks) >= 7  # rule, data/loss/gradient/omniscient attacks, plugin, testing
    (tmp_path / "docext.py").write_text("\n\n".join(blocks))
    scenario = tmp_path / "s.toml"
    scenario.write_text(f'''
name = "docext"
[data]
num_clients = 5
[client]
epochs = 1
[server]
rounds = 2
aggregator = "norm_bounded_mean"
aggregator_params = {{tau = 2.0}}
[[attack]]
behaviour = "corner_backdoor"
partitions = [0]
[[attack]]
behaviour = "top_coordinates"
partitions = [1]
[[attack]]
behaviour = "scaled_opposite"
partitions = [2]
[[plugins]]
name = "accuracy_floor"
[run]
engine = "inline"
output = "{tmp_path / 'runs'}"
imports = ["docext"]
''')
    code = "from fedsec import run; r = run('s.toml'); print('ASR', r.summary['final_asr'])"
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "corner" in proc.stdout
