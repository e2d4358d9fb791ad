"""No silent fallbacks, and expected errors are one line with exit code 2 (bugs keep their traceback)."""

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fedsec.cli import app
from fedsec.data import load_dataset, partition
from fedsec.data.datasets import DatasetMissing
from fedsec.federation.env import device_of
from fedsec.scenario import RunConfig, Scenario, ScenarioError

runner = CliRunner()
QUICK = ["run", "experiments/quickstart.toml", "--set", "server.rounds=1", "--set", 'run.engine="inline"']


def _scenario(device: str) -> Scenario:
    return Scenario(name="t", run=RunConfig(device=device, engine="inline"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_an_error_naming_run_device(device, monkeypatch):
    with pytest.raises(ScenarioError, match=rf"^run\.device: got '{device}', but CUDA is not available.*run\.device = \"cpu\""):
        device_of(_scenario(device))
    # Ray hides GPUs from an actor that asked for none: say which field fixes it.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ScenarioError, match=r"set run\.num_gpus > 0"):
        device_of(_scenario(device))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_index_beyond_the_devices_is_an_error():
    n = torch.cuda.device_count()
    assert device_of(_scenario("cuda:0")) == torch.device("cuda:0")
    with pytest.raises(ScenarioError, match=rf"run\.device: got 'cuda:{n}', but this process sees {n} CUDA"):
        device_of(_scenario(f"cuda:{n}"))


def test_cpu_is_cpu():
    assert device_of(_scenario("cpu")) == torch.device("cpu")


def test_an_unsatisfiable_dirichlet_split_names_the_fields_without_warnings():
    labels = load_dataset("digits").train.y.numpy()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with pytest.raises(ScenarioError) as e:
            partition("dirichlet", labels, 100, seed=1, alpha=0.5)
    assert not [w for w in rec if "min_partition_size" in str(w.message)], [str(w.message) for w in rec]
    msg = str(e.value)
    for part in ("data.alpha = 0.5", "data.num_clients = 100", "fewer than 7 samples",
                 "14.4 per client", "data.partitioner_params.min_partition_size = 10", "fewer clients"):
        assert part in msg, (part, msg)
    # each suggested change does make it satisfiable
    assert len(partition("dirichlet", labels, 100, seed=1, alpha=0.5, min_partition_size=0)) == 100
    assert len(partition("dirichlet", labels, 40, seed=1, alpha=0.5)) == 40


def test_a_satisfiable_split_that_needed_redraws_is_silent():
    labels = load_dataset("digits").train.y.numpy()
    # seed 5 found by search: flwr-datasets warns 5 times (draws below 10 samples), then succeeds
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        parts = partition("dirichlet", labels, 60, seed=5, alpha=0.5)
    assert min(len(p) for p in parts) >= min(10, len(labels) // 120)
    assert not [w for w in rec if "min_partition_size" in str(w.message)]


def test_a_missing_torchvision_dataset_names_the_fields(tmp_path):
    with pytest.raises(DatasetMissing) as e:
        load_dataset("mnist", str(tmp_path / "empty"))
    msg = str(e.value)
    assert msg.startswith("data.dataset = 'mnist': torchvision's MNIST not found under data.root=")
    assert "empty" in msg and "data.download = true" in msg and "\n" not in msg


# -- the CLI -----------------------------------------------------------------------------------
def _one_line_error(res, *parts: str) -> None:
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.output
    for part in parts:
        assert part in errors[0], (part, errors[0])
    assert "Traceback" not in res.output


def test_cli_unsatisfiable_split(tmp_path):
    res = runner.invoke(app, [*QUICK, "--set", "data.num_clients=100", "--output", str(tmp_path)])
    _one_line_error(res, "data.alpha = 0.5", "data.num_clients = 100")
    assert not list(tmp_path.iterdir())  # nothing started


def test_cli_missing_dataset(tmp_path):
    res = runner.invoke(app, [*QUICK, "--set", 'data.dataset="cifar10"', "--set", f'data.root="{tmp_path}"',
                              "--output", str(tmp_path / "runs")])
    _one_line_error(res, "data.dataset = 'cifar10'", str(tmp_path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_cuda_without_cuda(tmp_path):
    res = runner.invoke(app, [*QUICK, "--set", 'run.device="cuda"', "--output", str(tmp_path)])
    _one_line_error(res, "run.device: got 'cuda'")


def test_cli_pickle_model_init(tmp_path):
    pt = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1)}, pt)
    res = runner.invoke(app, [*QUICK, "--set", f'model.init="{pt}"', "--output", str(tmp_path / "runs")])
    _one_line_error(res, "model.init:", "evil.pt", "runs whatever code")


def test_cli_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    res = runner.invoke(app, [*QUICK, "--output", str(blocker / "runs")])
    _one_line_error(res, "cannot create the run directory", "run.output")


def test_cli_unexpected_errors_keep_their_traceback(tmp_path, monkeypatch):
    import fedsec.federation.env as env

    def broken(s):
        raise RuntimeError("a bug, not a user mistake")

    monkeypatch.setattr(env, "partitions_of", broken)
    res = runner.invoke(app, [*QUICK, "--output", str(tmp_path)])
    assert res.exit_code == 1 and isinstance(res.exception, RuntimeError)
    assert "error: " not in res.output


ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_command_exits_2_with_one_line(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="80")
    out = subprocess.run([sys.executable, "-m", "fedsec.cli", *QUICK, "--set", "data.num_clients=100",
                          "--output", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=300)
    assert out.returncode == 2, out.stderr
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: data.alpha = 0.5"), out.stderr
    assert "Traceback" not in out.stderr + out.stdout and "UserWarning" not in out.stderr
