"""Client side: honest and malicious behaviours, chosen per partition by name."""

from fedsec._layout import alias_toplevel as _alias

_alias(__name__)  # `import clients` (the card's name) -> fedsec.clients


from fedsec.clients.base import (
    BEHAVIOURS,
    Behaviour,
    ClientContext,
    ClientTask,
    Colluding,
    TrainConfig,
    Honest,
    get_behaviour,
    register_behaviour,
)
from fedsec.clients.training import local_train
from fedsec.clients import faults as _faults  # noqa: E402,F401

# Built-in attacks register themselves on import; keep this list in sync with clients/*.py.
from fedsec.clients import attacks as _attacks  # noqa: E402,F401

__all__ = [
    "BEHAVIOURS",
    "Behaviour",
    "ClientContext",
    "ClientTask",
    "Colluding",
    "TrainConfig",
    "Honest",
    "get_behaviour",
    "register_behaviour",
    "local_train",
]
