"""The ServerApp main shared by every engine: a :class:`~fedsec.federation.federation.Federation`.

Kept as the stable import path of the server side (``run_server``,
``FederationResult``, ``Progress``, ``discover``).
"""

from fedsec.federation.discovery import discover
from fedsec.federation.federation import (
    Federation,
    FederationError,
    FederationResult,
    Progress,
    RoundOutcome,
    eval_triggers_of,
    run_server,
)

__all__ = ["Federation", "FederationError", "FederationResult", "Progress", "RoundOutcome",
           "discover", "eval_triggers_of", "run_server"]
