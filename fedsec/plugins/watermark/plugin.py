"""The ``watermark`` server plugin: configuration, the paper's table, the hooks.

Injection: :mod:`~fedsec.plugins.watermark.inject`; the key and its control
panel: :mod:`~fedsec.plugins.watermark.keys`; the tests and the ownership
decision: :mod:`~fedsec.plugins.watermark.verify`; removal attacks:
:mod:`~fedsec.plugins.watermark.removal`; the markdown table:
:mod:`~fedsec.plugins.watermark.report`.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fedsec.data import TensorData
from fedsec.data.triggers import Trigger
from fedsec.metrics import predict
from fedsec.plugins import Plugin, PluginContext, register_plugin
from fedsec.plugins.watermark import inject as _inject
from fedsec.plugins.watermark.keys import (
    KINDS,
    Draw,
    blend_pattern,
    commitment,
    control_panel,
    draw_blend,
    draw_keyed_patch,
    trojan_trigger,
)
from fedsec.plugins.watermark.removal import ATTACKS, removal_attack, train_supervised
from fedsec.plugins.watermark.report import format_table
from fedsec.plugins.watermark.verify import Verifier, eval_logits
from fedsec.seeding import derive_seed, generator, scoped_seed
from fedsec.validation import invalid, is_int, is_real

TRIGGERS = KINDS


def _bad(name: str, value: Any, expected: str) -> ValueError:
    return invalid(f"watermark.{name}", value, expected)


@register_plugin("watermark")
@dataclass(frozen=True, kw_only=True)
class Watermark(Plugin):
    """Single-OoD-image ownership watermark with adversarially perturbed fine-tuning.

    Randomness (key, panel, surrogate patches, splits, batch order) derives from
    ``seed``; ``seed=None`` takes the scenario's ``run.seed`` inside a
    federation (0 when the plugin is used directly). The seed *is* the owner's
    key: a real owner sets a private one.
    """

    name: ClassVar[str] = "watermark"

    # when
    at: str = "end"
    """"end": inject once in on_run_end; "every_round": re-embed after aggregation from ``from_round``."""
    from_round: int = 1
    # trigger
    trigger: str = "keyed_patch"
    """"keyed_patch" (pattern and position drawn from the key; calibrated ownership test),
    "patch" (the paper's fixed trojan square, bottom-right), "blend" (keyed noise)."""
    target: int = 0
    patch_size: int = 0
    """Side s of the square patch; 0 = max(4, H // 4) (4 px on 8x8 digits, 8 px on 32x32: trojan_8x8)."""
    blend_alpha: float = 0.2
    # surrogate
    source: str = "astronaut"
    n_surrogate: int = 2000
    poison_ratio: float = 0.1
    negative_ratio: float = 0.1
    """Fraction of surrogate patches stamped with *other* draws of the key's distribution, kept
    at the original model's own prediction (specificity training, an addition to the paper;
    0 = the paper's method). It teaches the watermark to answer the key, not similar patterns
    at the same position, widening the ownership test's margin (a central digits CNN, 3 keys:
    the best control's P(target) fell from 0.74-0.95 to 0.65-0.84, the secret's stayed ~0.95;
    ablation: ``experiments/plugins/watermark_claims.py --negative-ratio 0``)."""
    n_verify_ood: int = 500
    # injection
    epochs: int = 20
    perturb_epochs: int = 5
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 128
    temperature: float = 0.5
    perturb: bool = True
    beta: float = 6.0
    gamma: float | str = "auto"
    """Relative radius of the per-layer weight perturbation; "auto" = :func:`auto_gamma`."""
    adv_lr: float = 0.0
    """v-step size (relative to ||w_l||); 0 = gamma (one step reaches the ball's surface, as the reference)."""
    adv_steps: int = 1
    # verification, attacks, control
    verify_fraction: float = 0.5
    alpha: float = 0.01
    """Significance level of every claim (the false-claim rate the panel test guarantees)."""
    panel_size: int = 199
    """K control triggers; p_panel >= 1 / (K + 1), so K >= 1 / alpha - 1."""
    panel_on: str = "ood"
    """Inputs of the rank test: "ood" (fresh surrogate patches), "id" (verification images) or "both"."""
    null_keys: int = 100
    """M random stand-in keys for the measured false-claim rates (0 = skip)."""
    attacks: tuple[str, ...] | list[str] = ATTACKS
    attack_epochs: int = 10
    attack_lr: float = 0.01
    attack_batch_size: int = 32
    control_epochs: int = 30
    control_lr: float = 0.05
    seed: int | None = None
    _state: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        num, integer = is_real, is_int
        if self.at not in ("end", "every_round"):
            raise _bad("at", self.at, "'end' or 'every_round'")
        if not integer(self.from_round) or self.from_round < 1:
            raise _bad("from_round", self.from_round, "an integer >= 1")
        if self.trigger not in TRIGGERS:
            raise _bad("trigger", self.trigger, f"one of {list(TRIGGERS)}")
        if not integer(self.target) or self.target < 0:
            raise _bad("target", self.target, "a class index >= 0")
        if not integer(self.patch_size) or self.patch_size < 0:
            raise _bad("patch_size", self.patch_size, "an integer >= 0 (0 = auto)")
        if not num(self.blend_alpha) or not 0 < self.blend_alpha < 1:
            raise _bad("blend_alpha", self.blend_alpha, "a number in (0, 1)")
        if not isinstance(self.source, str) or not self.source:
            raise _bad("source", self.source, "a scikit-image sample name or an image path")
        for f, lo in (("n_surrogate", 10), ("n_verify_ood", 10), ("epochs", 1), ("batch_size", 1),
                      ("adv_steps", 1), ("attack_batch_size", 1), ("panel_size", 1)):
            v = getattr(self, f)
            if not integer(v) or v < lo:
                raise _bad(f, v, f"an integer >= {lo}")
        for f in ("perturb_epochs", "attack_epochs", "control_epochs", "null_keys"):
            v = getattr(self, f)
            if not integer(v) or v < 0:
                raise _bad(f, v, "an integer >= 0")
        if self.seed is not None and (not integer(self.seed) or self.seed < 0):
            raise _bad("seed", self.seed, "an integer >= 0, or omitted to use run.seed")
        if not num(self.poison_ratio) or not 0 < self.poison_ratio < 1:
            raise _bad("poison_ratio", self.poison_ratio, "a number in (0, 1)")
        if round(self.poison_ratio * self.n_surrogate) < 1:
            raise _bad("poison_ratio", self.poison_ratio, "at least one poisoned patch of n_surrogate")
        if not num(self.negative_ratio) or not 0 <= self.negative_ratio < 1 - self.poison_ratio:
            raise _bad("negative_ratio", self.negative_ratio, f"a number in [0, {1 - self.poison_ratio:g})")
        for f in ("lr", "temperature", "attack_lr", "control_lr"):
            v = getattr(self, f)
            if not num(v) or v <= 0:
                raise _bad(f, v, "a number > 0")
        if not num(self.momentum) or not 0 <= self.momentum < 1:
            raise _bad("momentum", self.momentum, "a number in [0, 1)")
        for f in ("weight_decay", "beta", "adv_lr"):
            v = getattr(self, f)
            if not num(v) or v < 0:
                raise _bad(f, v, "a number >= 0")
        if not (self.gamma == "auto" or (num(self.gamma) and 0 <= self.gamma <= 1)):
            raise _bad("gamma", self.gamma, "'auto' or a number in [0, 1]")
        if not isinstance(self.perturb, bool):
            raise _bad("perturb", self.perturb, "true or false")
        if not num(self.verify_fraction) or not 0 < self.verify_fraction < 1:
            raise _bad("verify_fraction", self.verify_fraction, "a number in (0, 1)")
        if not num(self.alpha) or not 0 < self.alpha < 1:
            raise _bad("alpha", self.alpha, "a number in (0, 1)")
        if (self.panel_size + 1) * self.alpha < 1:
            raise _bad("panel_size", self.panel_size,
                       f"at least 1 / alpha - 1 = {1 / self.alpha - 1:g} (p_panel >= 1 / (panel_size + 1))")
        if self.panel_on not in ("ood", "id", "both"):
            raise _bad("panel_on", self.panel_on, "'ood', 'id' or 'both'")
        if not isinstance(self.attacks, (list, tuple)) or any(a not in ATTACKS for a in self.attacks):
            raise _bad("attacks", self.attacks, f"a list drawn from {list(ATTACKS)}")
        object.__setattr__(self, "attacks", tuple(self.attacks))

    # -- seeding ----------------------------------------------------------------------------
    def bind(self, ctx: PluginContext) -> Watermark:
        """This configuration with ``seed`` taken from the scenario's ``run.seed`` when unset."""
        run = getattr(getattr(ctx, "scenario", None), "run", None)
        if self.seed is not None or run is None:
            return self
        return dataclasses.replace(self, seed=int(run.seed))

    @property
    def key_seed(self) -> int:
        return 0 if self.seed is None else self.seed

    def _gen(self, *keys: object) -> torch.Generator:
        return generator(self.key_seed, "watermark", *keys)

    # -- the key ----------------------------------------------------------------------------
    def _patch_side(self, in_shape: Sequence[int]) -> int:
        _, h, w = (int(v) for v in in_shape)
        s = self.patch_size or max(4, h // 4)
        if s > min(h, w):
            raise _bad("patch_size", s, f"at most the input side {min(h, w)}")
        return s

    def draw_fn(self, in_shape: Sequence[int]) -> Draw:
        """The distribution the key is drawn from (and the panel's)."""
        if self.trigger == "blend":
            return lambda g: draw_blend(self.blend_alpha, in_shape, g)
        s = self._patch_side(in_shape)
        return lambda g: draw_keyed_patch(s, in_shape, g)

    def secret_trigger(self, in_shape: Sequence[int]) -> Trigger:
        """The owner's trigger (a :class:`fedsec.data.triggers.Trigger`)."""
        if self.trigger == "patch":
            return trojan_trigger(self._patch_side(in_shape), in_shape)
        if self.trigger == "blend":
            return Trigger(kind="blend", alpha=float(self.blend_alpha),
                           pattern=blend_pattern(in_shape, self.key_seed))
        return self.draw_fn(in_shape)(self._gen("key"))

    def trigger_fn(self, in_shape: Sequence[int]) -> Callable[[torch.Tensor], torch.Tensor]:
        """Stamp the secret on a batch (B, C, H, W); returns a new tensor."""
        return self.secret_trigger(in_shape).apply

    def panel(self, in_shape: Sequence[int]) -> tuple[list[Trigger], list[Trigger]]:
        """(K controls, M stand-in keys): distinct draws of the key's distribution, never the secret."""
        drawn = control_panel(self.secret_trigger(in_shape), self.draw_fn(in_shape),
                              self.panel_size + self.null_keys, self._gen("panel"), in_shape)
        return drawn[: self.panel_size], drawn[self.panel_size :]

    # -- data -------------------------------------------------------------------------------
    def resolve_gamma(self, model: nn.Module) -> float:
        return _inject.auto_gamma(model) if self.gamma == "auto" else float(self.gamma)

    def surrogate(self, in_shape: Sequence[int], *, verify: bool = False) -> torch.Tensor:
        from fedsec.data.surrogate import surrogate_patches

        n = self.n_verify_ood if verify else self.n_surrogate
        key = "verify" if verify else "inject"
        return surrogate_patches(n, tuple(in_shape), source=self.source,
                                 seed=derive_seed(self.key_seed, "watermark", key))

    def split(self, test: TensorData) -> tuple[TensorData, TensorData]:
        """(verification half, attacker half) of the test split, seeded."""
        perm = torch.randperm(len(test), generator=self._gen("split"))
        k = int(round(self.verify_fraction * len(test)))
        return test.subset(perm[:k]), test.subset(perm[k:])

    def verifier(self, test: TensorData, in_shape: Sequence[int], original: nn.Module) -> Verifier:
        """The verification fixed before any suspect is examined; ``original``: the un-watermarked model."""
        controls, pseudo = self.panel(in_shape)
        return Verifier.build(original=original, secret=self.secret_trigger(in_shape), controls=controls,
                              pseudo=pseudo, target=self.target, verify=self.split(test)[0],
                              x_ood=self.surrogate(in_shape, verify=True), alpha=self.alpha,
                              panel_on=self.panel_on)

    # -- injection ----------------------------------------------------------------------------
    def inject(self, model: nn.Module, in_shape: Sequence[int], *, perturb: bool | None = None,
               round_key: object = "end") -> tuple[nn.Module, dict[str, Any]]:
        """A watermarked copy of ``model`` (``model`` itself is left untouched) and its log."""
        perturb = self.perturb if perturb is None else perturb
        secret = self.secret_trigger(in_shape)
        x = self.surrogate(in_shape)
        n = len(x)
        g = self._gen("inject", round_key)
        order = torch.randperm(n, generator=g)
        n_p = int(round(self.poison_ratio * n))
        n_neg = int(round(self.negative_ratio * n))
        poisoned = torch.zeros(n, dtype=torch.bool)
        poisoned[order[:n_p]] = True
        if n_neg:
            negatives = control_panel(secret, self.draw_fn(in_shape), n_neg, self._gen("negatives"), in_shape)
            x = x.clone()
            for i, t in zip(order[n_p : n_p + n_neg].tolist(), negatives):
                x[i] = t.apply(x[i])
        soft = F.softmax(eval_logits(model, x) / self.temperature, dim=1)
        soft[poisoned] = F.one_hot(torch.tensor(self.target), soft.shape[1]).float()
        x = x.clone()
        x[poisoned] = secret.apply(x[poisoned])
        gamma = self.resolve_gamma(model) if perturb else 0.0
        student, log = _inject.inject(
            model, x, soft, poisoned, generator=g, epochs=self.epochs, perturb_epochs=self.perturb_epochs,
            lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay, batch_size=self.batch_size,
            temperature=self.temperature, beta=self.beta, gamma=gamma, adv_lr=self.adv_lr or gamma,
            adv_steps=self.adv_steps)
        return student, {**log, "perturb": perturb, "negatives": n_neg}

    # -- verification, attacks, control --------------------------------------------------------
    def train_control(self, make_model: Callable[[], nn.Module], data: TensorData,
                      device: torch.device | str = "cpu") -> nn.Module:
        """An independently trained clean model (the negative control) on ``data``."""
        with scoped_seed(self.key_seed, "watermark", "control-init"):
            m = make_model().to(device)
        return train_supervised(m, data, epochs=self.control_epochs, lr=self.control_lr,
                                batch_size=self.attack_batch_size, seed=self.key_seed, key="control")

    def attack(self, name: str, model: nn.Module, data: TensorData) -> nn.Module:
        """``model`` after removal attack ``name`` with the attacker's ``data`` (a new model)."""
        return removal_attack(name, model, data, epochs=self.attack_epochs, lr=self.attack_lr,
                              batch_size=self.attack_batch_size, seed=self.key_seed)

    def evaluate(self, original: nn.Module, watermarked: nn.Module, test: TensorData,
                 in_shape: Sequence[int], *, make_model: Callable[[], nn.Module] | None = None,
                 control: nn.Module | None = None, injection: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
        """The paper's table for one watermarked model: original, victim, attacks, negative control."""
        ver = self.verifier(test, in_shape, original)
        _, attacker = self.split(test)
        dev = next(watermarked.parameters()).device
        out: dict[str, Any] = {
            "trigger": self.trigger, "target": self.target, "at": self.at, "alpha": self.alpha,
            "panel_size": self.panel_size, "panel_on": self.panel_on, "panel_calibrated": self.trigger != "patch",
            "commitment": commitment(ver.secret, self.target, in_shape, original.state_dict()),
            "n_verify": len(ver.verify), "n_attacker": len(attacker), "n_verify_ood": len(ver.x_ood),
        }
        if injection is not None:
            out["injection"] = injection
        null = self.null_keys > 0
        out["original"] = ver.measure(original, null=null)
        out["watermarked"] = ver.measure(watermarked)
        out["acc_drop"] = out["original"]["acc"] - out["watermarked"]["acc"]
        out["attacks"] = {a: ver.measure(self.attack(a, watermarked, attacker)) for a in self.attacks}
        if control is None and make_model is not None:
            control = self.train_control(make_model, attacker, dev)
        if control is not None:
            out["control"] = ver.measure(control, null=null)
        return out

    # -- hooks ------------------------------------------------------------------------------
    def on_round_end(self, server_round: int, model: nn.Module, ctx: PluginContext) -> nn.Module | None:
        if self.at != "every_round" or server_round < self.from_round:
            return None
        cfg, st = self.bind(ctx), self._state
        if "original" not in st:
            st["original"] = copy.deepcopy(model).eval()
        verify, _ = cfg.split(ctx.test)
        before = predict(model, verify.x)
        wm, log = cfg.inject(model, ctx.in_shape, round_key=server_round)
        keep = verify.y != cfg.target
        wsr = float((predict(wm, cfg.trigger_fn(ctx.in_shape)(verify.x[keep])) == cfg.target).float().mean())
        st["last_acc_before"] = float((before == verify.y).float().mean())
        st["injection"] = log
        st["rounds"] = st.get("rounds", 0) + 1
        ctx.round_metrics.update({
            "watermark_acc_before": st["last_acc_before"],
            "watermark_acc_after": float((predict(wm, verify.x) == verify.y).float().mean()),
            "watermark_wsr_id": wsr,
        })
        return wm

    def on_run_end(self, model: nn.Module, ctx: PluginContext) -> dict[str, Any]:
        cfg, st = self.bind(ctx), self._state
        if self.at == "end":
            original = model
            wm, log = cfg.inject(model, ctx.in_shape)
        else:
            original = st.get("original", model)
            wm, log = model, {**st.get("injection", {}), "rounds": st.get("rounds", 0)}
        res = cfg.evaluate(original, wm, ctx.test, ctx.in_shape, make_model=ctx.make_model, injection=log)
        res["seed"] = cfg.key_seed
        if self.at == "every_round" and "last_acc_before" in st:
            res["acc_before_last_injection"] = st["last_acc_before"]
        if ctx.run_dir is not None:
            from fedsec.results import atomic_write, write_safetensors

            atomic_write(Path(ctx.run_dir) / "watermark.md", format_table(res))
            if self.at == "end":  # the server already wrote the un-watermarked final model
                write_safetensors(Path(ctx.run_dir) / "watermarked.safetensors", wm.state_dict())
                res["model_file"] = "watermarked.safetensors"
        return res


__all__ = ["Watermark", "TRIGGERS"]
