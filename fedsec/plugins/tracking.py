"""Experiment tracking: per-round metrics and the final curves sent to TensorBoard, W&B or MLflow.

``[[plugins]] name = "tensorboard"`` (or ``"wandb"``, ``"mlflow"``) in a scenario logs,
for every round, the numeric columns of :func:`fedsec.load_run` (``clean_acc``,
``test_loss``, ``train_loss``, ``asr/<trigger>``, ``detection/recall``,
``per_class_acc/<c>``, ``num_accepted``, ``agg_seconds``, ...; dots become slashes,
so the tracker groups them), with the round as the step; at the end of the run, the
curves figure of ``curves.png``, the scenario and the final figures. None of the
trackers is a core dependency: each plugin checks its package when it is built (so a
scenario naming a missing one fails validation with the install command) and imports
it only when it first writes.

Rounds reach a tracker in one of two ways. A Federation that calls the optional hook
``on_round_recorded(row, ctx)`` after writing each line of metrics.jsonl (round 0,
the initial model, included) has them logged as they are written. Otherwise the
plugin reads metrics.jsonl itself: at each ``on_round_end`` (rounds up to the previous
one: ``on_round_end`` runs before the round is evaluated) and at ``on_run_end`` (the
rest), so a live dashboard lags one round behind and round 0 is not logged.

The W&B and MLflow plugins run offline by default (``mode = "offline"``: files under
the run directory, synchronised later with ``wandb sync``; MLflow's file store under
``<run dir>/mlruns``), so a run on a machine with no network still tracks.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from fedsec.plugins import Plugin, PluginContext, register_plugin

log = logging.getLogger(__name__)


class MissingTracker(ImportError, ValueError):
    """The tracker's package is not installed (a ValueError too, so scenario validation
    reports it with the plugin's path like any other bad parameter)."""


def _require(module: str, plugin: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingTracker(f"the {plugin} plugin needs the {module!r} package, which is not installed: "
                             f"pip install 'fedsec[{extra}]' (or pip install {extra})")


def scalars(row: dict[str, Any]) -> dict[str, float]:
    """The finite numeric fields of a metrics.jsonl row, flattened with ``/`` (``asr/badnets``,
    ``per_class_acc/3``, ``num_accepted``); ``round`` itself and lists are left out."""
    from fedsec.report import flat_rows

    flat = flat_rows([row], None)[0]
    out: dict[str, float] = {}
    for k, v in flat.items():
        if k == "round" or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k.replace(".", "/")] = float(v)
    return out


def final_scalars(rows: list[dict[str, Any]]) -> dict[str, float]:
    """``final/<metric>`` of the last round and ``best/clean_acc`` / ``max/asr/<trigger>``."""
    if not rows:
        return {}
    out = {f"final/{k}": v for k, v in scalars(rows[-1]).items()
           if k in ("clean_acc", "test_loss", "train_loss") or k.startswith("asr/")}
    accs = [r.get("clean_acc") for r in rows if isinstance(r.get("clean_acc"), (int, float))]
    if accs:
        out["best/clean_acc"] = max(accs)
    for trig in sorted({k for r in rows for k in (r.get("asr") or {})}):
        vals = [v for r in rows if isinstance(v := (r.get("asr") or {}).get(trig), (int, float)) and v == v]
        if vals:
            out[f"max/asr/{trig}"] = max(vals)
    return out


@dataclass(frozen=True, kw_only=True)
class _Tracker(Plugin):
    """Feeds rows to ``_log_round`` once each (hook or metrics.jsonl), then ``_finish``."""

    # Mutable bookkeeping behind the frozen parameters: the writer, the rounds logged.
    _state: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    # -- the two ways rows arrive ----------------------------------------------------------
    def on_round_recorded(self, row: dict[str, Any], ctx: PluginContext) -> None:
        """Optional Federation hook: ``row`` was just written to metrics.jsonl (round 0 = initial)."""
        self._state["hooked"] = True
        self._offer(row, ctx)

    def on_round_end(self, server_round: int, model: nn.Module, ctx: PluginContext) -> nn.Module | None:
        if not self._state.get("hooked"):
            self._catch_up(ctx, below=server_round)
        return None

    def on_run_end(self, model: nn.Module, ctx: PluginContext) -> dict[str, Any]:
        rows = self._catch_up(ctx, below=None)
        if rows is None:  # no metrics.jsonl to read: the rows the hook delivered
            rows = self._state.get("rows", [])
        try:
            self._finish(rows, ctx)
        finally:
            self._close()
        return {"rounds_logged": len(self._state.get("seen", set()) - {0}), **self._where(ctx)}

    # Checkpointed (fedsec.federation.checkpointing), so a resumed run sends no round twice.
    def state_dict(self) -> dict[str, Any]:
        return {"logged": sorted(self._state.get("seen", set()))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state["seen"] = {int(r) for r in state.get("logged", [])}

    def _catch_up(self, ctx: PluginContext, below: int | None) -> list[dict[str, Any]] | None:
        """Offer metrics.jsonl's rows before round ``below`` (all when None); returns every row."""
        if ctx.run_dir is None:
            return None
        from fedsec.results import METRICS, read_metrics

        path = Path(ctx.run_dir) / METRICS
        if not path.is_file():
            return None
        rows = read_metrics(path)
        for row in rows:
            if below is None or int(row.get("round", 0)) < below:
                self._offer(row, ctx)
        return rows

    def _offer(self, row: dict[str, Any], ctx: PluginContext) -> None:
        rnd = int(row.get("round", 0))
        seen: set[int] = self._state.setdefault("seen", set())
        if rnd in seen:
            return
        seen.add(rnd)
        if rnd == 0:
            self._state["initial"] = {k: v for k, v in row.items() if k != "round"}
        else:
            self._state.setdefault("rows", []).append(row)
        self._log_round(rnd, scalars(row), ctx)

    def _figure(self, rows: list[dict[str, Any]], ctx: PluginContext):
        from fedsec.report import curves_figure

        raw = ctx.scenario.to_dict() if hasattr(ctx.scenario, "to_dict") else {}
        summary = {"initial": self._state["initial"]} if "initial" in self._state else {}
        return curves_figure(sorted(rows, key=lambda r: r["round"]), summary, raw)

    def _scenario_text(self, ctx: PluginContext) -> str:
        return ctx.scenario.to_toml() if hasattr(ctx.scenario, "to_toml") else str(ctx.scenario)

    # -- what each tracker does ------------------------------------------------------------
    def _log_round(self, step: int, values: dict[str, float], ctx: PluginContext) -> None:
        raise NotImplementedError

    def _finish(self, rows: list[dict[str, Any]], ctx: PluginContext) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass

    def _where(self, ctx: PluginContext) -> dict[str, Any]:
        return {}


def _under_run(ctx: PluginContext, configured: str, default: str) -> Path:
    if configured:
        return Path(configured)
    if ctx.run_dir is None:
        raise ValueError("tracking: the run has no directory; set the plugin's directory parameter")
    return Path(ctx.run_dir) / default


@register_plugin("tensorboard")
@dataclass(frozen=True, kw_only=True)
class TensorBoard(_Tracker):
    """TensorBoard event files: every round's metrics as scalars, the final curves as an image.

    View them with ``tensorboard --logdir runs/`` (every run directory holds its own
    ``tensorboard/`` folder, so one dashboard compares runs). Needs the ``tensorboard``
    package (``pip install 'fedsec[tensorboard]'``); written with
    ``torch.utils.tensorboard.SummaryWriter``.
    """

    name: ClassVar[str] = "tensorboard"
    log_dir: str = ""
    """Folder of the event files; "" = ``<run dir>/tensorboard``."""
    flush_secs: int = 10
    """Seconds between flushes to disk while the run goes on (the dashboard's delay)."""

    def __post_init__(self) -> None:
        if not isinstance(self.log_dir, str):
            raise ValueError(f"tensorboard.log_dir: got {self.log_dir!r}, expected a folder path (string)")
        if not (isinstance(self.flush_secs, int) and not isinstance(self.flush_secs, bool) and self.flush_secs >= 1):
            raise ValueError(f"tensorboard.flush_secs: got {self.flush_secs!r}, expected an integer >= 1")
        _require("tensorboard", "tensorboard", "tensorboard")

    def _writer(self, ctx: PluginContext):
        if "writer" not in self._state:
            from torch.utils.tensorboard import SummaryWriter

            path = _under_run(ctx, self.log_dir, "tensorboard")
            self._state["path"] = path
            self._state["writer"] = SummaryWriter(log_dir=str(path), flush_secs=self.flush_secs)
            log.info("tensorboard: writing to %s", path)
        return self._state["writer"]

    def _log_round(self, step: int, values: dict[str, float], ctx: PluginContext) -> None:
        w = self._writer(ctx)
        for k, v in values.items():
            w.add_scalar(k, v, global_step=step)

    def _finish(self, rows: list[dict[str, Any]], ctx: PluginContext) -> None:
        w = self._writer(ctx)
        last = max((int(r["round"]) for r in rows), default=0)
        for k, v in final_scalars(rows).items():
            w.add_scalar(k, v, global_step=last)
        w.add_text("scenario", "```toml\n" + self._scenario_text(ctx) + "\n```", global_step=last)
        if rows:
            w.add_figure("curves", self._figure(rows, ctx), global_step=last, close=False)

    def _close(self) -> None:
        w = self._state.pop("writer", None)
        if w is not None:
            w.close()

    def _where(self, ctx: PluginContext) -> dict[str, Any]:
        return {"log_dir": str(self._state.get("path", ""))}


@register_plugin("wandb")
@dataclass(frozen=True, kw_only=True)
class WandB(_Tracker):
    """Weights & Biases: every round's metrics, the scenario as the run config, the final curves.

    Offline by default: the run is written under ``<run dir>/wandb`` and uploaded later
    with ``wandb sync``; ``mode = "online"`` logs live (needs ``wandb login``). Needs the
    ``wandb`` package (``pip install 'fedsec[wandb]'``).
    """

    name: ClassVar[str] = "wandb"
    project: str = "fedsec"
    entity: str = ""
    """W&B team or user; "" = your default."""
    mode: str = "offline"
    """"offline" (files only), "online" or "disabled"."""
    dir: str = ""
    """Folder W&B writes into; "" = the run directory."""
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.mode not in ("offline", "online", "disabled"):
            raise ValueError(f"wandb.mode: got {self.mode!r}, expected 'offline', 'online' or 'disabled'")
        _require("wandb", "wandb", "wandb")

    def _run(self, ctx: PluginContext):
        if "run" not in self._state:
            import wandb

            path = _under_run(ctx, self.dir, "")
            self._state["run"] = wandb.init(
                project=self.project, entity=self.entity or None, mode=self.mode, dir=str(path),
                name=getattr(ctx.scenario, "name", None) or None, tags=list(self.tags) or None,
                config=ctx.scenario.to_dict() if hasattr(ctx.scenario, "to_dict") else None)
        return self._state["run"]

    def _log_round(self, step: int, values: dict[str, float], ctx: PluginContext) -> None:
        self._run(ctx).log(values, step=step)

    def _finish(self, rows: list[dict[str, Any]], ctx: PluginContext) -> None:
        import wandb

        run = self._run(ctx)
        for k, v in final_scalars(rows).items():
            run.summary[k] = v
        if rows:
            last = max(int(r["round"]) for r in rows)
            run.log({"curves": wandb.Image(self._figure(rows, ctx))}, step=last)

    def _close(self) -> None:
        run = self._state.pop("run", None)
        if run is not None:
            run.finish()


@register_plugin("mlflow")
@dataclass(frozen=True, kw_only=True)
class MLflow(_Tracker):
    """MLflow: the scenario as parameters, every round's metrics, the final curves as an artifact.

    Local by default: a file store under ``<run dir>/mlruns`` (``mlflow ui
    --backend-store-uri <run dir>/mlruns``); set ``tracking_uri`` to a server to log there.
    Needs the ``mlflow`` package (``pip install 'fedsec[mlflow]'``).
    """

    name: ClassVar[str] = "mlflow"
    tracking_uri: str = ""
    """MLflow tracking URI; "" = ``file:<run dir>/mlruns``."""
    experiment: str = "fedsec"

    def __post_init__(self) -> None:
        if not isinstance(self.tracking_uri, str):
            raise ValueError(f"mlflow.tracking_uri: got {self.tracking_uri!r}, expected a string")
        _require("mlflow", "mlflow", "mlflow")

    def _client(self, ctx: PluginContext):
        if "mlflow" not in self._state:
            import mlflow

            from fedsec.report import flat_scenario

            uri = self.tracking_uri or _under_run(ctx, "", "mlruns").resolve().as_uri()
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment(self.experiment)
            mlflow.start_run(run_name=getattr(ctx.scenario, "name", None) or None)
            raw = ctx.scenario.to_dict() if hasattr(ctx.scenario, "to_dict") else {}
            params = {k: v[:500] for k, v in flat_scenario(raw).items()}
            for i, a in enumerate(raw.get("attack", [])):
                params[f"attack.{i}"] = str(a)[:500]
            if params:
                mlflow.log_params(params)
            self._state["mlflow"] = mlflow
        return self._state["mlflow"]

    def _log_round(self, step: int, values: dict[str, float], ctx: PluginContext) -> None:
        self._client(ctx).log_metrics(values, step=step)

    def _finish(self, rows: list[dict[str, Any]], ctx: PluginContext) -> None:
        mlflow = self._client(ctx)
        final = final_scalars(rows)
        if final:
            mlflow.log_metrics(final)
        if rows:
            mlflow.log_figure(self._figure(rows, ctx), "curves.png")

    def _close(self) -> None:
        mlflow = self._state.pop("mlflow", None)
        if mlflow is not None:
            mlflow.end_run()
