"""Engine ``ray``: Flower's Message API executed by a pool of long-lived Ray actors.

The ServerApp main and the ClientApp are Flower's; only the transport
differs from Flower's simulation runtime: :class:`~fedsec.federation.engines.LocalGrid`
hands each message straight to a free actor (``ray.wait`` load balancing)
instead of going through the SuperLink's link state and its polling loop.
Each actor imports the ClientApp once and keeps the dataset, partitions and
parsed scenario cached across calls (``fedsec.federation.env``). A round's
messages share one RecordDict (the global model), which is put in Ray's
object store once per round rather than pickled once per client, its arrays
decoded once on the driver so they travel as ndarrays (fedsec.federation.arrays).
With ``run.vectorize`` each actor gets one chunk of the round's vectorizable
clients (balanced by partition size) and trains it in one batched pass
(fedsec.federation.vectorized); the other clients are queued one by one.

Failures: an exception in the ClientApp becomes Flower's error reply inside
the actor; an actor that dies yields an error reply for its message (for every
message of its chunk) and is replaced, and the round goes on with the others.

Cluster: ``run.ray_address`` (or ``$RAY_ADDRESS``) joins an existing cluster;
the pool size follows from the CPUs/GPUs Ray reports and ``run.num_cpus`` /
``run.num_gpus`` per client. fedsec must be importable on every node.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
from typing import Any

from flwr.app import Context, Message

from fedsec.federation.engines import LocalGrid, ServerMain, _server_context, error_reply, frozen_gc, register_engine

_POOL: dict[str, Any] = {}
log = logging.getLogger(__name__)


def _ray():
    import ray

    return ray


def ensure_ray(address: str = "") -> None:
    ray = _ray()
    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING",
                              "log_to_driver": True, "configure_logging": True}
    if address:
        kwargs["address"] = address
    ray.init(**kwargs)
    atexit.register(shutdown)


def shutdown() -> None:
    for actor in _POOL.pop("actors", []):
        try:
            _ray().kill(actor)
        except Exception:
            pass
    _POOL.clear()
    # Object refs die with the session: forget the shared datasets put in it.
    shared = sys.modules.get("fedsec.federation.shared")
    if shared is not None:
        shared._PUBLISHED.clear()
    if _ray().is_initialized():
        _ray().shutdown()


class _Worker:
    """Runs the ClientApp; one per pool slot, kept alive across rounds and runs."""

    def __init__(self) -> None:
        from fedsec.federation.client import client_app

        self.app = client_app

    def ping(self) -> bool:
        return True

    def attach(self, key: str, shared: Any) -> bool:
        """Read the training set from the object store (zero-copy) for scenarios with ``key``."""
        from fedsec.federation import shared as shared_data

        shared_data.attach(key, shared)
        return True

    def call(self, message: Message, content: Any, context: Context) -> tuple[Message, Context]:
        (reply,), (context,) = self.call_many([message], content, [context])
        return reply, context

    def call_many(self, messages: list[Message], content: Any,
                  contexts: list[Context]) -> tuple[list[Message], list[Context]]:
        """Run messages that share one payload; with run.vectorize the vectorizable ones
        train together. An exception in the ClientApp becomes that message's error reply."""
        from fedsec.federation.vectorized import execute

        if content is not None:
            for m in messages:
                m.content = content
        return execute(self.app, messages, contexts), contexts


def pool_size(num_cpus: float, num_gpus: float) -> int:
    res = _ray().cluster_resources()
    by_cpu = int(res.get("CPU", 1) // num_cpus) if num_cpus > 0 else 1 << 30
    by_gpu = int(res.get("GPU", 0) // num_gpus) if num_gpus > 0 else 1 << 30
    n = min(by_cpu, by_gpu)
    if n < 1:
        raise RuntimeError(
            f"Ray reports {res.get('CPU', 0)} CPUs / {res.get('GPU', 0)} GPUs: not enough for one client "
            f"with run.num_cpus={num_cpus}, run.num_gpus={num_gpus}"
        )
    return n


class ActorPool:
    DEPTH = 2  # calls queued per actor
    START_TIMEOUT = 300.0  # s a round waits for a replacement actor when no other actor is left
    MAX_START_FAILURES = 3

    def __init__(self, num_cpus: float, num_gpus: float, size: int) -> None:
        ray = _ray()
        self.cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)(_Worker)
        self.actors = [self.cls.remote() for _ in range(size)]
        ray.get([a.ping.remote() for a in self.actors])
        self.replaced = 0
        # slot -> the ping of a replacement that has not started yet. A replacement gets
        # work only once it runs: after a node is lost its CPUs may never come back, and a
        # call queued on an actor that never starts would hang the round.
        self.starting: dict[int, Any] = {}
        self.start_failures: dict[int, int] = {}
        self.retired: set[int] = set()

    def replace(self, slot: int) -> None:
        ray = _ray()
        try:  # an unreachable actor may still hold its CPU: free it
            ray.kill(self.actors[slot], no_restart=True)
        except Exception:
            pass
        self.actors[slot] = self.cls.remote()
        self.replaced += 1
        if getattr(self, "shared", None):  # an actor runs its calls in order: attached before any work
            self.actors[slot].attach.remote(*self.shared)
        self.starting[slot] = self.actors[slot].ping.remote()

    def started(self, slot: int) -> bool:
        """Settle the start of ``slot``'s replacement; whether it can take work now."""
        ref = self.starting.pop(slot)
        try:
            _ray().get(ref)
        except Exception as e:  # could not start (its node died too): try again, then give the slot up
            self.start_failures[slot] = self.start_failures.get(slot, 0) + 1
            if self.start_failures[slot] >= self.MAX_START_FAILURES:
                self.retired.add(slot)
                log.warning("Ray client actor slot %d retired after %d failed starts: %s",
                            slot, self.start_failures[slot], e)
            else:
                self.replace(slot)
            return False
        self.start_failures.pop(slot, None)
        return True

    def ready(self, slot: int) -> bool:
        return slot not in self.starting and slot not in self.retired

    def share(self, key: str, ref: Any) -> None:
        """Every actor (and every replacement) reads the training set behind ``ref``
        (fedsec.federation.shared) instead of loading its own copy."""
        if getattr(self, "shared", None) != (key, ref):
            self.shared = (key, ref)
            calls = [a.attach.remote(key, ref) for a in self.actors]
            # A replacement still starting runs its attach before any work: no need to wait on it.
            _ray().get([c for slot, c in enumerate(calls) if self.ready(slot)])

    def plan(self, messages: list[Message], contexts: list[Context]) -> tuple[dict[int, Any], list[list[int]]]:
        """(object-store ref per distinct payload, work items as lists of message indices)."""
        from fedsec.federation.arrays import in_memory_content
        from fedsec.federation.vectorized import plan_chunks, spread

        # One object-store copy of each distinct payload (FedAvg sends the same RecordDict to
        # all), its arrays decoded once here: they travel as ndarrays, not .npy bytes.
        refs: dict[int, Any] = {}
        for m in messages:
            if id(m.content) not in refs:
                refs[id(m.content)] = _ray().put(in_memory_content(m.content))
        # Work items, each one actor call: with run.vectorize one chunk of vectorizable
        # clients per actor (trained together there); the other messages in DEPTH chunks
        # per actor, run one by one inside, since a Ray call costs a few milliseconds of
        # round trip on a busy host, as much as a small client's training. A chunk holds
        # messages of one payload.
        chunks, rest = plan_chunks(messages, contexts, len(self.actors))
        items: list[list[int]] = list(chunks)
        for group in _by_payload(messages, rest):
            items += spread(messages, contexts, group, self.DEPTH * len(self.actors))
        return refs, items

    def run(self, messages: list[Message], contexts: list[Context], on_reply=None) -> list[Message]:
        ray = _ray()
        refs, items = self.plan(messages, contexts)
        replies: list[Message | None] = [None] * len(messages)
        pending = list(range(len(items)))
        running: dict[Any, tuple[int, int]] = {}  # ref -> (item index, actor slot)
        # Up to DEPTH calls queued per actor, so an actor never idles through the
        # driver's reply/dispatch round trip. An actor runs its calls in submission
        # order, so the head of its queue is the call that was running when it died:
        # the calls queued behind it are re-sent; if the head held one message, that
        # message gets the error reply, if it held several, each is re-sent on its
        # own, so that only the one that kills an actor fails (which client fails
        # never depends on scheduling or chunking; each client's result is seeded).
        queues: list[list[Any]] = [[] for _ in self.actors]

        def fill(slot: int) -> None:
            while pending and len(queues[slot]) < self.DEPTH:
                k = pending.pop(0)
                idx = items[k]
                ref = self.actors[slot].call_many.remote(
                    [_without_content(messages[i]) for i in idx], refs[id(messages[idx[0]].content)],
                    [contexts[i] for i in idx])
                running[ref] = (k, slot)
                queues[slot].append(ref)

        def settle(i: int, reply: Message) -> None:
            replies[i] = reply
            if on_reply:
                on_reply(reply)

        while True:
            for slot in range(len(self.actors)):  # work re-queued from a dead actor goes to any idle one
                if self.ready(slot):
                    fill(slot)
            if not running and not (pending and self.starting):
                break
            starting = {ref: slot for slot, ref in self.starting.items()}
            done, _ = ray.wait(list(running) + list(starting), num_returns=1,
                               timeout=None if running else self.START_TIMEOUT)
            if not done:  # no actor left and none could start: fail what is left (below)
                break
            for ref in done:
                if ref in starting:
                    self.started(starting[ref])
                    continue
                if ref not in running:  # already handled with its dead actor's queue
                    continue
                k, slot = running[ref]
                try:
                    got, ctxs = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError,
                        ray.exceptions.NodeDiedError) as e:
                    k = running[queues[slot][0]][0]
                    requeue = [running[r][0] for r in queues[slot][1:]]
                    for r in queues[slot]:
                        running.pop(r)
                    queues[slot].clear()
                    self.replace(slot)
                    if len(items[k]) == 1:
                        i = items[k][0]
                        settle(i, error_reply(messages[i], RuntimeError(f"client actor died: {e}")))
                    else:
                        singles = list(range(len(items), len(items) + len(items[k])))
                        items += [[i] for i in items[k]]
                        requeue = singles + requeue
                    pending[:0] = requeue
                else:
                    running.pop(ref)
                    queues[slot].remove(ref)
                    for i, reply, ctx in zip(items[k], got, ctxs):
                        contexts[i].state = ctx.state
                        settle(i, reply)
        for k in pending:
            for i in items[k]:
                settle(i, error_reply(messages[i], RuntimeError(
                    f"no Ray client actor could start within {self.START_TIMEOUT:.0f} s "
                    f"(cluster resources now: {ray.cluster_resources()})")))
        return replies  # type: ignore[return-value]


def _by_payload(messages: list[Message], idx: list[int]) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for i in idx:
        groups.setdefault(id(messages[i].content), []).append(i)
    return list(groups.values())


def _without_content(m: Message) -> Message:
    """A copy of ``m`` whose payload travels separately (by object-store reference)."""
    import copy

    shell = copy.copy(m)
    shell.__dict__["_content"] = None  # type: ignore[index]
    return shell


def get_pool(num_cpus: float, num_gpus: float) -> ActorPool:
    key = f"{num_cpus}:{num_gpus}"
    if _POOL.get("key") != key:
        for actor in _POOL.get("actors", []):
            _ray().kill(actor)
        pool = ActorPool(num_cpus, num_gpus, pool_size(num_cpus, num_gpus))
        _POOL.update(key=key, pool=pool, actors=pool.actors)
    return _POOL["pool"]


@register_engine("ray")
def run_ray(scenario, main: ServerMain, *, on_reply=None) -> None:
    """A pool of long-lived Ray actors running the ClientApp (the default; joins run.ray_address
    or $RAY_ADDRESS)."""
    from fedsec.federation.client import client_app

    ensure_ray(scenario.run.ray_address or os.environ.get("RAY_ADDRESS", ""))
    pool = get_pool(scenario.run.num_cpus, scenario.run.num_gpus)
    if scenario.run.share_data:
        from fedsec.federation import shared

        if shared.shareable(scenario):
            pool.share(*shared.publish(scenario))
    grid = LocalGrid(
        client_app,
        scenario.data.num_clients,
        executor=lambda msgs, ctxs: pool.run(msgs, ctxs, on_reply),
    )
    with frozen_gc(grid):
        main(grid, _server_context())
