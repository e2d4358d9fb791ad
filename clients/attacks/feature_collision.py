"""Feature-collision clean-label poisoning ("Poison Frogs").

Shafahi, Huang, Najibi, Suciu, Studer, Dumitras, Goldstein. "Poison Frogs!
Targeted Clean-Label Poisoning Attacks on Neural Networks." NeurIPS 2018,
arXiv:1804.00792.

The attacker wants one target instance ``t`` (of class ``l_t``) classified as
a base class ``l_b`` (``base_class``) without mislabelling anything: it picks
base images ``b`` of class ``l_b`` from its own data and crafts poisons

    p = argmin_x ||f(x) - f(t)||^2 + beta ||x - b||^2

with ``f`` the penultimate-layer features of the received global model, by the
paper's forward-backward splitting iteration (Algorithm 1): a gradient step
``x^ = x - lambda grad_x ||f(x) - f(t)||^2`` (forward) and the proximal step
``x = (x^ + lambda beta b) / (1 + lambda beta)`` (backward), then clipped to
[0, 1]; a step that raises a poison's objective is undone and that poison's
``lambda`` halved (a safeguard Algorithm 1 does not have). ``beta = beta_0 * dim_f^2 / dim_b^2`` as in the paper (there dim_f =
2048, the Inception feature size; here the model's feature size). For
end-to-end training the paper watermarks the target onto the bases,
``b <- (1 - opacity) b + opacity t`` (``opacity``, 0.3 in the paper; 0 = off).
The poisons replace their bases in the local dataset and keep the base-class
label (clean label).

The target instance is test image ``target_index`` of ``dataset`` (the
attacker knows the instance it attacks). The evaluation trigger
``"feature_collision"`` replaces every test input by ``t`` with target label
``l_b``: its "ASR" is 1.0 exactly when ``t`` is classified as the base class,
0.0 otherwise.

``prepare`` draws the bases (from ``task.generator``) and gives the task its
own copy of the data. The poisons are crafted at the first ``loss`` call, when
the weights still equal the received global model, and written into that
copy, so every batch after the first trains on them (the first batch was
gathered before crafting; crafting in ``prepare`` would change which batch
first sees them and so every result recorded so far). The poison indices,
the crafted poisons and the pending flag live in ``task.state``; ``finalize``
reports ``poisons`` and ``feature_distance`` (mean ||f(p) - f(t)||).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsec.clients.attacks._common import check, is_int, is_num, penultimate
from fedsec.clients.base import Behaviour, ClientTask, register_behaviour
from fedsec.data import TensorData, load_dataset
from fedsec.metrics import EvalTrigger


@register_behaviour("feature_collision")
@dataclass(frozen=True, kw_only=True)
class FeatureCollision(Behaviour):
    """Clean-label poisons colliding with a target instance in feature space (Shafahi et al. 2018)."""

    dataset: str = "digits"
    root: str = "data"
    target_index: int = 0
    """Index of the target instance t in the test split of ``dataset``."""
    base_class: int = 1
    """l_b: the class t should be predicted as."""
    num_poisons: int = 20
    beta0: float = 10.0
    """beta_0; beta = beta_0 * dim_f^2 / dim_b^2. The paper's 0.25 (Inception, 299x299 inputs
    in [0, 255]) lets 8x8 digits poisons drift into copies of t; 10 keeps each poison closer
    to its base than t is while cutting the feature distance to t about 10x."""
    lr: float = 0.05
    """lambda, the initial forward step size (halved for a poison whenever a step raises its objective)."""
    iterations: int = 200
    opacity: float = 0.3
    """Watermark opacity of t on the bases (0 = none)."""

    def __post_init__(self) -> None:
        check(isinstance(self.dataset, str) and bool(self.dataset), "dataset", self.dataset, "a dataset name")
        check(is_int(self.target_index) and self.target_index >= 0, "target_index", self.target_index,
              "an index >= 0")
        check(is_int(self.base_class) and self.base_class >= 0, "base_class", self.base_class,
              "a class index >= 0")
        check(is_int(self.num_poisons) and self.num_poisons >= 1, "num_poisons", self.num_poisons,
              "an integer >= 1")
        check(is_num(self.beta0) and self.beta0 >= 0, "beta0", self.beta0, "a number >= 0")
        check(is_num(self.lr) and self.lr > 0, "lr", self.lr, "a number > 0")
        check(is_int(self.iterations) and self.iterations >= 0, "iterations", self.iterations,
              "an integer >= 0")
        check(is_num(self.opacity) and 0 <= self.opacity < 1, "opacity", self.opacity, "a number in [0, 1)")

    def target_instance(self) -> tuple[torch.Tensor, int]:
        test = load_dataset(self.dataset, self.root).test
        if self.target_index >= len(test):
            raise ValueError(f"target_index: got {self.target_index}, expected an index < {len(test)}")
        row = test.subset(torch.tensor([self.target_index]))
        return row.x[0], int(row.y[0])

    def prepare(self, task: ClientTask) -> None:
        data = task.data
        check(self.base_class < task.num_classes, "base_class", self.base_class, f"< {task.num_classes}")
        t, t_label = self.target_instance()
        check(tuple(t.shape) == tuple(data.x.shape[1:]), "dataset", self.dataset,
              f"the dataset the client trains on (target shape {tuple(t.shape)} != "
              f"input shape {tuple(data.x.shape[1:])})")
        check(t_label != self.base_class, "base_class", self.base_class,
              f"a class other than the target instance's class {t_label}")
        bases = (data.y == self.base_class).nonzero().flatten()
        pick = torch.randperm(len(bases), generator=task.generator)[: self.num_poisons]
        index = bases[pick].sort().values
        task.state["poison_index"] = index
        task.state["target_instance"] = t
        task.state["pending"] = len(index) > 0
        task.data = TensorData(data.x.clone(), data.y.clone())  # the task's copy: poisons go in here

    def loss(self, model, x, y, task: ClientTask) -> torch.Tensor:
        if task.state.get("pending", False):
            task.state["pending"] = False
            index = task.state["poison_index"]
            poisons, distance = self.craft_poisons(model, task.data.x[index], task.state["target_instance"],
                                                   task.device)
            task.data.x[index] = poisons.to(task.data.x.device)
            task.state["poisons"] = poisons
            task.state["feature_distance"] = distance
        return super().loss(model, x, y, task)

    def craft_poisons(self, model, bases: torch.Tensor, t: torch.Tensor,
                      device: torch.device) -> tuple[torch.Tensor, float]:
        """Forward-backward splitting (Algorithm 1) from the (watermarked) bases.

        ``bases`` (P, C, H, W) and ``t`` (C, H, W) in [0, 1]; returns the poisons
        (P, C, H, W) and their mean feature distance ||f(p) - f(t)||. Each poison
        has its own step size ``lambda``: a step that raises its objective
        ``||f(x) - f(t)||^2 + beta ||x - b||^2`` is undone and its ``lambda``
        halved (Algorithm 1 uses a fixed ``lambda``; with one fixed step some
        poisons diverge while others barely move).
        """
        was_training = model.training
        model.eval()
        dev = device
        t = t.to(dev).unsqueeze(0)
        b = bases.to(dev)
        if self.opacity > 0:
            b = (1 - self.opacity) * b + self.opacity * t
        with torch.no_grad():
            ft = penultimate(model, t)
        beta = self.beta0 * (ft.shape[1] ** 2) / (b[0].numel() ** 2)
        shape = (-1,) + (1,) * (b.ndim - 1)
        lam = torch.full((len(b),), float(self.lr), device=dev, dtype=b.dtype)

        def objective(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Per-poison objective and gradient of the feature term (forward step)."""
            x = x.detach().requires_grad_(True)
            feat = ((penultimate(model, x) - ft) ** 2).sum(1)
            (g,) = torch.autograd.grad(feat.sum(), x)
            return (feat.detach() + beta * ((x.detach() - b) ** 2).flatten(1).sum(1)), g

        x = b.clone()
        obj, g = objective(x)
        for _ in range(self.iterations):
            with torch.no_grad():
                lv = lam.view(shape)
                x_new = (((x - lv * g) + lv * beta * b) / (1 + lv * beta)).clamp(0, 1)
            obj_new, g_new = objective(x_new)
            ok = obj_new <= obj
            keep = ok.view(shape)
            x = torch.where(keep, x_new, x)
            g = torch.where(keep, g_new, g)
            obj = torch.where(ok, obj_new, obj)
            lam = torch.where(ok, lam, lam / 2)
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            distance = float(((penultimate(model, x) - ft) ** 2).sum(1).sqrt().mean())
        model.train(was_training)
        return x.detach(), distance

    def finalize(self, task: ClientTask) -> None:
        poisons = task.state.get("poisons")
        n = 0 if poisons is None else len(poisons)
        task.metrics["poisons"] = float(n)
        if n:
            task.metrics["feature_distance"] = task.state["feature_distance"]

    def eval_triggers(self, coalition: tuple[int, ...]) -> dict[str, EvalTrigger]:
        t, _ = self.target_instance()

        def replace_by_target(x: torch.Tensor) -> torch.Tensor:
            return t.to(device=x.device, dtype=x.dtype).expand_as(x).clone()

        return {"feature_collision": EvalTrigger(replace_by_target, target=self.base_class)}
