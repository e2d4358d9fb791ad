"""The ClientApp: every simulated client, honest or not, runs this.

The scenario travels in each message's ConfigRecord (``scenario``, TOML
text), so the same ClientApp works under every engine and under ``flwr run``;
the partition id comes from the node's config (``partition-id``), as in
Flower's simulation runtime. A deployed SuperNode trains on its rows of the
named dataset, or, with ``data-path`` in its node config, on its own file only
(fedsec.federation.deployment).
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsec.clients import BEHAVIOURS, Behaviour, ClientTask, Honest, TrainConfig, local_train
from fedsec.federation.arrays import tensor_record
from fedsec.data.augment import AUGMENTATIONS, augmentation_name, augmenting
from fedsec.federation.deployment import DATA_PATH, NUM_PARTITIONS, node_data
from fedsec.federation.env import dataset_info, device_of, local_data, reusable_model, scenario_from_toml
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
    """Discovery: tell the server which partition this node holds (and how many it thinks
    there are). A node with its own data file reads it now, so a bad file fails discovery."""
    pid = _partition_id(context)
    info: dict = {"partition-id": pid}
    if NUM_PARTITIONS in context.node_config:
        info[NUM_PARTITIONS] = int(context.node_config[NUM_PARTITIONS])
    if DATA_PATH in context.node_config:
        scenario = scenario_from_toml(str(msg.content["config"]["scenario"]))
        info["num-examples"] = len(node_data(scenario, context.node_config))
    return Message(RecordDict({"info": ConfigRecord(info)}), reply_to=msg)


@client_app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = msg.content["config"]
    scenario = scenario_from_toml(str(cfg["scenario"]))
    rnd = int(cfg["server-round"])
    pid = _partition_id(context)
    metrics = train_partition(
        scenario, pid, rnd, int(cfg.get("num-sampled", scenario.data.num_clients)),
        msg.content["arrays"], data=node_data(scenario, context.node_config),
    )
    arrays, stats = metrics
    return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord(stats)}), reply_to=msg)


def train_partition(scenario, pid: int, rnd: int, num_sampled: int, arrays: ArrayRecord, *,
                    data=None):
    """One client's round: rebuild the model, run its behaviour, return (arrays, metrics).

    ``data``: the node's own training set (a deployed node's file); default: partition
    ``pid`` of the scenario's dataset.
    """
    global_state = arrays.to_torch_state_dict()
    # The process's one model object, loaded in place: bitwise a fresh new_model(scenario).
    model = reusable_model(scenario, global_state, device_of(scenario))
    behaviour, task = client_task(scenario, pid, rnd, num_sampled, global_state, model, data=data)
    # Thread count and the global RNG are pinned per call so the result is the same
    # whichever engine or process runs it (dropout in user models draws from the global RNG).
    with torch_threads(scenario.run.threads), scoped_seed(scenario.run.seed, "client-rng", rnd, pid), \
            augmenting(model, *_augmentation(scenario, rnd, pid, task.device)):
        stats = local_train(behaviour, task)
    return tensor_record(model.state_dict()), reply_metrics(stats, pid)


def _augmentation(scenario, rnd: int, pid: int, device: torch.device):
    """(augmentation or None, its generator): draws from (seed, 'augment', round, pid) on the
    training device, never from the client's generator, so batch order and attack draws are
    the same with augmentation on or off (fedsec.data.augment)."""
    name = augmentation_name(scenario.data.dataset, scenario.data.augment)
    if name == "none":
        return None, None
    return AUGMENTATIONS.get(name), generator(scenario.run.seed, "augment", rnd, pid, device=device)


def client_task(scenario, pid: int, rnd: int, num_sampled: int, global_state: dict[str, torch.Tensor],
                model: torch.nn.Module, *, data=None) -> tuple[Behaviour, ClientTask]:
    """Partition ``pid``'s behaviour in round ``rnd`` and its :class:`ClientTask` (``model``
    holds the global state; ``data`` the node's own training set, default partition
    ``pid`` of the scenario's dataset). The one definition of a client call, shared by the
    per-client and the vectorized path (fedsec.federation.vectorized)."""
    local = local_data(scenario, pid) if data is None else data
    in_shape, num_classes = dataset_info(scenario)
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
        num_classes=num_classes,
        in_shape=in_shape,
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
