"""GPU smoke test (``pytest -m gpu``; skipped without CUDA): clients and server on the GPU.

Two rounds of a small quickstart under ``inline`` and ``ray`` with ``run.device = "cuda"``
(Ray clients get a fractional GPU); the clients' reported device, the server model's device
and the final model against a CPU run (within tolerance: cuDNN and CPU kernels differ in
the last bits).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedsec import load_scenario, run

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

QUICK = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.toml"


def _scenario(tmp_path, engine: str, device: str):
    return load_scenario(QUICK, [f'run.engine="{engine}"', f'run.device="{device}"', "data.num_clients=4",
                                 "server.rounds=2", "client.epochs=1", f'run.output="{tmp_path}"',
                                 "run.num_gpus=0.25" if engine == "ray" and device == "cuda" else "run.num_gpus=0"])


@pytest.mark.parametrize("engine", ["inline", "ray"])
def test_gpu_run_matches_cpu(tmp_path, engine):
    gpu = run(_scenario(tmp_path / "gpu", engine, "cuda"))
    cpu = run(_scenario(tmp_path / "cpu", "inline", "cpu"))
    assert next(gpu.model.parameters()).device.type == "cuda"  # the server's model
    assert all(not r["failed"] for r in gpu.history)  # every client trained (no silent CPU fallback)
    for (k, a), b in zip(gpu.model.state_dict().items(), cpu.model.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a.cpu(), b, rtol=1e-3, atol=1e-3, msg=f"{k} differs")
