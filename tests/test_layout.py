"""The package layout: plain-data scenarios, the installed names, the card's folders."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(code: str, cwd: Path = REPO) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


def test_loading_a_scenario_imports_neither_flower_nor_ray():
    code = ("import sys; from fedsec import load_scenario; "
            "load_scenario('experiments/quickstart.toml', ['server.aggregator=\"krum\"', "
            "'attack=[{behaviour=\"alie\", partitions=[0]}]', 'plugins=[{name=\"watermark\"}]']); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'flwr', 'ray', 'flwr_datasets'}))")
    assert _run(code) == "[]"


def test_every_package_folder_is_installed():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    mapping = {"fedsec": "fedsec", "strategies": "fedsec.strategies", "clients": "fedsec.clients"}
    found = set()
    for top, dotted in mapping.items():
        for init in (REPO / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / top).parts
            found.add(".".join((dotted, *rel)))
    assert found == listed, f"pyproject packages differ: missing {sorted(found - listed)}, extra {sorted(listed - found)}"


def test_card_names_alias_the_installed_packages():
    code = ("import strategies, clients, fedsec.strategies as s, fedsec.clients as c; "
            "from strategies.krum import Krum; from fedsec.strategies.krum import Krum as K2; "
            "print(strategies is s, clients is c, Krum is K2, strategies.AGGREGATORS is s.AGGREGATORS)")
    assert _run(code) == "True True True True"


def test_a_users_own_clients_package_is_left_alone(tmp_path):
    (tmp_path / "clients").mkdir()
    (tmp_path / "clients" / "__init__.py").write_text("MINE = 1\n")
    (tmp_path / "strategies.py").write_text("MINE = 2\n")
    code = ("import clients, strategies, fedsec.clients as c, fedsec.strategies as s; "
            "print(clients.MINE, strategies.MINE, 'badnets' in c.BEHAVIOURS, 'krum' in s.AGGREGATORS)")
    assert _run(code, cwd=tmp_path) == "1 2 True True"
