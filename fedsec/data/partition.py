"""Partitioners: which training indices each client (partition id) holds.

Backed by flwr-datasets' partitioners run on the in-memory labels (a
``datasets.Dataset`` with a ``label`` and an ``idx`` column), so the splits are
Flower's own and reproducible from ``seed``.
"""

from __future__ import annotations

import numpy as np

from fedsec.registry import Registry

PARTITIONERS: Registry = Registry("partitioner")
register_partitioner = PARTITIONERS.register


def partition(
    name: str, labels: np.ndarray, num_partitions: int, *, seed: int, **params
) -> list[np.ndarray]:
    """Split ``labels`` (N,) into ``num_partitions`` disjoint sorted index arrays."""
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if num_partitions > len(labels):
        raise ValueError(f"num_partitions={num_partitions} exceeds the {len(labels)} samples")
    parts = PARTITIONERS.get(name)(np.asarray(labels), num_partitions, seed, **params)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def _flwr_split(partitioner, labels: np.ndarray, num_partitions: int) -> list[np.ndarray]:
    from datasets import Dataset

    partitioner.dataset = Dataset.from_dict({"label": labels, "idx": np.arange(len(labels))})
    return [np.asarray(partitioner.load_partition(i)["idx"]) for i in range(num_partitions)]


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
