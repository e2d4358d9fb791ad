"""``fedsec audit``: run one detector on a saved model (and, for data detectors, a data set).

The model file is one a fedsec run or plugin wrote (``model.safetensors``,
``fine_pruned.safetensors``, an ABD student): its metadata embeds the scenario
(TOML) that rebuilds the architecture, as ``fedsec distill`` reads it. The
data come from ``--data`` (a scenario TOML or a run directory; default: the
embedded scenario):

- the clean set a model detector sees is the server's part of the test
  split (``server_fraction``, seeded), accuracy and ASR are measured on the
  rest, with the triggers of the scenario's attacks;
- a data detector audits the scenario's training data: the whole train split,
  or with ``partition=K`` the data client K trains on in round 1, *including*
  what its behaviour does to it (a BadNets client's stamped, relabelled
  samples: ``prepare`` and one pass of ``poison_batch`` over the partition),
  so the figures report recall and clean-sample removal against the rows the
  behaviour changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fedsec.audit.base import AuditResult, AuditTarget, get_detector
from fedsec.data import TensorData, in_memory


@dataclass(frozen=True)
class ClientView:
    """A client's round-1 training data and which rows its behaviour changed."""

    data: TensorData
    poisoned: torch.Tensor
    behaviour: str


def scenario_of(path: Path):
    """A scenario from a TOML file or a run directory (its ``scenario.toml``)."""
    from fedsec.scenario import ScenarioError, load_scenario

    path = Path(path)
    if path.is_dir():
        if not (path / "scenario.toml").is_file():
            raise ScenarioError(f"--data {str(path)!r}: a directory without scenario.toml is not a run directory")
        return load_scenario(path / "scenario.toml")
    return load_scenario(path)


def embedded_scenario(model_path: Path):
    """The scenario embedded in a model file's metadata, or None."""
    from fedsec.checkpoint import read_metadata
    from fedsec.federation.env import scenario_from_toml

    meta = read_metadata(model_path, what="MODEL")
    return scenario_from_toml(meta["scenario"]) if "scenario" in meta else None


def load_model(model_path: Path, scenario) -> torch.nn.Module:
    from fedsec.checkpoint import load_state
    from fedsec.federation.env import new_model

    net = new_model(scenario)
    net.load_state_dict(load_state(model_path, expected=net.state_dict(), what="MODEL"))
    return net


def client_view(scenario, partition: int, round: int = 1) -> ClientView:
    """Partition ``partition``'s data as its behaviour trains on it in ``round``."""
    from fedsec.clients import BEHAVIOURS, ClientTask, Honest, TrainConfig
    from fedsec.federation.env import dataset_of, new_model, partitions_of
    from fedsec.seeding import generator

    n = scenario.data.num_clients
    if not (isinstance(partition, int) and 0 <= partition < n):
        raise ValueError(f"partition: got {partition!r}, expected a partition id in [0, {n})")
    ds = dataset_of(scenario)
    local = ds.train.subset(partitions_of(scenario)[partition])
    role = scenario.role(partition, round)
    behaviour = Honest() if role is None else BEHAVIOURS.get(role.behaviour).from_params(role.params)
    model = new_model(scenario)
    c = scenario.client
    task = ClientTask(
        partition_id=partition, server_round=round, num_clients=n, num_sampled=n,
        num_classes=ds.num_classes, in_shape=ds.in_shape,
        coalition=(partition,) if role is None else tuple(sorted(role.partitions)),
        generator=generator(scenario.run.seed, "client", round, partition), device=torch.device("cpu"),
        global_state={k: v.detach().clone() for k, v in model.state_dict().items()}, model=model, data=local,
        config=TrainConfig(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, momentum=c.momentum,
                           weight_decay=c.weight_decay),
    )
    behaviour.prepare(task)
    x, y = behaviour.poison_batch(task.data.x, task.data.y, task)
    if len(x) != len(local):  # a behaviour that adds or drops samples: no row-wise ground truth
        return ClientView(TensorData(x, y), torch.zeros(len(x), dtype=torch.bool), behaviour.name)
    changed = (x != local.x).flatten(1).any(1) | (y != local.y)
    return ClientView(TensorData(x, y), changed, behaviour.name)


def run_audit(model_path: Path, detector: str, params: dict[str, Any] | None = None, *,
              data: Path | None = None, partition: int | None = None, server_fraction: float = 0.5,
              seed: int = 0, out_dir: Path | None = None, prefix: str = "") -> AuditResult:
    """Build the detector and its :class:`AuditTarget` from files, run it, return the verdict.

    A repair (fine-pruning, Neural Cleanse with ``mitigate``) also writes its repaired model to
    ``out_dir / f"{prefix}repaired.safetensors"`` (scenario embedded, so it loads like any model
    file) and names it in ``figures["repaired_model"]``.
    """
    from fedsec.audit.plugins import server_split
    from fedsec.federation.env import dataset_of, device_of
    from fedsec.federation.federation import eval_triggers_of
    from fedsec.seeding import generator

    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"model file {str(model_path)!r} does not exist")
    if not 0 < server_fraction < 1:
        raise ValueError(f"server_fraction: got {server_fraction!r}, expected a number in (0, 1)")
    det = get_detector(detector, **(params or {}))
    s_model = embedded_scenario(model_path)
    s_data = scenario_of(data) if data is not None else s_model
    if s_model is None and s_data is None:
        raise ValueError(f"{model_path}: no embedded scenario; give --data SCENARIO_OR_RUN")
    net = load_model(model_path, s_model if s_model is not None else s_data)
    ds = dataset_of(s_data)
    device = device_of(s_data)
    clean, evaluation = server_split(in_memory(ds.test), server_fraction, seed)
    audited, poisoned, info = None, None, {}
    if det.kind == "data":
        if partition is None:
            audited, info = in_memory(ds.train), {"audited": "train split", "n": len(ds.train)}
        else:
            view = client_view(s_data, partition)
            audited, poisoned = view.data, view.poisoned
            info = {"audited": f"partition {partition}", "behaviour": view.behaviour, "n": len(view.data),
                    "n_changed_by_behaviour": int(view.poisoned.sum())}
    target = AuditTarget(model=net.to(device), clean=clean, evaluation=evaluation, num_classes=ds.num_classes,
                         in_shape=ds.in_shape, generator=generator(seed, "audit", detector), device=device,
                         data=audited, poisoned=poisoned, eval_triggers=eval_triggers_of(s_data),
                         out_dir=out_dir, prefix=prefix)
    repair = getattr(det, "repair", None)
    if repair is None:
        res = det.audit(target)
    else:  # a repair (fine-pruning, Neural Cleanse's mitigations): keep the repaired model, not only its figures
        repaired, res = repair(target)
        if repaired is not None and out_dir is not None:
            from fedsec.results import write_safetensors

            name = f"{prefix}repaired.safetensors"
            scenario = s_model if s_model is not None else s_data
            write_safetensors(Path(out_dir) / name, repaired.state_dict(), {"scenario": scenario.to_toml()})
            res = AuditResult(flagged=res.flagged, score=res.score, target=res.target,
                              figures={**res.figures, "repaired_model": name}, detector=res.detector)
    figures = {**res.figures, "source": {"model": str(model_path), "data": str(data) if data else "embedded",
                                         "server_fraction": server_fraction, "seed": seed, **info}}
    return AuditResult(flagged=res.flagged, score=res.score, target=res.target, figures=figures,
                       detector=res.detector)


__all__ = ["run_audit", "client_view", "ClientView", "scenario_of", "embedded_scenario", "load_model"]
