"""Discovery: which partition each connected node holds, kept current round by round.

Every engine's nodes answer a Flower query message with their ``partition-id``
(from the node config: ``flower-supernode --node-config "partition-id=i
num-partitions=N"``, or the ids an engine gives its simulated nodes). The
server never assumes which nodes exist:

- before the first round :meth:`Roster.wait` waits until ``min_nodes`` nodes
  are connected and have answered (up to ``timeout`` seconds);
- before every round :meth:`Roster.refresh` drops the nodes that are gone
  (Flower's SuperLink stops listing a node whose heartbeat stopped) and asks
  the nodes that joined since, so the strategy samples among the nodes
  connected now;
- :func:`collect` sends a round's messages and turns every message that got
  no reply by ``round_timeout`` into an error reply, so a node lost mid-round
  is a failed client of that round (``metrics.jsonl`` ``failed``), never a hang.

Partition ids need not be 0..N-1 and need not all be present: each must lie in
``[0, data.num_clients)`` and be held by one node only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from flwr.app import ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.serverapp import Grid

log = logging.getLogger("fedsec")

# Flower's "the destination node is gone" (flwr.common.constant.ErrorCode.NODE_UNAVAILABLE):
# the code the SuperLink itself uses when a node's heartbeat stops.
NODE_UNAVAILABLE = 5


class DiscoveryError(RuntimeError):
    """Nodes did not connect or answered with a partition the scenario does not have."""


def _query(grid: Grid, nodes: list[int], scenario_toml: str, timeout: float) -> list[Message]:
    msgs = [Message(RecordDict({"config": ConfigRecord({"scenario": scenario_toml})}), n, MessageType.QUERY)
            for n in nodes]
    return list(grid.send_and_receive(msgs, timeout=timeout))


def _parse(reply: Message, num_clients: int) -> tuple[int, str | None]:
    """(partition id, problem or None) of one discovery reply."""
    node = reply.metadata.src_node_id
    if reply.has_error():
        return -1, f"node {node} failed discovery: {reply.error.reason}"
    info = reply.content["info"]
    pid = int(info["partition-id"])
    if not 0 <= pid < num_clients:
        return pid, (f"node {node} reports partition-id {pid}, expected 0..{num_clients - 1} "
                     f"(data.num_clients = {num_clients}): check the node's --node-config "
                     "(or num-supernodes) against data.num_clients")
    if "num-partitions" in info and int(info["num-partitions"]) != num_clients:
        return pid, (f"node {node} reports num-partitions {int(info['num-partitions'])}, but "
                     f"data.num_clients = {num_clients}: start SuperNodes with "
                     f"--node-config \"partition-id=<i> num-partitions={num_clients}\"")
    return pid, None


class Roster:
    """node id -> partition id of the connected nodes (see the module docstring).

    ``min_nodes``: nodes a round needs; ``timeout``: seconds to wait for them
    (and for a discovery answer).
    """

    def __init__(self, scenario_toml: str, num_clients: int, *, min_nodes: int | None = None,
                 timeout: float = 600.0) -> None:
        self.toml = scenario_toml
        self.num_clients = int(num_clients)
        self.min_nodes = self.num_clients if min_nodes is None else int(min_nodes)
        self.timeout = float(timeout)
        self.partition_of: dict[int, int] = {}
        self.ignored: set[int] = set()  # late joiners that answered badly: never asked again

    def wait(self, grid: Grid) -> dict[int, int]:
        """Before the first round: ``min_nodes`` connected and answering, else DiscoveryError.

        A bad answer (partition out of range, held twice, wrong num-partitions) is an
        error here: the federation is misconfigured before it starts.
        """
        deadline = time.time() + self.timeout
        while len(nodes := list(grid.get_node_ids())) < self.min_nodes:
            if time.time() > deadline:
                raise DiscoveryError(f"only {len(nodes)} of {self.min_nodes} nodes connected after "
                                     f"{self.timeout:g}s (server.min_nodes = {self.min_nodes}, "
                                     f"server.wait_timeout = {self.timeout:g})")
            time.sleep(0.2)
        replies = _query(grid, nodes, self.toml, max(deadline - time.time(), 1.0))
        mapping, problems = self._accept(replies)
        if problems:
            raise DiscoveryError(problems[0] if len(problems) == 1 else "; ".join(problems))
        if len(mapping) < self.min_nodes:
            raise DiscoveryError(
                f"only {len(mapping)} of {len(nodes)} nodes answered the discovery query within "
                f"{self.timeout:.0f}s (silent node ids: {sorted(set(nodes) - set(mapping))}); "
                f"a round needs {self.min_nodes} (server.min_nodes)")
        if len(mapping) < len(nodes):
            log.warning("discovery: nodes %s did not answer within %.0fs; going on with %d nodes",
                        sorted(set(nodes) - set(mapping)), self.timeout, len(mapping))
        self.partition_of = mapping
        return dict(mapping)

    def refresh(self, grid: Grid, server_round: int) -> dict[int, int]:
        """Before a round: forget the nodes that left, ask the ones that joined.

        Waits up to ``timeout`` while fewer than ``min_nodes`` are connected; a late
        joiner with a bad answer is logged and ignored (the run goes on).
        """
        deadline = time.time() + self.timeout
        while True:
            connected = set(grid.get_node_ids())
            gone = set(self.partition_of) - connected
            for n in sorted(gone):
                log.warning("round %d: node %d (partition %d) is no longer connected", server_round, n,
                            self.partition_of.pop(n))
            new = sorted(connected - set(self.partition_of) - self.ignored)
            if new:
                mapping, problems = self._accept(_query(grid, new, self.toml, self.timeout))
                for p in problems:
                    log.warning("round %d: %s; node ignored", server_round, p)
                self.ignored |= set(new) - set(mapping)
                self.partition_of.update(mapping)
            if len(self.partition_of) >= self.min_nodes:
                return dict(self.partition_of)
            if time.time() > deadline:
                raise DiscoveryError(
                    f"round {server_round}: only {len(self.partition_of)} of {self.min_nodes} nodes "
                    f"connected after {self.timeout:g}s (server.min_nodes = {self.min_nodes})")
            time.sleep(0.5)

    def _accept(self, replies: Iterable[Message]) -> tuple[dict[int, int], list[str]]:
        mapping: dict[int, int] = {}
        problems: list[str] = []
        holder = {p: n for n, p in self.partition_of.items()}
        for reply in replies:
            node = reply.metadata.src_node_id
            pid, problem = _parse(reply, self.num_clients)
            if problem is None and pid in holder:
                problem = (f"nodes {holder[pid]} and {node} both hold partition {pid}: give each "
                           "SuperNode its own partition-id")
            if problem:
                problems.append(problem)
                continue
            holder[pid] = node
            mapping[node] = pid
        return mapping, problems


def discover(grid: Grid, scenario_toml: str, expected: int, timeout: float = 600.0,
             min_nodes: int | None = None) -> dict[int, int]:
    """node id -> partition id once ``min_nodes`` (default ``expected``, the number of
    partitions) nodes are connected and have answered; see :class:`Roster`.

    ``timeout`` (s) covers the workers' cold start (a Ray actor imports torch and
    loads its data on the first message): on two loaded cores that took over 120 s.
    """
    return Roster(scenario_toml, expected, min_nodes=min_nodes, timeout=timeout).wait(grid)


def no_reply(msg: Message, reason: str) -> Message:
    """The error reply standing for a reply that never came (Flower's NODE_UNAVAILABLE)."""
    return Message(Error(code=NODE_UNAVAILABLE, reason=reason), reply_to=msg)


def collect(grid: Grid, messages: list[Message], timeout: float = 0.0) -> list[Message]:
    """Send ``messages`` and gather one reply per message, in no particular order.

    ``timeout`` > 0 bounds the wait; a message still unanswered then gets an error
    reply ``no reply within <timeout>s`` (the strategy counts that client as failed).
    """
    got = list(grid.send_and_receive(messages, timeout=timeout if timeout > 0 else None))
    sent = {m.metadata.message_id: m for m in messages}
    replies = []
    for r in got:
        m = sent.pop(r.metadata.reply_to_message_id, None)
        if m is not None and r.has_error() and r.metadata.src_node_id != m.metadata.dst_node_id:
            # The SuperLink answers for a node it declared unavailable, as itself (node 1):
            # re-address the error to the node, so the failure is charged to its partition.
            r = no_reply(m, r.error.reason)
        replies.append(r)
    for m in sent.values():
        replies.append(no_reply(m, f"no reply within {timeout:g}s (server.round_timeout)"
                                if timeout > 0 else "no reply"))
    return replies
