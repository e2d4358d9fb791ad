"""Discovery: which partition each connected node holds (a Flower query message)."""

from __future__ import annotations

import time

from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid


def discover(grid: Grid, scenario_toml: str, expected: int, timeout: float = 600.0) -> dict[int, int]:
    """Ask every node for its partition id (a Flower query message).

    ``timeout`` (s) covers the workers' cold start (a Ray actor imports torch and
    loads its data on the first message): on two loaded cores that took over 120 s.
    """
    deadline = time.time() + timeout
    while len(nodes := list(grid.get_node_ids())) < expected:
        if time.time() > deadline:
            raise RuntimeError(f"only {len(nodes)} of {expected} nodes connected after {timeout}s")
        time.sleep(0.2)
    msgs = [
        Message(RecordDict({"config": ConfigRecord({"scenario": scenario_toml})}), n, MessageType.QUERY)
        for n in nodes
    ]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(msgs, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed discovery: {reply.error.reason}")
        mapping[reply.metadata.src_node_id] = int(reply.content["info"]["partition-id"])
    if len(mapping) < len(nodes):
        raise RuntimeError(
            f"only {len(mapping)} of {len(nodes)} nodes answered the discovery query within {timeout:.0f}s "
            f"(silent node ids: {sorted(set(nodes) - set(mapping))})"
        )
    if sorted(mapping.values()) != list(range(expected)):
        raise RuntimeError(
            f"nodes report partitions {sorted(mapping.values())}, expected 0..{expected - 1}: "
            "check num-supernodes / node-config against data.num_clients"
        )
    return mapping
