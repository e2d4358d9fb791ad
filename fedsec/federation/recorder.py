"""The Recorder: turns each :class:`RoundOutcome` into the run directory's files.

It is the only writer of a run directory during a federation: scenario.toml
and env.json at the start, one fsynced line of metrics.jsonl per round, then
model.safetensors, summary.json and the plots; if the run stops on an error,
summary.json says so (``status: failed`` and the message) and no final model is
written, so nothing in the directory claims a run that did not finish.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fedsec.metrics import EvalTrigger, asr_lifespan
from fedsec.results import RunWriter
from fedsec.scenario import Scenario


class Recorder:
    def __init__(self, scenario: Scenario, output: str | Path, toml_text: str) -> None:
        self.scenario = scenario
        self.toml = toml_text
        self.writer = RunWriter(output, scenario.name)
        self.writer.write_scenario(toml_text)
        if hasattr(self.writer, "write_env"):
            self.writer.write_env({"device": scenario.run.device, "engine": scenario.run.engine})
        self.initial: dict[str, Any] | None = None

    @classmethod
    def resume(cls, scenario: Scenario, path: str | Path, toml_text: str) -> Recorder:
        """Reopen ``path`` (a run directory of this scenario) to continue writing it."""
        self = cls.__new__(cls)
        self.scenario, self.toml, self.initial = scenario, toml_text, None
        self.writer = RunWriter.resume(path)
        return self

    @property
    def path(self) -> Path:
        return self.writer.path

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.writer.rows

    def start(self, initial: dict[str, Any]) -> None:
        self.initial = initial

    def record(self, outcome) -> dict[str, Any]:
        row = outcome.row()
        self.writer.append_round(row)
        return row

    def summary(self, triggers: dict[str, EvalTrigger]) -> dict[str, Any]:
        rows, s = self.rows, self.scenario
        accs = [r["clean_acc"] for r in rows]
        best = max(range(len(rows)), key=lambda i: accs[i]) if rows else None
        attack_rounds = [r["round"] for r in rows if r.get("malicious")]
        return {
            "name": s.name,
            "status": "completed",
            "rounds": s.server.rounds,
            "initial": self.initial,
            "final_clean_acc": accs[-1] if rows else None,
            "best_clean_acc": accs[best] if best is not None else None,
            "best_round": rows[best]["round"] if best is not None else None,
            "final_asr": rows[-1]["asr"] if rows else {},
            "max_asr": {k: max(r["asr"][k] for r in rows) for k in triggers} if rows else {},
            "asr_lifespan": {k: asr_lifespan([r["round"] for r in rows], [r["asr"][k] for r in rows],
                                             attack_rounds) for k in triggers} if rows else {},
            "final_train_loss": rows[-1].get("train_loss") if rows else None,
            "final_test_loss": rows[-1].get("test_loss") if rows else None,
            "seconds": sum(r["seconds"] for r in rows),
            "plugins": {},
            **self._reference(accs[-1] if rows else None),
        }

    def _reference(self, final_acc: float | None) -> dict[str, Any]:
        """The no-attack reference run's figures (``run.reference_run``) and the drop against it."""
        ref_dir = self.scenario.run.reference_run
        if not ref_dir:
            return {}
        import json

        ref = json.loads((Path(ref_dir) / "summary.json").read_text())
        out = {"reference": {"run": str(ref_dir), "final_clean_acc": ref.get("final_clean_acc"),
                             "final_asr": ref.get("final_asr"), "name": ref.get("name")}}
        if final_acc is not None and ref.get("final_clean_acc") is not None:
            out["clean_acc_drop"] = ref["final_clean_acc"] - final_acc
        return out

    def finish(self, state: dict[str, torch.Tensor], figures: dict[str, Any],
               triggers: dict[str, EvalTrigger]) -> dict[str, Any]:
        self.writer.write_model(state, {"scenario": self.toml})
        summary = self.summary(triggers)
        summary["plugins"] = figures
        self.writer.write_summary(summary)
        self.writer.write_plots()
        return summary

    def fail(self, error: BaseException) -> None:
        """Record why the run stopped; the rounds already written stay as they are."""
        try:
            summary = self.summary({})
            summary.update(status="failed", error=f"{type(error).__name__}: {error}",
                           rounds_completed=len(self.rows))
            self.writer.write_summary(summary)
        except Exception:  # never hide the original error behind a reporting one
            pass
