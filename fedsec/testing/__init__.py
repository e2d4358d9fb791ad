"""Conformance checks for components, the ones the project runs on its own registries.

    from fedsec.testing import check_aggregator, check_behaviour, check_plugin

    check_aggregator(MyRule, {"tau": 2.0})      # shape, dtype, device, no in-place change,
                                               # determinism, non-finite rows dropped
    check_behaviour(MyAttack, {"target": 1})    # frozen dataclass, stateless, deterministic
                                               # stages, inputs untouched; craft's contract
    check_plugin(MyPlugin)                      # hooks' return types, determinism

Each raises ``AssertionError`` naming the component and what it broke. They are
plain functions, usable from pytest or a script.
"""

from fedsec.testing.aggregators import check_aggregator, check_pre_aggregator
from fedsec.testing.behaviours import check_behaviour, check_client_stages, check_craft, digits_task_factory
from fedsec.testing.plugins import check_plugin

__all__ = ["check_aggregator", "check_pre_aggregator", "check_behaviour", "check_client_stages",
           "check_craft", "digits_task_factory", "check_plugin"]
