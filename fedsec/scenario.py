"""Scenario: the one typed description of a federation, loaded from TOML or built in Python.

Every section is a frozen, keyword-only dataclass validated on construction;
``Scenario.from_dict`` rejects unknown keys (with a did-you-mean) and reports
the dotted field path, the value and what was expected. Component parameters
(``server.aggregator_params``, ``attack[i].params``, ``plugins[i].params``,
``model.params``, ``data`` partitioner options) are checked against the
registered component when the scenario is validated, so nothing starts on an
invalid scenario.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsec.registry import import_components
from fedsec.scenario_errors import (  # noqa: F401  (ScenarioError, collecting_errors: public here too)
    ScenarioError,
    _build,
    _check,
    _check_kwargs,
    _check_name,
    _report,
    _require,
    collecting_errors,
)
from fedsec.tomlio import _set_path, dump_toml, parse_override, parse_value, read_toml  # noqa: F401


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    dataset: str = "digits"
    root: str = "data"
    download: bool = False
    num_clients: int = 20
    partitioner: str = "dirichlet"
    alpha: float = 0.5
    """Dirichlet concentration (``dirichlet``): smaller = more label skew."""
    shards_per_client: int = 2
    """Classes-shards per client (``shards``)."""
    partitioner_params: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the partitioner (a registered one's, or the constructor's of a
    ``flwr:<Class>`` flwr-datasets partitioner, e.g. ``flwr:NaturalIdPartitioner`` with
    ``partition_by = "writer"``: fedsec.data.partition, fedsec.data.natural)."""
    augment: str = "auto"
    """Training augmentation per batch on the training device (fedsec.data.augment): ``none``,
    ``crop_flip``, ``crop``; ``auto`` = crop_flip for CIFAR-10/100, crop for GTSRB, else none."""
    normalize: str = "auto"
    """Per-channel input normalisation inside the model: ``auto`` (the dataset's statistics where
    known: CIFAR-10/100, GTSRB; else none), ``none``, ``dataset`` (required statistics)."""

    def partition_kwargs(self) -> dict[str, Any]:
        import inspect

        from fedsec.data import PARTITIONERS

        if self.partitioner.startswith("flwr:"):
            return dict(self.partitioner_params)
        accepted = inspect.signature(PARTITIONERS.get(self.partitioner)).parameters
        known = {"alpha": self.alpha, "shards_per_client": self.shards_per_client}
        return {**{k: v for k, v in known.items() if k in accepted}, **self.partitioner_params}

    def validate(self, path: str) -> None:
        from fedsec.data import DATASETS, PARTITIONERS

        _check_name(self.dataset, DATASETS, f"{path}.dataset")
        _check(self.num_clients >= 2, f"{path}.num_clients", self.num_clients, "an integer >= 2")
        if self.partitioner.startswith("flwr:"):
            from fedsec.data.partition import check_params, flwr_partitioners

            if _check(self.partitioner in flwr_partitioners(), f"{path}.partitioner", self.partitioner,
                      f"a registered name {PARTITIONERS.names()} or one of {flwr_partitioners()}"):
                for problem in check_params(self.partitioner, self.partitioner_params):
                    _report(f"{path}.partitioner_params.{problem}")
        elif _check_name(self.partitioner, PARTITIONERS, f"{path}.partitioner"):
            _check_kwargs(PARTITIONERS.get(self.partitioner), self.partitioner_params,
                          f"{path}.partitioner_params", skip=3)
        from fedsec.data.augment import AUGMENTATIONS, NORMALIZATION, NORMALIZE_MODES

        if self.augment != "auto":
            _check_name(self.augment, AUGMENTATIONS, f"{path}.augment")
        if _check(self.normalize in NORMALIZE_MODES, f"{path}.normalize", self.normalize,
                  f"one of {list(NORMALIZE_MODES)}"):
            _check(self.normalize != "dataset" or self.dataset in NORMALIZATION, f"{path}.normalize",
                   self.normalize, f"'auto' or 'none' (no statistics for {self.dataset!r}; known: "
                   f"{sorted(NORMALIZATION)})")
        _check(self.alpha > 0, f"{path}.alpha", self.alpha, "a number > 0")
        _check(self.shards_per_client >= 1, f"{path}.shards_per_client", self.shards_per_client,
               "an integer >= 1")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    name: str = "cnn"
    params: dict[str, Any] = field(default_factory=dict)
    init: str = ""
    """Optional safetensors checkpoint the federation starts from (e.g. a backdoored
    pretrained model made by ``fedsec craft-backdoor``)."""

    def validate(self, path: str) -> None:
        from fedsec.models import MODELS

        if _check_name(self.name, MODELS, f"{path}.name"):
            _check_kwargs(MODELS.get(self.name), self.params, f"{path}.params",
                          skip_names=("in_shape", "num_classes"))
        if self.init:
            _check(Path(self.init).is_file(), f"{path}.init", self.init, "an existing .safetensors file")


@dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """Local training of every client (the honest loop that attacks wrap)."""

    epochs: int = 2
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0

    def validate(self, path: str) -> None:
        _check(self.epochs >= 0, f"{path}.epochs", self.epochs, "an integer >= 0")
        _check(self.batch_size >= 1, f"{path}.batch_size", self.batch_size, "an integer >= 1")
        _check(self.lr > 0, f"{path}.lr", self.lr, "a number > 0")
        _check(0 <= self.momentum < 1, f"{path}.momentum", self.momentum, "a number in [0, 1)")
        _check(self.weight_decay >= 0, f"{path}.weight_decay", self.weight_decay, "a number >= 0")


@dataclass(frozen=True, kw_only=True)
class ComponentConfig:
    """A registry name and its parameters (a pre-aggregator)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    rounds: int = 10
    fraction_train: float = 1.0
    aggregator: str = "mean"
    aggregator_params: dict[str, Any] = field(default_factory=dict)
    server_lr: float = 1.0
    """eta: the aggregated update is added to the global model times this factor."""
    pre_aggregators: list[ComponentConfig] = field(default_factory=list)
    """Maps applied to the update matrix before the rule, in order (``nnm``, ``bucketing``, ``arc``)."""
    root_size: int = 0
    """Examples of the server's own clean root set (FLTrust), drawn from the test split and
    then left out of evaluation; 0 = 100 when the rule needs a root set, else none."""
    min_nodes: int = 0
    """Connected nodes a round needs (the server waits for them up to ``wait_timeout``, then
    samples among the nodes connected); 0 = data.num_clients, every partition (simulation).
    On a real deployment set it below num_clients so a lost node does not stop the run."""
    wait_timeout: float = 600.0
    """Seconds the server waits for ``min_nodes`` nodes to connect and answer its discovery
    query (covers workers' cold start: a process that imports torch and loads its data)."""
    round_timeout: float = 0.0
    """Seconds the server waits for a round's replies; a client not in by then counts as
    failed ("no reply within ..."). 0 = wait until every sampled node replies or is reported
    unavailable (Flower's SuperLink reports a node whose heartbeat stopped)."""

    def validate(self, path: str) -> None:
        from fedsec.strategies import AGGREGATORS

        _check(self.rounds >= 1, f"{path}.rounds", self.rounds, "an integer >= 1")
        _check(self.min_nodes >= 0, f"{path}.min_nodes", self.min_nodes,
               "an integer >= 0 (0 = data.num_clients)")
        _check(self.wait_timeout > 0, f"{path}.wait_timeout", self.wait_timeout, "a number of seconds > 0")
        _check(self.round_timeout >= 0, f"{path}.round_timeout", self.round_timeout,
               "a number of seconds >= 0 (0 = no limit)")
        _check(0 < self.fraction_train <= 1, f"{path}.fraction_train", self.fraction_train,
               "a number in (0, 1]")
        _check(self.server_lr > 0, f"{path}.server_lr", self.server_lr, "a number > 0")
        _check(self.root_size >= 0, f"{path}.root_size", self.root_size, "an integer >= 0")
        if _check_name(self.aggregator, AGGREGATORS, f"{path}.aggregator"):
            _build(lambda: AGGREGATORS.get(self.aggregator)(**self.aggregator_params),
                   f"{path}.aggregator_params")
        if self.pre_aggregators:
            import fedsec.strategies as strategies

            registry = getattr(strategies, "PRE_AGGREGATORS", None)
            for i, p in enumerate(self.pre_aggregators):
                where = f"{path}.pre_aggregators[{i}]"
                if registry is None:
                    _report(f"{where}: this fedsec has no pre-aggregators")
                elif _check_name(p.name, registry, f"{where}.name"):
                    _build(lambda p=p: registry.get(p.name)(**p.params), f"{where}.params")

    def root_examples(self) -> int:
        """Size of the server's root set: ``root_size``, or 100 for a rule that needs one."""
        if self.root_size:
            return self.root_size
        from fedsec.strategies import AGGREGATORS

        needs = getattr(AGGREGATORS.get(self.aggregator), "needs_reference", False)
        return 100 if needs else 0


@dataclass(frozen=True, kw_only=True)
class AttackConfig:
    """One malicious role: which partitions run ``behaviour``, with what, and when."""

    behaviour: str
    partitions: list[int]
    params: dict[str, Any] = field(default_factory=dict)
    start_round: int = 1
    end_round: int = 0
    """Last round the attack runs (inclusive); 0 = until the end."""
    every: int = 1

    def active(self, server_round: int) -> bool:
        if server_round < self.start_round or (self.end_round and server_round > self.end_round):
            return False
        return (server_round - self.start_round) % self.every == 0

    def validate(self, path: str, num_clients: int) -> None:
        from fedsec.clients import BEHAVIOURS

        known = _check_name(self.behaviour, BEHAVIOURS, f"{path}.behaviour")
        _check(len(self.partitions) > 0, f"{path}.partitions", self.partitions,
               "a non-empty list of partition ids")
        for j, p in enumerate(self.partitions):
            _check(isinstance(p, int) and 0 <= p < num_clients, f"{path}.partitions[{j}]", p,
                   f"a partition id in [0, {num_clients})")
        _check(len(set(self.partitions)) == len(self.partitions), f"{path}.partitions",
               self.partitions, "no repeated partition id")
        _check(self.start_round >= 1, f"{path}.start_round", self.start_round, "an integer >= 1")
        _check(self.end_round == 0 or self.end_round >= self.start_round, f"{path}.end_round",
               self.end_round, "0 (no end) or >= start_round")
        _check(self.every >= 1, f"{path}.every", self.every, "an integer >= 1")
        if known:
            _build(lambda: BEHAVIOURS.get(self.behaviour).from_params(self.params), f"{path}.params")


@dataclass(frozen=True, kw_only=True)
class PluginConfig:
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def validate(self, path: str) -> None:
        from fedsec.plugins import PLUGINS

        if _check_name(self.name, PLUGINS, f"{path}.name"):
            _build(lambda: PLUGINS.get(self.name)(**self.params), f"{path}.params")


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    seed: int = 0
    engine: str = "ray"
    output: str = "runs"
    device: str = "cpu"
    num_cpus: float = 1.0
    """Ray CPUs per client (engines ray and flower)."""
    num_gpus: float = 0.0
    """Ray GPUs per client, fractional allowed; clients then train on the GPU."""
    ray_address: str = ""
    """Join an existing Ray cluster (else $RAY_ADDRESS, else start a local one)."""
    threads: int = 1
    """torch intra-op threads per client; 1 keeps results bitwise identical across engines."""
    imports: list[str] = field(default_factory=list)
    """Modules that register the user's own components (rules, behaviours, plugins, ...);
    imported by every process that reads the scenario, before it is validated."""
    reference_run: str = ""
    """A run directory of the same federation without the attack (the no-attack reference):
    summary.json then reports its figures and the clean-accuracy drop against it."""
    checkpoint_every: int = 0
    """Write ``checkpoint.safetensors`` (global model, round, rule and plugin state) every k
    rounds; 0 = automatic: after a round whenever the time since the last checkpoint is at
    least 20x what that checkpoint cost (so checkpoints take under 5% of the run)."""
    vectorize: bool = False
    """Train each round's plain-SGD clients (honest, data-poisoning behaviours) together in one
    ``torch.func`` pass (fedsec.federation.vectorized), the others one by one; engines
    ``inline`` and ``ray`` (per actor, a chunk of clients). Same model to float tolerance,
    not bitwise."""
    share_data: bool = True
    """Engine ``ray``: put the training set once per machine into Ray's object store (uint8 where
    the source is 8-bit) and let every actor read it zero-copy, instead of one float32 copy per
    actor (fedsec.federation.shared). Bitwise the same results either way."""

    def validate(self, path: str) -> None:
        from fedsec.federation import ENGINES

        _check_name(self.engine, ENGINES, f"{path}.engine")
        _check(self.device == "cpu" or self.device.startswith("cuda"), f"{path}.device",
               self.device, "'cpu' or 'cuda[:i]'")
        _check(self.num_cpus > 0, f"{path}.num_cpus", self.num_cpus, "a number > 0")
        _check(self.num_gpus >= 0, f"{path}.num_gpus", self.num_gpus, "a number >= 0")
        _check(self.threads >= 1, f"{path}.threads", self.threads, "an integer >= 1")
        if self.reference_run:
            _check((Path(self.reference_run) / "summary.json").is_file(), f"{path}.reference_run",
                   self.reference_run, "a run directory holding summary.json")
        _check(self.checkpoint_every >= 0, f"{path}.checkpoint_every", self.checkpoint_every,
               "an integer >= 0 (0 = automatic)")
        if _check(isinstance(self.vectorize, bool), f"{path}.vectorize", self.vectorize, "true or false"):
            _check(not self.vectorize or self.engine in ("inline", "ray"), f"{path}.vectorize", self.vectorize,
                   f"false with run.engine = {self.engine!r} (Flower's runtime runs one client per message; "
                   "vectorized clients need engine 'inline' or 'ray')")


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str = "run"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    client: ClientConfig = field(default_factory=ClientConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    attack: list[AttackConfig] = field(default_factory=list)
    plugins: list[PluginConfig] = field(default_factory=list)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        with collecting_errors():
            self._validate()

    def _validate(self) -> None:
        try:
            import_components(self.run.imports)
        except ImportError as e:
            _report(str(e))
        _check(bool(self.name) and "/" not in self.name, "name", self.name, "a non-empty name without '/'")
        self.data.validate("data")
        self.model.validate("model")
        self.client.validate("client")
        self.server.validate("server")
        _check(self.server.min_nodes <= self.data.num_clients, "server.min_nodes", self.server.min_nodes,
               f"at most data.num_clients = {self.data.num_clients}")
        if self.run.vectorize:
            from fedsec.data.augment import augmentation_name

            aug = augmentation_name(self.data.dataset, self.data.augment)
            _check(aug == "none", "data.augment", self.data.augment,
                   f"'none' with run.vectorize = true (it resolves to {aug!r} for {self.data.dataset!r}; "
                   "vectorized clients do not augment yet)")
        seen: dict[int, int] = {}
        for i, a in enumerate(self.attack):
            a.validate(f"attack[{i}]", self.data.num_clients)
            for p in a.partitions:
                if p in seen:
                    _check(False, f"attack[{i}].partitions", p,
                           f"a partition not already given to attack[{seen[p]}]")
                seen[p] = i
        for i, p in enumerate(self.plugins):
            p.validate(f"plugins[{i}]")
        self.run.validate("run")

    # -- roles ---------------------------------------------------------------------------
    def role(self, partition_id: int, server_round: int) -> AttackConfig | None:
        """The attack this partition runs in this round, or None (honest)."""
        for a in self.attack:
            if partition_id in a.partitions and a.active(server_round):
                return a
        return None

    def malicious(self, server_round: int) -> list[int]:
        return sorted(p for a in self.attack if a.active(server_round) for p in a.partitions)

    # -- (de)serialisation ----------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Scenario:
        with collecting_errors():
            # The user's components must be registered before their names are checked.
            run = raw.get("run", {}) if isinstance(raw, dict) else {}
            imports = run.get("imports", []) if isinstance(run, dict) else []
            if isinstance(imports, list) and all(isinstance(m, str) for m in imports):
                try:
                    import_components(imports)
                except ImportError as e:
                    _report(str(e))
            scenario = _from_dict(cls, raw, "")
        return scenario

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return dump_toml(self.to_dict())

    def replace(self, **overrides: Any) -> Scenario:
        """A copy with dotted-path overrides, e.g. ``replace(**{"server.rounds": 3})``."""
        raw = self.to_dict()
        for key, value in overrides.items():
            _set_path(raw, key, value)
        return Scenario.from_dict(raw)

    def digest(self) -> str:
        return hashlib.sha256(self.to_toml().encode()).hexdigest()[:16]


def load_scenario(path: str | Path, overrides: list[str] | None = None) -> Scenario:
    """Read a TOML scenario, apply ``KEY=VALUE`` overrides (VALUE parsed as TOML), validate."""
    _, raw = read_toml(path, "scenario file")
    for item in overrides or []:
        key, value = parse_override(item, "override", "server.rounds=3")
        _set_path(raw, key, value)
    return Scenario.from_dict(raw)


def _from_dict(cls: type, raw: Any, path: str) -> Any:
    _require(isinstance(raw, dict), path or "scenario", raw, "a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for k in raw:
        if k not in fields:
            close = difflib.get_close_matches(k, list(fields), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            where = f"{path}.{k}" if path else k
            _report(f"{where}: unknown key{hint}; valid keys: {', '.join(fields)}")
    kwargs = {}
    for k, v in raw.items():
        if k not in fields:
            continue
        try:
            kwargs[k] = _coerce(hints[k], v, f"{path}.{k}" if path else k)
        except ScenarioError as e:  # reported; the field keeps its default so the rest is checked
            for msg in e.errors:
                _report(msg)
            if fields[k].default is dataclasses.MISSING and fields[k].default_factory is dataclasses.MISSING:
                raise ScenarioError.of(e.errors) from None
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = path or "scenario"
        raise ScenarioError(f"{where}: missing required key {missing[0]!r}")
    try:
        return cls(**kwargs)
    except ScenarioError:
        raise
    except (TypeError, ValueError) as e:
        raise ScenarioError(f"{path or 'scenario'}: {e}") from None


def _coerce(tp: Any, v: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, v, path)
    if origin is list:
        (item,) = typing.get_args(tp)
        _require(isinstance(v, list), path, v, "a list")
        return [_coerce(item, x, f"{path}[{i}]") for i, x in enumerate(v)]
    if origin is dict:
        _require(isinstance(v, dict), path, v, "a table")
        return dict(v)
    if tp is bool:
        _require(isinstance(v, bool), path, v, "true or false")
    elif tp is int:
        _require(isinstance(v, int) and not isinstance(v, bool), path, v, "an integer")
    elif tp is float:
        _require(isinstance(v, (int, float)) and not isinstance(v, bool), path, v, "a number")
        return float(v)
    elif tp is str:
        _require(isinstance(v, str), path, v, "a string")
    return v
