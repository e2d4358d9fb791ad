"""Engines: how the same ServerApp main and ClientApp are executed.

- ``inline``: :class:`LocalGrid`, a Flower ``Grid`` that runs the ClientApp
  in this process, one message after another (debugging, tests).
- ``flower``: Flower's own simulation runtime (``flwr.simulation.run_simulation``,
  Ray backend), the reference the others must match bitwise.
- ``ray``: :class:`LocalGrid` whose messages go to a pool of Ray actors
  (fedsec.federation.ray_engine), without Flower's link-state polling.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from fedsec.federation import ENGINES, register_engine  # noqa: F401  (re-exported)

# Flower's own code for "the ClientApp raised" (flwr.common.constant.ErrorCode.CLIENT_APP_RAISED_EXCEPTION)
CLIENT_APP_RAISED_EXCEPTION = 2

ServerMain = Callable[[Grid, Context], Any]


def node_id_of(partition_id: int) -> int:
    # Arbitrary but fixed; the server never relies on it (it asks each node its partition).
    return 1_000_000 + partition_id


def error_reply(msg: Message, exc: BaseException) -> Message:
    reason = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


class LocalGrid(Grid):
    """A Flower ``Grid`` over in-process nodes; ``executor`` runs a batch of messages.

    ``executor(messages, contexts) -> replies`` receives the pushed messages and
    each destination node's persistent ``Context``; the default runs the
    ClientApp inline, turning an exception into Flower's error reply.
    """

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        *,
        executor: Callable[[list[Message], list[Context]], list[Message]] | None = None,
        on_reply: Callable[[Message], None] | None = None,
    ) -> None:
        self.client_app = client_app
        self._run = Run.create_empty(run_id=1)
        self.contexts = {
            node_id_of(i): Context(
                run_id=1, node_id=node_id_of(i),
                node_config={"partition-id": i, "num-partitions": num_nodes},
                state=RecordDict(), run_config={},
            )
            for i in range(num_nodes)
        }
        self.executor = executor or self._inline
        self.on_reply = on_reply
        self._replies: dict[str, Message] = {}
        self.freeze_gc = False  # see frozen_gc
        self._frozen = False

    def _inline(self, messages: list[Message], contexts: list[Context]) -> list[Message]:
        # Sender and receiver share this process: arrays are handed over as tensors, and
        # with run.vectorize the round's plain-SGD clients train together.
        from fedsec.federation.vectorized import execute

        return execute(self.client_app, messages, contexts, self.on_reply)

    # -- Grid API ------------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for m in messages:
            if m.metadata.dst_node_id not in self.contexts:
                raise ValueError(f"message for unknown node {m.metadata.dst_node_id}")
            m.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            m.metadata.__dict__["_created_at"] = time.time()
        ctxs = [self.contexts[m.metadata.dst_node_id] for m in messages]
        if self.freeze_gc and not self._frozen and any(m.metadata.message_type.startswith("train")
                                                      for m in messages):
            gc.freeze()
            self._frozen = True
        for m, r in zip(messages, self.executor(messages, ctxs)):
            self._replies[m.metadata.message_id] = r
        return [m.metadata.message_id for m in messages]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return list(self.pull_messages(self.push_messages(messages)))


@contextlib.contextmanager
def frozen_gc(grid: LocalGrid) -> Iterator[LocalGrid]:
    """Keep the run's start-up objects out of Python's cyclic garbage collector.

    At the first train message everything alive (modules, the dataset, the
    Federation) moves to the collector's permanent generation (``gc.freeze``),
    so a full collection during the rounds walks only what the rounds created:
    on the 1000-client digits run that collector time was about 0.3 s a round.
    The objects go back to the collector when the run ends (``gc.unfreeze``), so
    nothing that becomes garbage meanwhile outlives the run.
    """
    grid.freeze_gc = True
    try:
        yield grid
    finally:
        if grid._frozen:
            gc.unfreeze()
            grid._frozen = False


def _server_context() -> Context:
    # Flower's Message constructor reads the sender's identity from TaskIdentity; set it
    # as run_simulation does for its ServerApp thread (task 1, run 1, the SuperLink node).
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id = 1
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})


@register_engine("inline")
def run_inline(scenario, main: ServerMain, *, on_reply=None) -> None:
    """Every client in this process, one after another, on the same Grid (tests, debugging; no Ray)."""
    from fedsec.federation.client import client_app

    with frozen_gc(LocalGrid(client_app, scenario.data.num_clients, on_reply=on_reply)) as grid:
        main(grid, _server_context())


@register_engine("flower")
def run_flower(scenario, main: ServerMain, *, on_reply=None) -> None:
    """Flower's simulation runtime on Ray (client resources from ``run``)."""
    import os

    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from fedsec.federation.client import client_app

    server_app = ServerApp()
    failure: list[BaseException] = []

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            main(grid, context)
        except BaseException as e:  # re-raised below with its own traceback
            failure.append(e)
            raise

    # Our ray engine's actor pool holds the cluster's CPUs; Flower's own actors would wait
    # for them forever, so hand them back first.
    if "fedsec.federation.ray_engine" in sys.modules:
        sys.modules["fedsec.federation.ray_engine"].shutdown()
    init_args: dict[str, Any] = {"logging_level": 30, "log_to_driver": False}
    address = scenario.run.ray_address or os.environ.get("RAY_ADDRESS", "")
    if address:
        init_args["address"] = address
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=scenario.data.num_clients,
        backend_config={
            "client_resources": {"num_cpus": scenario.run.num_cpus, "num_gpus": scenario.run.num_gpus},
            "init_args": init_args,
        },
    )
    if failure:
        raise failure[0]

