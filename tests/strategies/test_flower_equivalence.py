"""Where Flower ships the same rule, our rule equals Flower's own aggregate_train on real Messages."""

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum

from fedsec.federation.engines import _server_context
from fedsec.strategies import get_aggregator


def flower_aggregate(strategy, U: np.ndarray, weights: np.ndarray) -> np.ndarray:
    _server_context()  # sets Flower's TaskIdentity, as a ServerApp process has it
    replies = [
        Message(RecordDict({"arrays": ArrayRecord({"w": Array(row.reshape(4, -1))}),
                            "metrics": MetricRecord({"num-examples": float(wi)})}), 1, "train")
        for row, wi in zip(U, weights)
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays["w"].numpy().reshape(-1)


CASES = [
    ("mean", {}, FedAvg(), True),
    ("median", {}, FedMedian(), False),
    ("trimmed_mean", {"beta": 0.2}, FedTrimmedAvg(beta=0.2), False),
    ("krum", {"f": 2}, Krum(num_malicious_nodes=2), False),
    ("multikrum", {"f": 2, "m": 4}, MultiKrum(num_malicious_nodes=2, num_nodes_to_select=4), True),
    ("bulyan", {"f": 2, "iterative": False}, Bulyan(num_malicious_nodes=2), False),
]


@pytest.mark.parametrize("name, kw, strategy, weighted", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n", [11, 12])
def test_equals_flower(name, kw, strategy, weighted, seed, n):
    rng = np.random.default_rng(seed)
    U = rng.normal(size=(n, 40)).astype(np.float32)
    U[:2] += 8.0  # two outliers, so the robust rules actually select
    w = rng.integers(5, 50, size=n).astype(np.float32)
    ours = get_aggregator(name, **kw)(torch.from_numpy(U), weights=torch.from_numpy(w) if weighted else None)
    np.testing.assert_allclose(ours.vector.numpy(), flower_aggregate(strategy, U, w), rtol=1e-5, atol=1e-6)


def test_paper_bulyan_differs_from_flowers_one_shot_selection_only_in_selection():
    U = torch.randn(11, 40, generator=torch.Generator().manual_seed(3))
    a = get_aggregator("bulyan", f=2)(U)
    b = get_aggregator("bulyan", f=2, iterative=False)(U)
    assert int(a.accepted.sum()) == int(b.accepted.sum()) == 7
