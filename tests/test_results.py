"""The run directory: appended, fsynced metrics; torn lines; umask permissions; env.json; resume."""

import json
import os
import stat
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedsec.results import (METRICS, ResultsError, RunWriter, TornLineWarning, atomic_write, dumps,
                            read_metrics, read_run)


def row(r: int) -> dict:
    return {"round": r, "clean_acc": 0.5 + r / 100, "asr": {"badnets": r / 10}, "sampled": [0, 1, 2],
            "accepted": [0, 2], "malicious": [1], "detection": {"precision": 1.0, "recall": 1.0, "fpr": 0.0},
            "failed": [], "nonfinite": [], "seconds": 0.25}


def test_rounds_are_appended_never_rewritten(tmp_path):
    w = RunWriter(tmp_path, "t")
    f = w.path / METRICS
    sizes, inode = [], None
    for r in range(1, 6):
        w.append_round(row(r))
        if inode is None:
            inode = f.stat().st_ino
        sizes.append(f.stat().st_size)
        assert f.stat().st_ino == inode  # the same file grows (an atomic rewrite would replace it)
    lines = f.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 6
    assert sizes == [sum(len(x) + 1 for x in lines[:i]) for i in range(1, 6)]
    assert [json.loads(x) for x in lines[:-1]] == [row(r) for r in range(1, 6)] == w.rows


def test_rows_are_what_reads_back(tmp_path):
    w = RunWriter(tmp_path, "t")
    w.append_round({"round": 1, "clean_acc": float("nan"), "asr": {}, "t": torch.tensor([1, 2]), "p": (3, 4)})
    assert w.rows == [{"round": 1, "clean_acc": None, "asr": {}, "t": [1, 2], "p": [3, 4]}] == read_metrics(w.path)


def _written(tmp_path: Path, n: int) -> RunWriter:
    w = RunWriter(tmp_path, "t")
    w.write_scenario('name = "t"\n')
    for r in range(1, n + 1):
        w.append_round(row(r))
    return w


@pytest.mark.parametrize("tail", [b'{"round": 4, "clean_a', b"\x00" * 37, b'{"round": 4}', b"garbage\n"])
def test_torn_last_line_is_dropped_and_said(tmp_path, tail):
    w = _written(tmp_path, 3)
    with open(w.path / METRICS, "ab") as f:
        f.write(tail)
    with pytest.warns(TornLineWarning, match=rf"dropped a torn last line \({len(tail)} bytes.*3 complete rounds"):
        assert read_metrics(w.path / METRICS) == [row(r) for r in (1, 2, 3)]
    with pytest.warns(TornLineWarning):
        w2 = RunWriter.resume(w.path)
    assert w2.rows == [row(r) for r in (1, 2, 3)]
    w2.append_round(row(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_metrics(w.path) == [row(r) for r in (1, 2, 3, 4)]
        assert read_run(w.path)["rows"] == w2.rows


def test_a_corrupt_middle_line_is_an_error_not_dropped(tmp_path):
    w = _written(tmp_path, 3)
    f = w.path / METRICS
    lines = f.read_bytes().split(b"\n")
    lines[1] = lines[1][:10]
    f.write_bytes(b"\n".join(lines))
    with pytest.raises(ResultsError, match=r"line 2 is not a JSON object.*corrupted"):
        read_metrics(f)
    with pytest.raises(ResultsError, match="line 2"):
        RunWriter.resume(w.path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 10_000))
def test_any_crash_point_reads_back_the_complete_prefix(tmp_path, cut_seed):
    w = _written(tmp_path / str(cut_seed), 4)
    f = w.path / METRICS
    data = f.read_bytes()
    cut = cut_seed % (len(data) + 1)
    f.write_bytes(data[:cut])
    whole = data[:cut].count(b"\n")
    torn = not data[:cut].endswith(b"\n") and cut > 0
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        w2 = RunWriter.resume(w.path)
    assert w2.rows == [row(r) for r in range(1, whole + 1)]
    assert any(issubclass(x.category, TornLineWarning) for x in rec) == torn
    assert f.read_bytes() == data[:cut][: len(data[:cut]) - len(data[:cut].split(b"\n")[-1])]


def test_truncate_to_round(tmp_path):
    w = _written(tmp_path, 5)
    before = (w.path / METRICS).read_bytes()
    w.truncate_to_round(2)
    assert w.rows == [row(1), row(2)]
    assert before.startswith((w.path / METRICS).read_bytes())
    assert read_metrics(w.path) == w.rows
    w.append_round(row(3))
    assert read_metrics(w.path) == [row(r) for r in (1, 2, 3)]
    w.truncate_to_round(0)
    assert w.rows == [] and (w.path / METRICS).read_bytes() == b""


def test_resume_requires_a_run_directory(tmp_path):
    with pytest.raises(ResultsError, match="not a run directory"):
        RunWriter.resume(tmp_path)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        w = RunWriter(tmp_path, "t")
        w.write_scenario('name = "t"\n')
        w.append_round(row(1))
        w.write_summary({"x": 1})
        w.write_model({"a": torch.zeros(2)})
        w.write_env()
        plots = w.write_plots()
    finally:
        os.umask(old)
    files = ["scenario.toml", METRICS, "summary.json", "model.safetensors", "env.json", *(p.name for p in plots)]
    assert plots
    for name in files:
        assert stat.S_IMODE((w.path / name).stat().st_mode) == 0o666 & ~mask, name
    assert stat.S_IMODE(w.path.stat().st_mode) == 0o777 & ~mask
    assert sorted(p.name for p in w.path.iterdir()) == sorted(files)  # no temporary left behind


def test_env_json_records_versions_devices_host_and_command(tmp_path):
    import importlib.metadata as md
    import socket

    w = RunWriter(tmp_path, "t")
    env = json.loads(w.write_env({"devices": {"server": "cpu"}}).read_text())
    assert env["python"] == sys.version.split()[0]
    assert env["fedsec"] == md.version("fedsec")
    for pkg in ("torch", "flwr", "ray", "numpy"):
        assert env["packages"][pkg] == md.version(pkg), pkg
    assert env["cuda"]["available"] == torch.cuda.is_available()
    assert len(env["cuda"]["devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    assert env["host"] == socket.gethostname() and env["argv"] == sys.argv
    assert env["devices"] == {"server": "cpu"}
    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:
        assert env["git"]["commit"] == head.stdout.strip() and isinstance(env["git"]["dirty"], bool)


# -- unwritable output and a full disk ---------------------------------------------------------
def test_output_under_a_regular_file_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    with pytest.raises(ResultsError, match=r"cannot create the run directory '.*not-a-dir/sub/t-.*run\.output"):
        RunWriter(blocker / "sub", "t")
    with pytest.raises(ResultsError, match=r"cannot write '.*not-a-dir/summary\.json'"):
        atomic_write(blocker / "summary.json", "{}")
    assert blocker.read_text() == "x"


def test_a_vanished_run_directory_is_a_clear_error_and_keeps_what_was_written(tmp_path):
    w = _written(tmp_path, 2)
    w.write_summary({"rounds": 2})
    # Replace the metrics file by a directory: appends now fail with a real OS error.
    (w.path / METRICS).rename(w.path / "saved.jsonl")
    (w.path / METRICS).mkdir()
    with pytest.raises(ResultsError, match=r"cannot write '.*metrics\.jsonl'"):
        w.append_round(row(3))
    assert w.rows == [row(1), row(2)]
    assert json.loads((w.path / "summary.json").read_text()) == {"rounds": 2}
    assert read_metrics(w.path / "saved.jsonl") == w.rows


FULL_DISK = textwrap.dedent("""
    import json, resource, signal, sys
    from fedsec.results import ResultsError, RunWriter, read_metrics, METRICS
    w = RunWriter(sys.argv[1], "t")
    w.write_scenario('name = "t"\\n')
    w.write_summary({"rounds": 0})
    row = json.loads(sys.argv[2])
    # The file-size limit makes write() fail with EFBIG mid-line, as a full disk does.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1500, 1500))
    n = 0
    try:
        while True:
            w.append_round(dict(row, round=n + 1))
            n += 1
    except ResultsError as e:
        err = str(e)
    try:
        w.write_summary({"rounds": n, "pad": "x" * 3000})
        summary_err = None
    except ResultsError as e:
        summary_err = str(e)
    print(json.dumps({"n": n, "err": err, "summary_err": summary_err, "dir": str(w.path)}))
""")


def test_a_full_disk_is_a_clear_error_and_written_files_stay_valid(tmp_path):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    out = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path), dumps(row(0))], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["n"] >= 3 and f"cannot append round {res['n'] + 1}" in res["err"]
    assert "too large" in res["err"].lower()  # EFBIG's strerror: the OS reason is kept
    assert "summary.json" in res["summary_err"]
    d = Path(res["dir"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torn line: the failed append was rolled back
        assert [r["round"] for r in read_metrics(d)] == list(range(1, res["n"] + 1))
    assert json.loads((d / "summary.json").read_text()) == {"rounds": 0}  # the old summary survives
    assert sorted(p.name for p in d.iterdir()) == sorted(["scenario.toml", "summary.json", METRICS])
