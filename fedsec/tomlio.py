"""TOML in and out for scenarios and sweeps: reading files, ``KEY=VALUE`` overrides, writing.

The one ``KEY=VALUE`` parser of the project (``--set``, ``--param``, the ``overrides`` of
``flwr run``) is :func:`parse_override`; values are TOML (3, 0.1, true, [0, 1], {a = 1}),
bare words are strings. The standard library reads TOML but does not write it, so
:func:`dump_toml` writes the scenario's own shape (tables, arrays of tables, inline values).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from fedsec.scenario_errors import ScenarioError


def read_toml(path: str | Path, what: str) -> tuple[str, dict[str, Any]]:
    """(text, table) of a TOML file; ScenarioError naming the file if missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise ScenarioError(f"{what} {str(path)!r} does not exist")
    text = path.read_text()
    try:
        return text, tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from None


def parse_override(item: str, what: str, example: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (KEY, VALUE parsed as TOML); ScenarioError otherwise."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ScenarioError(f"{what} {item!r}: expected KEY=VALUE, e.g. {example}")
    return key.strip(), parse_value(text.strip())


def parse_value(text: str) -> Any:
    """A command-line value as TOML (3, 0.1, true, [0, 1], {a = 1}); bare words are strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


# --------------------------------------------------------------------------------------
# helpers


def _set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        here = ".".join(parts[: i + 1])
        if isinstance(node, list):
            node = node[_index(part, node, here)]
        else:
            node = node.setdefault(part, {})
        if not isinstance(node, (dict, list)):
            raise ScenarioError(f"override {dotted!r}: {here} is not a table")
    last = parts[-1]
    if isinstance(node, list):
        node[_index(last, node, dotted)] = value
    else:
        node[last] = value


def _index(part: str, node: list, path: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ScenarioError(f"override {path!r}: expected an index below {len(node)}")
    return int(part)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(k)


def dump_toml(d: dict[str, Any]) -> str:
    """Minimal TOML writer for the scenario's shape (stdlib has a reader only)."""
    out: list[str] = []
    tables, arrays = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        elif isinstance(v, list) and not v:
            continue
        else:
            out.append(f"{_toml_key(k)} = {_toml_value(v)}")
    for k, v in tables:
        out.append(f"\n[{k}]")
        out += [f"{_toml_key(a)} = {_toml_value(b)}" for a, b in v.items()]
    for k, items in arrays:
        for item in items:
            out.append(f"\n[[{k}]]")
            out += [f"{_toml_key(a)} = {_toml_value(b)}" for a, b in item.items()]
    return "\n".join(out) + "\n"
