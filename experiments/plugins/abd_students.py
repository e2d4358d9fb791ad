"""Per-class clean accuracy of saved models: does a defended student still predict the target?

    python experiments/plugins/abd_students.py RUN/model.safetensors RUN/student_kd.safetensors \
        RUN/student_kd_abd.safetensors

Each file is rebuilt from the scenario embedded in it (a run's ``model.safetensors``, or a
student written by the ``abd`` plugin or ``fedsec distill --students``). Prints, per model,
clean accuracy per class and the share of test images predicted as each class; a student
with 0% ASR that never predicts the target class has lost that class, not only the backdoor.
"""

from __future__ import annotations

import argparse
import sys

from safetensors import safe_open
from safetensors.torch import load_file

from fedsec.federation.env import dataset_of, new_model, scenario_from_toml
from fedsec.metrics import predict


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="+", help="safetensors files with an embedded scenario")
    args = ap.parse_args(argv)
    for path in args.models:
        with safe_open(path, "pt") as f:
            meta = f.metadata() or {}
        if "scenario" not in meta:
            ap.error(f"{path}: no embedded scenario")
        s = scenario_from_toml(meta["scenario"])
        model = new_model(s)
        model.load_state_dict(load_file(path))
        test = dataset_of(s).test
        pred = predict(model.eval(), test.x)
        classes = range(int(test.y.max()) + 1)
        per = [float((pred[test.y == c] == c).float().mean()) for c in classes]
        share = [float((pred == c).float().mean()) for c in classes]
        print(f"{path}: acc {float((pred == test.y).float().mean()):.3f}")
        print("  per-class acc %  " + " ".join(f"{100 * v:3.0f}" for v in per))
        print("  predicted as  %  " + " ".join(f"{100 * v:3.0f}" for v in share))
    return 0


if __name__ == "__main__":
    sys.exit(main())
