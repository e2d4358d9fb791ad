"""The ClientApp: every simulated client, honest or not, runs this.

The scenario travels in each message's ConfigRecord (``scenario``, TOML
text), so the same ClientApp works under every engine and under ``flwr run``;
the partition id comes from the node's config (``partition-id``), as in
Flower's simulation runtime.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsec.clients import BEHAVIOURS, Behaviour, ClientTask, Honest, TrainConfig, local_train
from fedsec.federation.arrays import tensor_record
from fedsec.federation.env import dataset_of, device_of, partitions_of, reusable_model, scenario_from_toml
from fedsec.seeding import generator, scoped_seed, torch_threads

client_app = ClientApp()


def _partition_id(context: Context) -> int:
    try:
        return int(context.node_config["partition-id"])
    except KeyError:
        raise KeyError("node_config lacks 'partition-id': start SuperNodes with "
                       "--node-config 'partition-id=<i> num-partitions=<n>'") from None


@client_app.query()
def query(msg: Message, context: Context) -> Message:
    """Discovery: tell the server which partition this node holds."""
    pid = _partition_id(context)
    return Message(RecordDict({"info": ConfigRecord({"partition-id": pid})}), reply_to=msg)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = msg.content["config"]
    scenario = scenario_from_toml(str(cfg["scenario"]))
    rnd = int(cfg["server-round"])
    pid = _partition_id(context)
    metrics = train_partition(
        scenario, pid, rnd, int(cfg.get("num-sampled", scenario.data.num_clients)),
        msg.content["arrays"],
    )
    arrays, stats = metrics
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(stats)}), reply_to=msg)


def train_partition(scenario, pid: int, rnd: int, num_sampled: int, arrays: ArrayRecord):
    """One client's round: rebuild the model, run its behaviour, return (arrays, metrics)."""
    global_state = arrays.to_torch_state_dict()
    # The process's one model object, loaded in place: bitwise a fresh new_model(scenario).
    model = reusable_model(scenario, global_state).to(device_of(scenario))
    behaviour, task = client_task(scenario, pid, rnd, num_sampled, global_state, model)
    # Thread count and the global RNG are pinned per call so the result is the same
    # whichever engine or process runs it (dropout in user models draws from the global RNG).
    with torch_threads(scenario.run.threads), scoped_seed(scenario.run.seed, "client-rng", rnd, pid):
        stats = local_train(behaviour, task)
    return tensor_record(model.state_dict()), reply_metrics(stats, pid)


def client_task(scenario, pid: int, rnd: int, num_sampled: int, global_state: dict[str, torch.Tensor],
                model: torch.nn.Module) -> tuple[Behaviour, ClientTask]:
    """Partition ``pid``'s behaviour in round ``rnd`` and its :class:`ClientTask` (``model``
    holds the global state). The one definition of a client call, shared by the
    per-client and the vectorized path (fedsec.federation.vectorized)."""
    data = dataset_of(scenario)
    local = data.train.subset(partitions_of(scenario)[pid])
    device = device_of(scenario)
    role = scenario.role(pid, rnd)
    if role is None:
        behaviour, coalition = Honest(), (pid,)
    else:
        behaviour = BEHAVIOURS.get(role.behaviour).from_params(role.params)
        coalition = tuple(sorted(role.partitions))
    c = scenario.client
    task = ClientTask(
        partition_id=pid,
        server_round=rnd,
        num_clients=scenario.data.num_clients,
        num_sampled=num_sampled,
        num_classes=data.num_classes,
        in_shape=data.in_shape,
        coalition=coalition,
        generator=generator(scenario.run.seed, "client", rnd, pid),
        device=device,
        global_state={k: v.to(device) for k, v in global_state.items()},
        model=model,
        data=local,
        config=TrainConfig(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr,
                           momentum=c.momentum, weight_decay=c.weight_decay),
        server_lr=scenario.server.server_lr,
    )
    return behaviour, task


def reply_metrics(stats: dict[str, float], pid: int) -> dict[str, float]:
    """The reply's MetricRecord content: ``local_train``'s figures as floats, plus ``partition-id``."""
    out = {k: float(v) for k, v in stats.items()}
    out["partition-id"] = float(pid)
    return out
