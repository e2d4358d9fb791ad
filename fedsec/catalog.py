"""What every registered component is and takes: ``fedsec list`` and ``fedsec describe NAME``.

Reads only what the components already say about themselves: the class or function
docstring, the dataclass fields or the signature (types, defaults), and each
parameter's own documentation, from the attribute docstring under a dataclass field
(``z: float = 0.0`` followed by ``\"\"\"z: deviation in standard deviations\"\"\"``) or
from a numpy-style ``Parameters`` section (``f : f, the number of Byzantine clients``).
A description that opens with a short symbol and a colon or comma (``z:``, ``f,``,
``nabla_p:``, ``lambda,``) gives the paper's symbol for that parameter.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import re
import textwrap
from dataclasses import dataclass
from typing import Any

#: (kind as the CLI names it, registry import path, how a scenario selects it)
KINDS: list[tuple[str, str, str]] = [
    ("dataset", "fedsec.data:DATASETS", '[data] dataset = "{name}"'),
    ("model", "fedsec.models:MODELS", '[model] name = "{name}", params = {{...}}'),
    ("partitioner", "fedsec.data:PARTITIONERS", '[data] partitioner = "{name}"'),
    ("aggregation rule", "fedsec.strategies:AGGREGATORS",
     '[server] aggregator = "{name}", aggregator_params = {{...}}'),
    ("pre-aggregator", "fedsec.strategies.pre_aggregators:PRE_AGGREGATORS",
     '[[server.pre_aggregators]] name = "{name}", params = {{...}}'),
    ("client behaviour", "fedsec.clients:BEHAVIOURS",
     '[[attack]] behaviour = "{name}", partitions = [...], params = {{...}}'),
    ("plugin", "fedsec.plugins:PLUGINS", '[[plugins]] name = "{name}", params = {{...}}'),
    ("engine", "fedsec.federation:ENGINES", '[run] engine = "{name}" (or fedsec run --engine {name})'),
    ("audit detector", "fedsec.audit:DETECTORS", "fedsec audit MODEL --detector {name} --param KEY=VALUE"),
]

# Arguments the framework passes itself, by kind: not the user's to set.
_FRAMEWORK_ARGS = {
    "model": {"in_shape", "num_classes"},
    "partitioner": {"labels", "num_partitions", "seed"},
    "dataset": {"root", "download"},
    "engine": {"scenario", "main", "on_reply"},
}
# Partitioner options that have their own [data] field; the others go in partitioner_params.
_DATA_FIELDS = {"alpha": "data.alpha", "shards_per_client": "data.shards_per_client"}
_KIND_NOTES = {
    "dataset": "Read from data.root (data.download = true fetches a torchvision dataset there); "
               "no parameters of its own.",
    "engine": "Configured by the [run] section (num_cpus, num_gpus, ray_address, threads).",
}

_GREEK = {"alpha", "beta", "gamma", "delta", "epsilon", "eps", "zeta", "eta", "theta", "iota", "kappa",
          "lambda", "lam", "mu", "nu", "xi", "pi", "rho", "sigma", "tau", "phi", "chi", "psi", "omega", "nabla"}
_SYMBOL = re.compile(r"^([A-Za-z][A-Za-z0-9_^{}']*)\s*[:,;]\s+(.*)$", re.S)
_ABBREV = {"al", "e.g", "i.e", "vs", "cf", "fig", "eq", "approx", "resp", "etc"}


@dataclass(frozen=True)
class Param:
    """One parameter of a component: ``type`` and ``default`` as text (``default`` is
    ``"required"`` when there is none), ``doc`` its description, ``symbol`` the paper's
    symbol when the description names one, ``where`` the scenario field that sets it
    when it is not the component's own ``params`` table."""

    name: str
    type: str
    default: str
    doc: str = ""
    symbol: str = ""
    where: str = ""


@dataclass(frozen=True)
class Entry:
    """A registered component as ``fedsec describe`` shows it."""

    kind: str
    name: str
    target: str
    """module:qualname of the class or function."""
    doc: str
    """Its docstring, dedented ("" when it has none)."""
    module_doc: str
    """Its module's docstring (often the paper it implements and how)."""
    params: tuple[Param, ...]
    usage: str
    note: str = ""

    @property
    def summary(self) -> str:
        """The first whole sentence of the docstring. A rule's module is named after it
        (``Krum.``, ``Centered clipping.``), so rules and pre-aggregators get that title first."""
        sentence = first_sentence(self.doc)
        title = first_sentence(self.module_doc).rstrip(".")
        if self.kind in ("aggregation rule", "pre-aggregator") and title and len(title) <= 80:
            # a docstring opening on an enumerated algorithm has no sentence to show
            return f"{title}." if not sentence or sentence[0].isdigit() else f"{title}: {sentence}"
        return sentence or "(no docstring)"


def _registry(path: str) -> Any:
    import importlib

    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def registries() -> list[tuple[str, Any, str]]:
    """(kind, registry, usage template) for every registry, in ``fedsec list`` order."""
    return [(kind, _registry(path), usage) for kind, path, usage in KINDS]


def first_sentence(doc: str) -> str:
    """The first whole sentence of a docstring's first paragraph (the paragraph itself when it
    has no sentence end), on one line; abbreviations (et al., e.g.) and list numbers do not end it."""
    para = " ".join(inspect.cleandoc(doc or "").split("\n\n", 1)[0].split())
    for m in re.finditer(r"[.!?](?=\s|$)", para):
        word = para[:m.start()].rsplit(" ", 1)[-1].lstrip("(").lower()
        if word in _ABBREV or word.isdigit():
            continue
        return para[:m.end()]
    return para


def reflow(doc: str) -> str:
    """A docstring for a terminal that wraps by itself: the lines of a plain paragraph joined,
    formatted blocks (indented lines, lists, section underlines, formulas) left as written."""
    out = []
    for para in inspect.cleandoc(doc or "").split("\n\n"):
        lines = para.splitlines()
        formatted = any(ln.startswith((" ", "-", "*", "|")) or re.match(r"^\d+[.)] ", ln)
                        or set(ln.strip()) <= {"-", "="} for ln in lines)
        out.append(para if formatted else " ".join(ln.strip() for ln in lines))
    return "\n\n".join(out)


def symbol_of(name: str, doc: str) -> tuple[str, str]:
    """(symbol, rest of the description) when ``doc`` opens with the paper's symbol."""
    m = _SYMBOL.match(doc)
    if not m:
        return "", doc
    token = m.group(1)
    base = token.split("_")[0].lower()
    if token == name or base in _GREEK or "_" in token or len(token) <= 3:
        if token.lower() in {"if", "or", "and", "the", "a", "an", "see", "raise", "exit"}:
            return "", doc
        return token, m.group(2)
    return "", doc


def _field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a class and its bases (the subclass's win)."""
    docs: dict[str, str] = {}
    for c in cls.__mro__:
        if c is object:
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(c)))
        except (OSError, TypeError, SyntaxError):
            continue
        node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
        if node is None:
            continue
        for a, b in zip(node.body, node.body[1:]):
            if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                    and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
                docs.setdefault(a.target.id, inspect.cleandoc(b.value.value))
    return docs


def _section_docs(doc: str) -> dict[str, str]:
    """Entries of a numpy-style ``Parameters`` section: ``name : text`` plus indented lines."""
    lines = inspect.cleandoc(doc or "").splitlines()
    out: dict[str, str] = {}
    try:
        start = next(i for i, ln in enumerate(lines[:-1])
                     if ln.strip() == "Parameters" and set(lines[i + 1].strip()) == {"-"}) + 2
    except StopIteration:
        return out
    current = None
    for ln in lines[start:]:
        if not ln.strip():
            if current is not None:
                current = None
                continue
            break
        m = re.match(r"^(\w+)\s*:\s*(.*)$", ln)
        if m and not ln.startswith(" "):
            current = m.group(1)
            out[current] = m.group(2).strip()
        elif current is not None:
            out[current] += " " + ln.strip()
        else:
            break
    return out


def _type_text(tp: Any) -> str:
    if tp is inspect.Parameter.empty or tp is dataclasses.MISSING:
        return ""
    if isinstance(tp, str):
        return tp
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _default_text(value: Any) -> str:
    return "required" if value in (inspect.Parameter.empty, dataclasses.MISSING) else repr(value)


def parameters(obj: Any, kind: str = "") -> list[Param]:
    """The user-settable parameters of a registered class or function, documented."""
    skip = _FRAMEWORK_ARGS.get(kind, set())
    docs = _section_docs(getattr(obj, "__doc__", "") or "")
    params: list[tuple[str, str, str]] = []
    if dataclasses.is_dataclass(obj) and isinstance(obj, type):
        docs = {**docs, **_field_docs(obj)}
        for f in dataclasses.fields(obj):
            if not f.init or f.name.startswith("_"):
                continue
            default = (f.default_factory() if f.default_factory is not dataclasses.MISSING  # type: ignore[misc]
                       else f.default)
            params.append((f.name, _type_text(f.type), _default_text(default)))
    else:
        try:
            sig = inspect.signature(obj)
        except (TypeError, ValueError):
            return []
        for p in sig.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in ("self", "cls"):
                continue
            params.append((p.name, _type_text(p.annotation), _default_text(p.default)))
    out = []
    for name, tp, default in params:
        if name in skip:
            continue
        doc = " ".join(docs.get(name, "").split())
        symbol, rest = symbol_of(name, doc)
        where = _DATA_FIELDS.get(name, "data.partitioner_params") if kind == "partitioner" else ""
        out.append(Param(name, tp, default, rest, symbol, where))
    return out


def entry(kind: str, name: str, obj: Any, usage: str) -> Entry:
    module = inspect.getmodule(obj)
    mdoc = inspect.cleandoc(getattr(module, "__doc__", "") or "")
    target = f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"
    return Entry(kind=kind, name=name, target=target, doc=inspect.cleandoc(obj.__doc__ or ""),
                 module_doc=mdoc, params=tuple(parameters(obj, kind)), usage=usage.format(name=name),
                 note=_KIND_NOTES.get(kind, ""))


def catalog() -> list[tuple[str, list[Entry]]]:
    """Every registered component, by kind."""
    return [(kind, [entry(kind, n, obj, usage) for n, obj in reg.items()]) for kind, reg, usage in registries()]


class UnknownComponent(KeyError):
    """``describe`` found no component of that name; the message has a did-you-mean."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def kinds_matching(kind: str) -> list[str]:
    """The kinds ``kind`` names: exactly, by its last word (``rule``, ``behaviour``,
    ``detector``) or as a prefix (``pre``); UnknownComponent with a did-you-mean if none."""
    kinds = [k for k, _, _ in KINDS]
    matches = [k for k in kinds if kind and (k == kind or k.split()[-1] == kind.rstrip("s")
                                            or k.startswith(kind))]
    if not matches:
        close = difflib.get_close_matches(kind, kinds + [k.split()[-1] for k in kinds], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownComponent(f"unknown kind {kind!r}{hint}; kinds: {', '.join(kinds)}")
    return matches


def find(name: str, kind: str | None = None) -> list[Entry]:
    """Every component registered as ``name`` (a name can be, e.g., both a plugin and an
    audit detector); ``kind`` narrows to one registry. UnknownComponent lists close names."""
    regs = registries()
    if kind is not None:
        matches = kinds_matching(kind)
        regs = [r for r in regs if r[0] in matches]
    found = [entry(k, name, reg.get(name), usage) for k, reg, usage in regs if name in reg]
    if found:
        return found
    every = sorted({n for _, reg, _ in regs for n in reg.names()})
    close = difflib.get_close_matches(name, every, n=3)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    where = f" {regs[0][0]}" if kind is not None and len(regs) == 1 else " component"
    raise UnknownComponent(f"no{where} named {name!r}{hint} (`fedsec list` shows them all)")
