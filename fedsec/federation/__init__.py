"""Flower glue: the ClientApp, the ServerApp main, the Federation and the engines that run them.

``ENGINES`` lists the engines by name without importing them (they import
Flower and Ray), so a scenario can be validated in a process that never runs one.
"""

from fedsec.registry import Registry

ENGINES: Registry = Registry("engine")
register_engine = ENGINES.register
ENGINES.register_lazy("inline", "fedsec.federation.engines:run_inline")
ENGINES.register_lazy("flower", "fedsec.federation.engines:run_flower")
ENGINES.register_lazy("ray", "fedsec.federation.ray_engine:run_ray")
