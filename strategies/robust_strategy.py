"""RobustStrategy: Flower's message-based FedAvg with a pluggable robust rule.

It keeps the arrays it sent each round, turns the replies into the update
matrix U (n_clients x d, float32, client minus global over floating-point
arrays), lets an optional adversary stage rewrite the attackers' rows (a
simulation hook for omniscient attacks), applies the aggregation rule and adds
``server_lr * out.vector`` to the global model. Usable in any Flower ServerApp.

Policies:
- A reply is rejected before aggregation (and logged with its partition id)
  when it is an error reply, lacks the arrays or ``num-examples``, or its
  arrays differ from what was sent in names, shapes or dtypes.
- Rows with NaN/inf are dropped by the rule itself (``Aggregator`` contract),
  so a non-finite update never reaches the global model.
- Integer buffers (BatchNorm's ``num_batches_tracked``) are not averaged: the
  new value is the element-wise lower median of the accepted clients' values
  (a single client cannot set it; equal to any honest value when all agree).
- Sampling: when ``partition_of`` (node id -> partition id) is known, the
  clients of a round are drawn from a generator seeded by (seed, round) over
  partition ids, and replies are sorted by partition id before forming U, so
  the result does not depend on node ids or reply order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from fedsec.strategies.base import Aggregator, finite_rows

Adversary = Callable[[int, torch.Tensor, list[int], torch.Generator], torch.Tensor]
Reference = Callable[[int, dict[str, torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class AggregationReport:
    """What one ``aggregate_train`` call decided (partition ids throughout).

    ``failed``: (partition, reason) of replies that were errors or malformed;
    ``nonfinite``: replies whose update held NaN/inf (never aggregated);
    ``scores``: the rule's per-client suspicion, or None; ``train_loss`` and
    ``num_examples``: what each received client reported; ``bytes_received``:
    size of the received arrays; ``seconds``: time to parse, form U and aggregate.
    """

    round: int
    sampled: tuple[int, ...]
    failed: tuple[tuple[int, str], ...] = ()
    accepted: tuple[int, ...] = ()
    nonfinite: tuple[int, ...] = ()
    scores: dict[int, float] | None = None
    train_loss: dict[int, float] = field(default_factory=dict)
    num_examples: dict[int, float] = field(default_factory=dict)
    bytes_received: int = 0
    seconds: float = 0.0
    aggregated: bool = False
    error: str | None = None
    """Why the rule produced no update this round (None when it did)."""

    @property
    def received(self) -> tuple[int, ...]:
        bad = {p for p, _ in self.failed}
        return tuple(p for p in self.sampled if p not in bad)


class RobustStrategy(FedAvg):
    """FedAvg whose aggregation goes through ``aggregator`` on the update matrix.

    Parameters
    ----------
    aggregator : a rule from ``strategies.get_aggregator``.
    server_lr : eta, the global step: G <- G + eta * rule(U).
    seed : seeds client sampling and the rule's generator per round.
    partition_of : node id -> partition id (from a discovery query); enables
        engine-independent sampling and ordering.
    adversary : ``(round, U, partition_ids, generator) -> U`` run before the rule.
    post_aggregate : ``(round, state_dict) -> state_dict`` run on the new global
        model (server plugins).
    reference : ``(round, global_state) -> (d,) update`` the server's own update on
        its root set, for rules with ``needs_reference`` (FLTrust).
    device : where U is formed and the rule runs.

    After each ``aggregate_train`` the frozen :class:`AggregationReport` of that
    round is ``last_report``.
    """

    def __init__(
        self,
        *,
        aggregator: Aggregator,
        fraction_train: float = 1.0,
        server_lr: float = 1.0,
        seed: int = 0,
        partition_of: dict[int, int] | None = None,
        adversary: Adversary | None = None,
        post_aggregate: Callable[[int, dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None,
        reference: Reference | None = None,
        device: str | torch.device = "cpu",
        **fedavg_kwargs: Any,
    ) -> None:
        fedavg_kwargs.setdefault("fraction_evaluate", 0.0)
        # FedAvg warns that fraction_evaluate = 0 skips federated evaluation: that is the
        # intent here (the server evaluates centrally), so the warning is only noise.
        flwr_logger = logging.getLogger("flwr")
        quiet = _DropMessage("fraction_evaluate is set to 0.0")
        flwr_logger.addFilter(quiet)
        try:
            super().__init__(fraction_train=fraction_train, **fedavg_kwargs)
        finally:
            flwr_logger.removeFilter(quiet)
        self.aggregator = aggregator
        self.server_lr = float(server_lr)
        self.seed = int(seed)
        self.partition_of = dict(partition_of) if partition_of else None
        self.adversary = adversary
        self.post_aggregate = post_aggregate
        self.reference = reference
        if getattr(aggregator, "needs_reference", False) and reference is None:
            raise ValueError(f"rule {type(aggregator).__name__} needs the server's reference update: "
                             "pass reference=(round, global_state) -> update")
        self.device = torch.device(device)
        self._sent: dict[str, torch.Tensor] | None = None
        self._sampled: list[int] = []
        self.last_report: AggregationReport | None = None

    # -- sampling ------------------------------------------------------------------------
    def sample_partitions(self, server_round: int) -> list[int]:
        from fedsec.seeding import generator

        assert self.partition_of is not None
        pids = sorted(self.partition_of.values())
        k = max(int(len(pids) * self.fraction_train), min(self.min_train_nodes, len(pids)))
        if k >= len(pids):
            return pids
        perm = torch.randperm(len(pids), generator=generator(self.seed, "sample", server_round))
        return sorted(pids[i] for i in perm[:k].tolist())

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._sent = arrays.to_torch_state_dict()
        if self.partition_of is None:
            return super().configure_train(server_round, arrays, config, grid)
        chosen = self.sample_partitions(server_round)
        node_of = {p: n for n, p in self.partition_of.items()}
        self._sampled = chosen
        config["server-round"] = server_round
        config["num-sampled"] = len(chosen)
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, [node_of[p] for p in chosen], MessageType.TRAIN)

    # -- aggregation ---------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        from fedsec.seeding import generator

        assert self._sent is not None, "configure_train must run before aggregate_train"
        t0 = time.perf_counter()
        good, failed, nbytes = self._collect(server_round, replies)
        base = dict(
            round=server_round,
            sampled=tuple(self._sampled) or tuple(sorted([g[0] for g in good] + [f[0] for f in failed])),
            failed=tuple(failed),
            train_loss={g[0]: float(g[3].get("train_loss", float("nan"))) for g in good},
            num_examples={g[0]: g[2] for g in good},
            bytes_received=nbytes,
        )
        if not good:
            self.last_report = AggregationReport(**base, seconds=time.perf_counter() - t0)
            return None, None

        pids = [g[0] for g in good]
        float_keys = [k for k, v in self._sent.items() if v.is_floating_point()]
        g_flat = _flatten(self._sent, float_keys, self.device)
        U = torch.stack([_flatten(g[1], float_keys, self.device) for g in good]) - g_flat
        gen = generator(self.seed, "aggregate", server_round, device=self.device)
        if self.adversary is not None:
            U = self.adversary(server_round, U, pids, gen)
        finite = finite_rows(U)
        nonfinite = [p for p, ok in zip(pids, finite.tolist()) if not ok]
        if not bool(finite.any()):
            # Nothing usable arrived: the global model stays as it was (Flower keeps the
            # previous arrays when aggregate_train returns None) and the round is recorded.
            log(WARNING, "round %s: every update is non-finite; global model unchanged", server_round)
            self.last_report = AggregationReport(**base, nonfinite=tuple(nonfinite),
                                                 seconds=time.perf_counter() - t0)
            return None, None
        weights = torch.tensor([g[2] for g in good], dtype=torch.float32, device=self.device)
        extra: dict[str, Any] = {}
        if self.reference is not None and getattr(self.aggregator, "needs_reference", False):
            extra["reference"] = self.reference(server_round, self._sent).to(self.device, torch.float32)
        try:
            out = self.aggregator(U, weights=weights, generator=gen, **extra)
            new_flat = g_flat + self.server_lr * out.vector.to(torch.float32)
            if not bool(torch.isfinite(new_flat).all()):
                raise FloatingPointError(f"rule {type(self.aggregator).__name__} produced a non-finite "
                                         "global model")
        except (ValueError, ArithmeticError) as e:
            # The rule could not decide on these replies (too few finite updates for its f,
            # an overflow on finite-but-huge ones): the round is recorded with the reason and
            # the global model stays as it was. Programming errors (TypeError, ...) propagate.
            log(WARNING, "round %s: aggregation failed, global model unchanged: %s", server_round, e)
            self.last_report = AggregationReport(**base, nonfinite=tuple(nonfinite),
                                                 seconds=time.perf_counter() - t0,
                                                 error=f"{type(e).__name__}: {e}")
            return None, None
        accepted_mask = out.accepted.cpu().tolist()
        accepted = [p for p, a in zip(pids, accepted_mask) if a]
        new_state = _unflatten(new_flat, self._sent, float_keys)
        for k, v in self._sent.items():
            if not v.is_floating_point():
                vals = torch.stack([g[1][k] for g, a in zip(good, accepted_mask) if a] or [v])
                new_state[k] = vals.median(dim=0).values.to(v.dtype)
        if self.post_aggregate is not None:
            new_state = self.post_aggregate(server_round, new_state)
        scores = out.scores.cpu().tolist() if out.scores is not None else None
        self.last_report = AggregationReport(
            **base,
            accepted=tuple(accepted),
            nonfinite=tuple(nonfinite),
            scores=dict(zip(pids, scores)) if scores is not None else None,
            seconds=time.perf_counter() - t0,
            aggregated=True,
        )
        n_ex = sum(g[2] for g in good)
        loss = sum(g[3].get("train_loss", 0.0) * g[2] for g in good) / max(n_ex, 1.0)
        return ArrayRecord(new_state), MetricRecord({"train_loss": loss, "num-examples": n_ex})

    def _collect(self, server_round: int, replies: Iterable[Message]):
        """Well-formed replies ``[(partition, state, num_examples, metrics)]`` and failed ones
        ``[(partition, reason)]``, both in partition order, and the bytes received."""
        failed: list[tuple[int, str]] = []
        good: list[tuple[int, dict[str, torch.Tensor], float, dict[str, float]]] = []
        nbytes = 0
        for msg in replies:
            pid = self._pid_of(msg)
            if msg.has_error():
                failed.append((pid, f"client error: {msg.error.reason}"))
                continue
            reason, parsed = self._parse(msg)
            if reason:
                log(WARNING, "round %s: rejected reply of partition %s: %s", server_round, pid, reason)
                failed.append((pid, reason))
                continue
            nbytes += sum(v.numel() * v.element_size() for v in parsed[0].values())
            good.append((pid, *parsed))
        return sorted(good, key=lambda t: t[0]), sorted(failed, key=lambda t: t[0]), nbytes

    def _pid_of(self, msg: Message) -> int:
        src = msg.metadata.src_node_id
        if self.partition_of and src in self.partition_of:
            return self.partition_of[src]
        try:
            return int(next(iter(msg.content.metric_records.values()))["partition-id"])
        except Exception:
            return -1

    def _parse(self, msg: Message):
        content = msg.content
        arrays = list(content.array_records.values())
        metrics = list(content.metric_records.values())
        if len(arrays) != 1 or len(metrics) != 1:
            return "expected one ArrayRecord and one MetricRecord", None
        if self.weighted_by_key not in metrics[0]:
            return f"metrics lack {self.weighted_by_key!r}", None
        try:
            state = arrays[0].to_torch_state_dict()
        except Exception as e:  # malformed bytes from a faulty client
            return f"unreadable arrays ({e})", None
        assert self._sent is not None
        if list(state) != list(self._sent):
            return "array names differ from the global model's", None
        for k, v in state.items():
            ref = self._sent[k]
            if v.shape != ref.shape or v.dtype != ref.dtype:
                return f"array {k!r} is {v.dtype}{tuple(v.shape)}, expected {ref.dtype}{tuple(ref.shape)}", None
        w = float(metrics[0][self.weighted_by_key])
        if not (w > 0 and w == w and w != float("inf")):
            return f"{self.weighted_by_key} must be a positive finite number, got {w}", None
        return None, (state, w, dict(metrics[0]))


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _flatten(state: dict[str, torch.Tensor], keys: list[str], device: torch.device) -> torch.Tensor:
    return torch.cat([state[k].reshape(-1).to(device=device, dtype=torch.float32) for k in keys])


def _unflatten(flat: torch.Tensor, like: dict[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in like.items()}
    i = 0
    for k in keys:
        n = like[k].numel()
        out[k] = flat[i : i + n].reshape(like[k].shape).to(dtype=like[k].dtype, device="cpu")
        i += n
    return out
