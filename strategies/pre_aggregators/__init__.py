"""Pre-aggregators: maps of the update matrix applied before any rule.

    from fedsec.strategies import compose, get_aggregator, get_pre_aggregator
    rule = compose([get_pre_aggregator("nnm", f=2)], get_aggregator("krum", f=2))

Every module registers itself in ``PRE_AGGREGATORS`` on import.
"""

from fedsec.strategies.pre_aggregators.base import (
    PRE_AGGREGATORS,
    PreAggregation,
    PreAggregator,
    get_pre_aggregator,
    register_pre_aggregator,
)
from fedsec.strategies.pre_aggregators.compose import Composed, compose, map_back

# one module per pre-aggregator; importing them registers them
from fedsec.strategies.pre_aggregators import arc, bucketing, nnm  # noqa: E402,F401  isort: skip

__all__ = [
    "PRE_AGGREGATORS",
    "Composed",
    "PreAggregation",
    "PreAggregator",
    "compose",
    "get_pre_aggregator",
    "map_back",
    "register_pre_aggregator",
]
