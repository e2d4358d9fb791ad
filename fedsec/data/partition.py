"""Partitioners: which training indices each client (partition id) holds.

Backed by flwr-datasets' partitioners run on the in-memory labels (a
``datasets.Dataset`` with a ``label`` and an ``idx`` column, plus the dataset's
natural-id columns such as ``writer``: fedsec.data.natural), so the splits are
Flower's own and reproducible from ``seed``.

Names: the registered ``iid``, ``dirichlet``, ``shards``, or ``flwr:<Class>`` for any row
partitioner of
``flwr_datasets.partitioner`` with its constructor's keyword arguments
(``data.partitioner = "flwr:PathologicalPartitioner"``, ``data.partitioner_params =
{num_classes_per_partition = 2}``): fedsec supplies ``num_partitions``
(data.num_clients), ``seed`` (from run.seed) and ``partition_by = "label"``
unless given, and checks that the partitioner made exactly num_clients partitions.
"""

from __future__ import annotations

import inspect

import numpy as np

from fedsec.registry import Registry

PARTITIONERS: Registry = Registry("partitioner")
register_partitioner = PARTITIONERS.register

FLWR_PREFIX = "flwr:"
# Partitioners of flwr_datasets that split rows (the vertical ones split columns).
_NOT_ROWS = ("Partitioner", "VerticalEvenPartitioner", "VerticalSizePartitioner")


def flwr_partitioners() -> list[str]:
    """``flwr:<Class>`` names of flwr-datasets' row partitioners."""
    import flwr_datasets.partitioner as fp

    return sorted(FLWR_PREFIX + n for n in fp.__all__
                  if n.endswith("Partitioner") and n not in _NOT_ROWS and inspect.isclass(getattr(fp, n)))


def flwr_class(name: str):
    """The flwr-datasets class behind ``flwr:<Class>``; ValueError listing the valid names."""
    import flwr_datasets.partitioner as fp

    valid = flwr_partitioners()
    if name not in valid:
        import difflib

        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown flwr-datasets partitioner {name!r}{hint}; valid: {', '.join(valid)}")
    return getattr(fp, name[len(FLWR_PREFIX):])


def check_params(name: str, params: dict) -> list[str]:
    """Problems with ``params`` for partitioner ``name`` (unknown keys, missing required ones)."""
    if name.startswith(FLWR_PREFIX):
        try:
            cls = flwr_class(name)
        except ValueError as e:
            return [str(e)]
        sig = inspect.signature(cls.__init__).parameters
        ours = {"self", "num_partitions"}
        names = [k for k in sig if k not in ours]
        problems = [f"{k}: unknown parameter of {cls.__name__}; valid: {', '.join(names)}"
                    for k in params if k not in names]
        supplied = {"seed", "partition_by"}
        problems += [f"{k}: required by {cls.__name__}" for k, p in sig.items()
                     if k not in ours | supplied and p.default is inspect.Parameter.empty
                     and p.kind is p.POSITIONAL_OR_KEYWORD and k not in params]
        return problems
    return []


def partition(
    name: str, labels: np.ndarray, num_partitions: int, *, seed: int,
    columns: dict[str, np.ndarray] | None = None, **params
) -> list[np.ndarray]:
    """Split ``labels`` (N,) into ``num_partitions`` disjoint sorted index arrays.

    ``columns``: the dataset's natural-id columns (name -> (N,) array), for the
    partitioners that split by them (``flwr:NaturalIdPartitioner`` with ``partition_by =
    "writer"``: one client per writer; ``flwr:GroupedNaturalIdPartitioner``).
    """
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if num_partitions > len(labels):
        raise ValueError(f"num_partitions={num_partitions} exceeds the {len(labels)} samples")
    labels = np.asarray(labels)
    if name.startswith(FLWR_PREFIX):
        parts = flwr_partition(name, labels, num_partitions, seed, columns=columns, **params)
    else:
        fn = PARTITIONERS.get(name)
        extra = {"columns": columns or {}} if "columns" in inspect.signature(fn).parameters else {}
        parts = fn(labels, num_partitions, seed, **extra, **params)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _flwr_split(partitioner, labels: np.ndarray, num_partitions: int,
                columns: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    from datasets import Dataset

    table = {**(columns or {}), "label": labels, "idx": np.arange(len(labels))}
    partitioner.dataset = Dataset.from_dict(table)
    made = partitioner.num_partitions
    if made != num_partitions:
        raise ValueError(f"{type(partitioner).__name__} made {made} partitions, but data.num_clients = "
                         f"{num_partitions}: set data.num_clients = {made} (or change its parameters)")
    return [np.asarray(partitioner.load_partition(i)["idx"]) for i in range(num_partitions)]


def flwr_partition(name: str, labels: np.ndarray, num_partitions: int, seed: int, *,
                   columns: dict[str, np.ndarray] | None = None, **params) -> list[np.ndarray]:
    """Any flwr-datasets row partitioner ``flwr:<Class>`` with its keyword ``params``."""
    cls = flwr_class(name)
    problems = check_params(name, params)
    if problems:
        raise ValueError("; ".join(problems))
    sig = inspect.signature(cls.__init__).parameters
    kwargs = dict(params)
    if "num_partitions" in sig:
        kwargs["num_partitions"] = num_partitions
    if "seed" in sig:
        kwargs.setdefault("seed", seed)
    if "partition_by" in sig:
        kwargs.setdefault("partition_by", "label")
        known = {"label", *(columns or {})}
        if kwargs["partition_by"] not in known:
            raise ValueError(f"partition_by: got {kwargs['partition_by']!r}, expected one of {sorted(known)} "
                             "(this dataset's natural-id columns: fedsec.data.natural)")
    return _flwr_split(cls(**kwargs), labels, num_partitions, columns)


@register_partitioner("iid")
def iid(labels: np.ndarray, num_partitions: int, seed: int) -> list[np.ndarray]:
    """Uniformly random, equal-size (+-1) partitions."""
    from flwr_datasets.partitioner import IidPartitioner

    # IidPartitioner splits in dataset order; shuffle first so the split is random under seed.
    perm = np.random.default_rng(seed).permutation(len(labels))
    parts = _flwr_split(IidPartitioner(num_partitions=num_partitions), labels[perm], num_partitions)
    return [perm[p] for p in parts]


@register_partitioner("dirichlet")
def dirichlet(
    labels: np.ndarray, num_partitions: int, seed: int, alpha: float = 0.5, min_partition_size: int = 10
) -> list[np.ndarray]:
    """Label skew: class proportions per client ~ Dirichlet(alpha) (Hsu et al. 2019).

    flwr-datasets redraws up to 10 times until every partition holds at least
    ``min(min_partition_size, N / (2 * num_partitions))`` samples (the cap keeps
    many-client splits of a small set possible); its per-redraw warnings are
    silenced, and a split it cannot satisfy is a ScenarioError saying which
    fields to change.
    """
    import warnings

    from flwr_datasets.partitioner import DirichletPartitioner

    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    min_size = min(min_partition_size, len(labels) // (2 * num_partitions))
    p = DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        alpha=float(alpha),
        min_partition_size=min_size,
        seed=seed,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The specified min_partition_size", category=UserWarning)
        try:
            return _flwr_split(p, labels, num_partitions)
        except ValueError as e:
            if "max number of attempts" not in str(e):
                raise
    from fedsec.scenario import ScenarioError

    capped = "" if min_size == min_partition_size else (
        f" (data.partitioner_params.min_partition_size = {min_partition_size}, capped at half the "
        f"mean partition size)")
    raise ScenarioError(
        f"data.alpha = {alpha}, data.num_clients = {num_partitions}: 11 Dirichlet draws over "
        f"{len(labels)} training samples ({len(labels) / num_partitions:.1f} per client on average) all left "
        f"some client with fewer than {min_size} samples{capped}; raise data.alpha (less label skew), "
        f"lower data.partitioner_params.min_partition_size, or use fewer clients"
    )


@register_partitioner("shards")
def shards(
    labels: np.ndarray, num_partitions: int, seed: int, shards_per_client: int = 2
) -> list[np.ndarray]:
    """Pathological non-IID (McMahan et al. 2017): sort by label, deal k shards per client.

    The remainder that does not fill a whole shard is kept (``keep_incomplete_shard``),
    so partitions cover the whole training set.
    """
    from flwr_datasets.partitioner import ShardPartitioner

    p = ShardPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_shards_per_partition=int(shards_per_client),
        keep_incomplete_shard=True,
        seed=seed,
    )
    return _flwr_split(p, labels, num_partitions)

