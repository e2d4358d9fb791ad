"""Server side: robust aggregation rules on the (n_clients, d) update matrix.

Contract (DESIGN.md): ``get_aggregator(name, **hyperparameters)`` returns a rule;
``rule(U, weights=None, generator=None)`` returns ``.vector`` (d,), ``.accepted``
(n,) bool and optional ``.scores`` (n,). Every module below registers its rule.
"""

from strategies.base import (
    AGGREGATORS,
    AggregationResult,
    Aggregator,
    get_aggregator,
    register_aggregator,
)
from strategies import (  # noqa: F401  (each module registers its rule)
    bulyan,
    centered_clip,
    filtering,
    flame,
    foolsgold,
    geomed,
    krum,
    mad,
    mean,
    median,
    multikrum,
    norm_clip,
    spectral,
    trimmed_mean,
)

__all__ = ["AGGREGATORS", "AggregationResult", "Aggregator", "get_aggregator", "register_aggregator",
           "RobustStrategy"]


def __getattr__(name: str):
    # Flower is imported only when the Flower strategy is asked for.
    if name == "RobustStrategy":
        from strategies.robust_strategy import RobustStrategy

        return RobustStrategy
    raise AttributeError(f"module 'strategies' has no attribute {name!r}")
