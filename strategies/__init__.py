"""Robust aggregation rules on the update matrix U (n clients x d coordinates).

    from fedsec.strategies import get_aggregator
    rule = get_aggregator("krum", f=2)
    out = rule(U, weights=w, generator=g)   # out.vector, out.accepted, out.scores

Every rule module registers itself in ``AGGREGATORS`` on import; register your
own with ``@register_aggregator("name")`` on an ``Aggregator`` subclass.
Importing this package does not import flwr (except the Flower strategy below).
"""

from fedsec._layout import alias_toplevel as _alias

_alias(__name__)  # `import strategies` (the card's name) -> fedsec.strategies


from fedsec.strategies.base import (
    AGGREGATORS,
    AggregationResult,
    Aggregator,
    get_aggregator,
    register_aggregator,
)

# one module per rule; importing them registers them
from fedsec.strategies import (  # noqa: E402,F401  isort: skip
    mean,
    median,
    trimmed_mean,
    geomed,
    krum,
    multikrum,
    bulyan,
    centered_clip,
    norm_clip,
    flame,
    foolsgold,
    mad,
    filtering,
    spectral,
    dnc,
    signguard,
    clipped_clustering,
    mda,
    meamed,
    fltrust,
    sever,
    tukey,
)
from fedsec.strategies.pre_aggregators import (  # noqa: E402  isort: skip
    PRE_AGGREGATORS,
    Composed,
    PreAggregation,
    PreAggregator,
    compose,
    get_pre_aggregator,
    register_pre_aggregator,
)

__all__ = [
    "AGGREGATORS",
    "AggregationResult",
    "Aggregator",
    "get_aggregator",
    "register_aggregator",
    "PRE_AGGREGATORS",
    "Composed",
    "PreAggregation",
    "PreAggregator",
    "compose",
    "get_pre_aggregator",
    "register_pre_aggregator",
]

# ---------------------------------------------------------------------------
# Flower strategy (maintained by the lead; the only place that imports flwr).
# Add below this line:  from fedsec.strategies.robust_strategy import RobustStrategy
# ---------------------------------------------------------------------------


def __getattr__(name: str):
    # Lazy, so that importing the rules never imports Flower.
    if name == "RobustStrategy":
        from fedsec.strategies.robust_strategy import RobustStrategy

        return RobustStrategy
    raise AttributeError(f"module 'strategies' has no attribute {name!r}")


__all__ += ["RobustStrategy"]
