"""The ServerApp main: discovery, RobustStrategy rounds, evaluation, plugins, results."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from torch import nn

from fedsec.clients import BEHAVIOURS
from fedsec.federation.env import dataset_of, device_of, initial_state, new_model
from fedsec.metrics import EvalTrigger, accuracy, attack_success_rate, detection
from fedsec.plugins import PLUGINS, PluginContext
from fedsec.results import RunWriter
from fedsec.scenario import Scenario
from fedsec.seeding import generator


@dataclass
class FederationResult:
    scenario: Scenario
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    model: nn.Module
    run_dir: Path | None


@dataclass
class Progress:
    """Callbacks the CLI uses to draw progress; all optional."""

    on_round_end: Any = None  # (row) after each round's evaluation
    on_reply: Any = None  # (reply Message) as each client finishes (inline and ray engines)
    extra: dict[str, Any] = field(default_factory=dict)


def eval_triggers_of(s: Scenario) -> dict[str, EvalTrigger]:
    triggers: dict[str, EvalTrigger] = {}
    for i, a in enumerate(s.attack):
        b = BEHAVIOURS.get(a.behaviour).from_params(a.params)
        for name, trig in b.eval_triggers(tuple(sorted(a.partitions))).items():
            key = name if name not in triggers else f"{name}.{i}"
            triggers[key] = trig
    return triggers


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


def run_server(
    grid: Grid,
    scenario: Scenario,
    *,
    output: str | Path | None = None,
    progress: Progress | None = None,
) -> FederationResult:
    from fedsec.strategies import AGGREGATORS, RobustStrategy

    s = scenario
    toml_text = s.to_toml()
    progress = progress or Progress()
    data = dataset_of(s)
    device = device_of(s)
    writer = RunWriter(output if output is not None else s.run.output, s.name)
    writer.write_scenario(toml_text)
    triggers = eval_triggers_of(s)
    plugins = [(p.name, PLUGINS.get(p.name)(**p.params)) for p in s.plugins]
    pctx = PluginContext(
        scenario=s, test=data.test, num_classes=data.num_classes, in_shape=data.in_shape,
        run_dir=writer.path, device=device, make_model=lambda: new_model(s, "plugin").to(device),
        eval_triggers=triggers,
    )
    model = new_model(s).to(device)

    def load(state: dict[str, torch.Tensor]) -> nn.Module:
        model.load_state_dict(state)
        return model

    omniscient = [
        (a, BEHAVIOURS.get(a.behaviour).from_params(a.params))
        for a in s.attack
        if BEHAVIOURS.get(a.behaviour).omniscient
    ]

    def adversary(rnd: int, U: torch.Tensor, pids: list[int], gen: torch.Generator) -> torch.Tensor:
        for a, b in omniscient:
            if not a.active(rnd):
                continue
            mask = torch.tensor([p in a.partitions for p in pids], device=U.device)
            if bool(mask.any()):
                U = b.server_stage(U, mask, generator(s.run.seed, "adversary", rnd, a.behaviour,
                                                       device=U.device))
        return U

    def post_aggregate(rnd: int, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pctx.round_metrics = {}
        for _, plugin in plugins:
            new = plugin.on_round_end(rnd, load(state), pctx)
            if new is not None:
                state = {k: v.detach().cpu().clone() for k, v in new.state_dict().items()}
        return state

    strategy = RobustStrategy(
        aggregator=AGGREGATORS.get(s.server.aggregator)(**s.server.aggregator_params),
        fraction_train=s.server.fraction_train,
        server_lr=s.server.server_lr,
        seed=s.run.seed,
        partition_of=discover(grid, toml_text, s.data.num_clients),
        adversary=adversary if omniscient else None,
        post_aggregate=post_aggregate if plugins else None,
        device=device,
        min_train_nodes=1,
        min_available_nodes=s.data.num_clients,
    )

    t_round = [time.perf_counter()]

    def evaluate(rnd: int, arrays: ArrayRecord) -> MetricRecord:
        m = load(arrays.to_torch_state_dict())
        acc = accuracy(m, data.test)
        asr = {name: attack_success_rate(m, data.test, t) for name, t in triggers.items()}
        if rnd == 0:
            progress.extra["initial"] = {"clean_acc": acc, "asr": asr}
        else:
            lr = strategy.last_round
            sampled = lr.get("sampled", [])
            malicious = [p for p in s.malicious(rnd) if p in sampled]
            # Detection judges the rule's decisions, so only clients whose reply arrived count.
            failed = {f["partition"] for f in lr.get("failed", [])}
            received = [p for p in sampled if p not in failed]
            row = {
                "round": rnd,
                "clean_acc": acc,
                "asr": asr,
                "sampled": sampled,
                "accepted": lr.get("accepted", []),
                "malicious": malicious,
                "detection": detection(lr.get("accepted", []), received, malicious),
                "failed": lr.get("failed", []),
                "nonfinite": lr.get("nonfinite", []),
                "seconds": time.perf_counter() - t_round[0],
            }
            if lr.get("scores") is not None:
                row["scores"] = {str(k): v for k, v in lr["scores"].items()}
            if pctx.round_metrics:
                row["plugins"] = dict(pctx.round_metrics)
            writer.append_round(row)
            if progress.on_round_end:
                progress.on_round_end(row)
        t_round[0] = time.perf_counter()
        return MetricRecord({"clean_acc": acc})

    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial_state(s)),
        num_rounds=s.server.rounds,
        train_config=ConfigRecord({"scenario": toml_text}),
        evaluate_fn=evaluate,
    )
    final = load(result.arrays.to_torch_state_dict())
    summary: dict[str, Any] = {
        "name": s.name,
        "rounds": s.server.rounds,
        "initial": progress.extra.get("initial"),
        "final_clean_acc": writer.rows[-1]["clean_acc"] if writer.rows else None,
        "final_asr": writer.rows[-1]["asr"] if writer.rows else {},
        "max_asr": {k: max(r["asr"][k] for r in writer.rows) for k in triggers} if writer.rows else {},
        "seconds": sum(r["seconds"] for r in writer.rows),
        "plugins": {},
    }
    writer.write_model(final.state_dict(), {"scenario": toml_text})
    for name, plugin in plugins:
        figures = plugin.on_run_end(final, pctx)
        summary["plugins"][name] = figures or {}
    writer.write_summary(summary)
    writer.write_plots()
    return FederationResult(s, list(writer.rows), summary, final, writer.path)
