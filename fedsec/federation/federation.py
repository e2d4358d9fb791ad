"""The Federation: builds a run once, owns the global model, runs the rounds.

One :class:`Federation` per run. It builds the data, the rule (with its
pre-aggregators), the omniscient adversaries, the plugins and Flower's
:class:`~fedsec.strategies.robust_strategy.RobustStrategy` once, and then each
round:

1. samples partition ids and sends the global model (the strategy's
   ``configure_train``, over Flower's ``Grid``);
2. collects the replies and lets the strategy form the update matrix U, run
   the omniscient adversaries (``Colluding.craft``, given the server's rule),
   the pre-aggregators and the rule (``aggregate_train``);
3. takes the new global model, runs the plugins' ``on_round_end``, evaluates
   clean accuracy and the ASR of every trigger,
4. emits one frozen :class:`RoundOutcome` to the :class:`Recorder`, which
   appends the round's line to ``metrics.jsonl``.

The global model lives here (``Federation.state``), never in Flower's result
object, so a run whose every round failed still ends with a well-defined
model, and a round in which every client fails stops the run with
``all N clients failed in round r: <first reason>`` (:class:`FederationError`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from torch import nn

from fedsec.data import in_memory
from fedsec.federation import checkpointing
from fedsec.federation.env import dataset_of, device_of, initial_state, new_model
from fedsec.metrics import EvalTrigger, attack_success_rate, detection, evaluate
from fedsec.scenario import Scenario
from fedsec.seeding import generator


class FederationError(RuntimeError):
    """The run cannot go on (e.g. every client of a round failed)."""


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


@dataclass(frozen=True)
class RoundOutcome:
    """Everything one round decided and measured (partition ids throughout).

    ``replied``: sampled clients whose reply was well-formed; ``failed``:
    (partition, reason); ``nonfinite``: replies holding NaN/inf (never
    aggregated); ``accepted``: clients the rule used; ``scores``: the rule's
    per-client suspicion or None; ``malicious``: sampled clients that attacked
    this round; ``train_loss``: each replied client's last-epoch loss;
    ``evaluation``: clean accuracy, test loss, per-class accuracy, ASR per
    trigger; ``timings``: seconds spent training (send to last reply),
    aggregating, in plugins, evaluating, in total.
    """

    round: int
    sampled: tuple[int, ...]
    replied: tuple[int, ...]
    failed: tuple[tuple[int, str], ...]
    nonfinite: tuple[int, ...]
    accepted: tuple[int, ...]
    scores: dict[int, float] | None
    malicious: tuple[int, ...]
    train_loss: dict[int, float]
    num_examples: dict[int, float]
    bytes_received: int
    evaluation: dict[str, Any]
    plugins: dict[str, Any]
    timings: dict[str, float]
    aggregation_error: str | None = None

    def row(self) -> dict[str, Any]:
        """The round's line of ``metrics.jsonl``."""
        n_ex = sum(self.num_examples.values())
        loss = (sum(self.train_loss[p] * self.num_examples[p] for p in self.train_loss) / n_ex
                if n_ex else float("nan"))
        ev = self.evaluation
        row: dict[str, Any] = {
            "round": self.round,
            "clean_acc": ev["clean_acc"],
            "asr": ev["asr"],
            "sampled": list(self.sampled),
            "accepted": list(self.accepted),
            "malicious": list(self.malicious),
            # Detection judges the rule's decisions, so only clients whose reply arrived count.
            "detection": detection(self.accepted, self.replied, self.malicious),
            "failed": [{"partition": p, "reason": r} for p, r in self.failed],
            "nonfinite": list(self.nonfinite),
            "seconds": self.timings["total"],
            "train_loss": loss,
            "test_loss": ev["test_loss"],
            "per_class_acc": ev["per_class_acc"],
            "train_seconds": self.timings["train"],
            "agg_seconds": self.timings["aggregate"],
            "eval_seconds": self.timings["evaluate"],
            "bytes_received": self.bytes_received,
        }
        if self.aggregation_error is not None:
            row["aggregation_error"] = self.aggregation_error
        if self.scores is not None:
            row["scores"] = {str(k): v for k, v in self.scores.items()}
        if self.plugins:
            row["plugins"] = dict(self.plugins)
        return row


def eval_triggers_of(s: Scenario) -> dict[str, EvalTrigger]:
    """Every trigger of the scenario's attacks, by name (``name.i`` on a clash)."""
    from fedsec.clients import BEHAVIOURS

    triggers: dict[str, EvalTrigger] = {}
    for i, a in enumerate(s.attack):
        b = BEHAVIOURS.get(a.behaviour).from_params(a.params)
        for name, trig in b.eval_triggers(tuple(sorted(a.partitions))).items():
            key = name if name not in triggers else f"{name}.{i}"
            triggers[key] = trig
    return triggers


def build_rule(s: Scenario):
    """The server's rule, behind its pre-aggregators when the scenario names some."""
    import fedsec.strategies as strategies

    rule = strategies.AGGREGATORS.get(s.server.aggregator)(**s.server.aggregator_params)
    if s.server.pre_aggregators:
        pre = [strategies.PRE_AGGREGATORS.get(p.name)(**p.params) for p in s.server.pre_aggregators]
        rule = strategies.compose(pre, rule)
    return rule


def split_test(s: Scenario, test, size: int):
    """(evaluation set, server root set): ``size`` test examples drawn by (seed, 'root')
    become the server's own clean set and leave the evaluation set."""
    if size <= 0:
        return test, None
    if size >= len(test):
        from fedsec.scenario import ScenarioError

        raise ScenarioError(f"server.root_size: got {size}, expected fewer than the "
                            f"{len(test)} test examples")
    perm = torch.randperm(len(test), generator=generator(s.run.seed, "root-set"))
    return test.subset(perm[size:].sort().values), test.subset(perm[:size].sort().values)


class Federation:
    """One run of a scenario on a Flower ``Grid`` (see the module docstring)."""

    def __init__(self, scenario: Scenario, *, output: str | Path | None = None,
                 progress: Progress | None = None, resume: str | Path | None = None) -> None:
        from fedsec.clients import BEHAVIOURS
        from fedsec.federation.recorder import Recorder
        from fedsec.plugins import PLUGINS, PluginContext

        s = self.scenario = scenario
        self.progress = progress or Progress()
        self.toml = s.to_toml()
        data = self.data = dataset_of(s)
        self.device = device_of(s)
        self.eval_set, self.root_set = split_test(s, in_memory(data.test), s.server.root_examples())
        self.triggers = eval_triggers_of(s)
        self.rule = build_rule(s)
        # Behaviours are stateless, so one object per attack entry serves every round.
        self.adversaries = [(a, b) for a in s.attack
                            if (b := BEHAVIOURS.get(a.behaviour).from_params(a.params)).omniscient]
        self.recorder = (Recorder.resume(s, resume, self.toml) if resume is not None
                         else Recorder(s, output if output is not None else s.run.output, self.toml))
        self.plugins = [(p.name, PLUGINS.get(p.name)(**p.params)) for p in s.plugins]
        self.plugin_ctx = PluginContext(
            scenario=s, test=self.eval_set, num_classes=data.num_classes, in_shape=data.in_shape,
            run_dir=self.recorder.path, device=self.device,
            make_model=lambda: new_model(s, "plugin").to(self.device), eval_triggers=self.triggers,
        )
        # One model object for evaluation and plugins, loaded in place each round.
        self.model = new_model(s).to(self.device)
        self.state: dict[str, torch.Tensor] = initial_state(s)
        self.strategy = None
        self.start_round = 1
        self.initial: dict[str, Any] | None = None
        self._parts = checkpointing.stateful_parts(self.rule, self.plugins)
        self._last_ckpt = (0.0, 0.0)  # (time written, seconds it took)
        if resume is not None:
            self._restore(Path(resume))

    @classmethod
    def resume(cls, run_dir: str | Path, *, progress: Progress | None = None) -> Federation:
        """Continue the run in ``run_dir`` from its last checkpoint (same scenario, same results)."""
        from fedsec.scenario import load_scenario

        return cls(load_scenario(Path(run_dir) / "scenario.toml"), progress=progress, resume=run_dir)

    def _restore(self, run_dir: Path) -> None:
        if (run_dir / checkpointing.CHECKPOINT).is_file():
            done, self.state, self.initial = checkpointing.load(run_dir, model_state=self.state,
                                                                parts=self._parts)
        else:  # stopped before its first checkpoint: start over in the same directory
            done = 0
        self.recorder.writer.truncate_to_round(done)
        self.start_round = done + 1

    def checkpoint(self, rnd: int) -> None:
        checkpointing.save(self.recorder.path, round=rnd, state=self.state, initial=self.initial or {},
                           parts=self._parts)

    def _maybe_checkpoint(self, rnd: int) -> None:
        every = self.scenario.run.checkpoint_every
        now = time.perf_counter()
        written, cost = self._last_ckpt
        due = rnd % every == 0 if every else (written == 0.0 or now - written >= 20 * cost)
        if due or rnd == self.scenario.server.rounds:
            self.checkpoint(rnd)
            self._last_ckpt = (time.perf_counter(), time.perf_counter() - now)

    # -- the loop --------------------------------------------------------------------------
    def run(self, grid: Grid) -> FederationResult:
        from fedsec.federation.discovery import Roster
        from fedsec.strategies import RobustStrategy

        s = self.scenario
        min_nodes = s.server.min_nodes or s.data.num_clients
        self.roster = Roster(self.toml, s.data.num_clients, min_nodes=min_nodes, timeout=s.server.wait_timeout)
        self.strategy = RobustStrategy(
            aggregator=self.rule,
            fraction_train=s.server.fraction_train,
            server_lr=s.server.server_lr,
            seed=s.run.seed,
            partition_of=self.roster.wait(grid),
            adversary=self._adversary if self.adversaries else None,
            reference=self._reference if self.root_set is not None else None,
            device=self.device,
            min_train_nodes=1,
            min_available_nodes=min_nodes,
        )
        if self.initial is None:
            self.initial = self._evaluate()
        self.progress.extra["initial"] = self.initial
        self.recorder.start(self.initial)
        if self.start_round == 1:
            self._recorded({"round": 0, **self.initial})
        try:
            for rnd in range(self.start_round, s.server.rounds + 1):
                outcome = self.step(grid, rnd)
                row = self.recorder.record(outcome)
                self._recorded(row)
                if self.progress.on_round_end:
                    self.progress.on_round_end(row)
                if not outcome.replied:
                    first = outcome.failed[0][1] if outcome.failed else "no reply"
                    raise FederationError(f"all {len(outcome.sampled)} clients failed in round {rnd}: {first}")
                self._maybe_checkpoint(rnd)
        except BaseException as e:
            self.recorder.fail(e)
            raise
        final = self._load(self.state)
        figures = {name: plugin.on_run_end(final, self.plugin_ctx) or {} for name, plugin in self.plugins}
        summary = self.recorder.finish(final.state_dict(), figures, self.triggers)
        return FederationResult(s, list(self.recorder.rows), summary, final, self.recorder.path)

    def step(self, grid: Grid, rnd: int) -> RoundOutcome:
        """One round: send, collect, aggregate, plugins, evaluate."""
        from fedsec.federation.discovery import collect

        assert self.strategy is not None
        t0 = time.perf_counter()
        # Sample among the nodes connected now (deployment: nodes come and go).
        self.strategy.partition_of = self.roster.refresh(grid, rnd)
        messages = list(self.strategy.configure_train(
            rnd, ArrayRecord(self.state), ConfigRecord({"scenario": self.toml}), grid))
        replies = collect(grid, messages, self.scenario.server.round_timeout)
        t_train = time.perf_counter() - t0
        arrays, _ = self.strategy.aggregate_train(rnd, replies)
        report = self.strategy.last_report
        t_agg = report.seconds if report is not None else 0.0
        t1 = time.perf_counter()
        self.plugin_ctx.round_metrics = {}
        if arrays is not None:
            state = arrays.to_torch_state_dict()
            for _, plugin in self.plugins:
                new = plugin.on_round_end(rnd, self._load(state), self.plugin_ctx)
                if new is not None:
                    state = {k: v.detach().cpu().clone() for k, v in new.state_dict().items()}
            self.state = state
        t_plugins = time.perf_counter() - t1
        t2 = time.perf_counter()
        evaluation = self._evaluate()
        t_eval = time.perf_counter() - t2
        sampled = report.sampled if report is not None else ()
        return RoundOutcome(
            round=rnd,
            sampled=sampled,
            replied=report.received if report is not None else (),
            failed=report.failed if report is not None else (),
            nonfinite=report.nonfinite if report is not None else (),
            accepted=report.accepted if report is not None else (),
            scores=report.scores if report is not None else None,
            malicious=tuple(p for p in self.scenario.malicious(rnd) if p in sampled),
            train_loss=dict(report.train_loss) if report is not None else {},
            num_examples=dict(report.num_examples) if report is not None else {},
            bytes_received=report.bytes_received if report is not None else 0,
            evaluation=evaluation,
            plugins=dict(self.plugin_ctx.round_metrics),
            timings={"train": t_train, "aggregate": t_agg, "plugins": t_plugins, "evaluate": t_eval,
                     "total": time.perf_counter() - t0},
            aggregation_error=report.error if report is not None else None,
        )

    # -- pieces ----------------------------------------------------------------------------
    def _recorded(self, row: dict[str, Any]) -> None:
        """Plugins' optional ``on_round_recorded(row, ctx)``: the round's line as written
        (trackers), after evaluation, where ``on_round_end`` runs before it."""
        for _, plugin in self.plugins:
            hook = getattr(plugin, "on_round_recorded", None)
            if hook is not None:
                hook(row, self.plugin_ctx)

    def _load(self, state: dict[str, torch.Tensor]) -> nn.Module:
        self.model.load_state_dict(state)
        return self.model

    def _evaluate(self) -> dict[str, Any]:
        m = self._load(self.state)
        ev = evaluate(m, self.eval_set, self.data.num_classes)
        return {
            "clean_acc": ev["accuracy"],
            "test_loss": ev["loss"],
            "per_class_acc": ev["per_class_accuracy"],
            "asr": {name: attack_success_rate(m, self.eval_set, t) for name, t in self.triggers.items()},
        }

    def _adversary(self, rnd: int, U: torch.Tensor, pids: list[int], gen: torch.Generator) -> torch.Tensor:
        for a, b in self.adversaries:
            if not a.active(rnd):
                continue
            mask = torch.tensor([p in a.partitions for p in pids], device=U.device)
            if bool(mask.any()):
                U = b.craft(U, mask, generator(self.scenario.run.seed, "adversary", rnd, a.behaviour,
                                               device=U.device), self.rule)
        return U

    def _reference(self, rnd: int, sent: dict[str, torch.Tensor]) -> torch.Tensor:
        """The server's own update on its root set (FLTrust's g_0): the honest loop from G^t."""
        from fedsec.training import sgd_train

        s = self.scenario
        model = new_model(s, "root").to(self.device)
        model.load_state_dict(sent)
        c = s.client
        # FLTrust's server runs as many local iterations as a client (Cao et al., Alg. 1: R_l
        # for both); on a root set smaller than a partition that takes more passes over it.
        from fedsec.federation.env import partitions_of

        mean_size = sum(len(p) for p in partitions_of(s)) / s.data.num_clients
        epochs = max(1, round(c.epochs * mean_size / len(self.root_set)))
        sgd_train(model, self.root_set, epochs=epochs, batch_size=c.batch_size, lr=c.lr,
                  momentum=c.momentum, weight_decay=c.weight_decay,
                  generator=generator(s.run.seed, "root", rnd), device=self.device)
        keys = [k for k, v in sent.items() if v.is_floating_point()]
        trained = model.state_dict()
        return torch.cat([(trained[k].detach().to(self.device, torch.float32)
                           - sent[k].to(self.device, torch.float32)).reshape(-1) for k in keys])


def run_server(grid: Grid, scenario: Scenario, *, output: str | Path | None = None,
               progress: Progress | None = None, resume: str | Path | None = None) -> FederationResult:
    """The ServerApp main of every engine: build a :class:`Federation` and run it
    (``resume``: continue the run in that directory from its last checkpoint)."""
    return Federation(scenario, output=output, progress=progress, resume=resume).run(grid)
