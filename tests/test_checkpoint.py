"""fedsec.checkpoint: safetensors only, and every malformed file is a CheckpointError naming it."""

import json
import pickle
import re
import struct
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedsec.checkpoint import MAX_HEADER_BYTES, CheckpointError, load_state, read_metadata

STATE = {
    "conv.weight": torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2) / 7,
    "conv.bias": torch.tensor([1.5, -2.0]),
    "bn.num_batches_tracked": torch.tensor(3),
    "half": torch.tensor([0.5, 1.0], dtype=torch.float16),
    "bf": torch.tensor([[0.25]], dtype=torch.bfloat16),
    "flags": torch.tensor([True, False, True]),
    "empty": torch.zeros(0, 4),
    "double": torch.tensor([1e-300], dtype=torch.float64),
}


def _write(tmp_path: Path, data: bytes, name: str = "m.safetensors") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def _raw(header: dict, data: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def test_round_trip_every_dtype_with_metadata(tmp_path):
    p = _write(tmp_path, st_save(STATE, metadata={"scenario": "x = 1", "round": "7"}))
    out = load_state(p, expected=STATE)
    assert list(out) == list(STATE)  # the expected order
    for k, v in STATE.items():
        assert out[k].dtype == v.dtype and torch.equal(out[k], v), k
    out["conv.bias"] += 1  # tensors own writable memory
    assert read_metadata(p) == {"scenario": "x = 1", "round": "7"}
    assert set(load_state(p)) == set(STATE)


def test_a_file_without_metadata_reads_as_empty(tmp_path):
    assert read_metadata(_write(tmp_path, st_save({"a": torch.ones(1)}))) == {}


@pytest.mark.parametrize("kind", ["zip", "legacy", "pickle"])
def test_pickle_files_are_refused_saying_why(tmp_path, kind):
    p = tmp_path / "model.pt"
    if kind == "zip":
        torch.save(STATE, p)
    elif kind == "legacy":
        torch.save(STATE, p, _use_new_zipfile_serialization=False)
    else:
        p.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="runs whatever code") as e:
        load_state(p, what="model.init")
    msg = str(e.value)
    assert msg.startswith(f"model.init: {str(p)!r}") and "not safetensors" in msg
    assert "weights_only=True" in msg  # how to convert it
    assert e.value.path == str(p)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_a_header_length_that_looks_like_a_pickle_opcode_is_still_safetensors(tmp_path, protocol):
    # Header length 0x0380 (896) starts with the bytes 0x80 0x03 of a protocol-3 pickle.
    n = 0x80 + 256 * protocol
    h = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    h = h + b" " * (n - len(h))  # safetensors pads headers with spaces
    data = struct.pack("<Q", n) + h + struct.pack("<2f", 1.5, -2.0)
    assert data[:2] == bytes([0x80, protocol])
    p = _write(tmp_path, data)
    assert torch.equal(load_state(p)["a"], torch.tensor([1.5, -2.0])) and torch.equal(st_load(data)["a"], load_state(p)["a"])


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint: '.*nope\.safetensors': no such file"):
        load_state(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a directory"):
        read_metadata(tmp_path)


def test_every_truncation_is_a_clear_error(tmp_path):
    data = st_save({"a": torch.ones(2, 3), "b": torch.arange(4)}, metadata={"k": "v"})
    for cut in range(len(data)):
        p = _write(tmp_path, data[:cut])
        with pytest.raises(CheckpointError) as e:
            load_state(p)
        assert str(p) in str(e.value)
        msg = str(e.value)
        assert ("truncated" in msg or "shorter" in msg or "not valid JSON" in msg), (cut, msg)


def test_header_length_is_checked_against_the_file_size(tmp_path):
    huge = _write(tmp_path, struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")
    with pytest.raises(CheckpointError, match=f"header length field says {MAX_HEADER_BYTES + 1} bytes .limit"):
        load_state(huge)
    lying = _write(tmp_path, struct.pack("<Q", 1000) + b'{"a": 1}')
    with pytest.raises(CheckpointError, match="says 1000 bytes but only 8 follow it: truncated"):
        load_state(lying)
    # 2**64 - 1: a naive reader would try to allocate it
    with pytest.raises(CheckpointError, match="header length field"):
        load_state(_write(tmp_path, b"\xff" * 8 + b"{}"))


@pytest.mark.parametrize("header, data, pattern, tensor", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {"x": 1}},
     bytes(8), "__metadata__ must map strings to strings", None),
    ({"a": {"dtype": "Q99", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "dtype 'Q99' is not one of", "a"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), "not a list of non-negative", "a"),
    ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, bytes(4), "not a list of non-negative", "a"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), "needs 12 bytes", "a"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8), "0 <= begin <= end", "a"),
    ({"a": {"dtype": "F32", "shape": [2]}}, bytes(8), "is not {dtype, shape, data_offsets}", "a"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8), "overlaps", "b"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8), "leaves a gap", "a"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(8), "4 bytes follow the last", None),
    ({"a": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\x01\x07", "BOOL data", "a"),
    ([1, 2], b"", "header is a JSON list", None),
])
def test_malformed_headers_name_the_file_and_tensor(tmp_path, header, data, pattern, tensor):
    p = _write(tmp_path, _raw(header, data))
    with pytest.raises(CheckpointError, match=re.escape(pattern)) as e:
        load_state(p)
    assert str(p) in str(e.value) and e.value.tensor == tensor
    if tensor:
        assert repr(tensor) in str(e.value)


def test_duplicate_and_non_json_headers(tmp_path):
    h = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    p = _write(tmp_path, struct.pack("<Q", len(h)) + h + bytes(4))
    with pytest.raises(CheckpointError, match="appears twice"):
        load_state(p)
    p = _write(tmp_path, struct.pack("<Q", 4) + b"\xff\xfe{}")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_state(p)


def test_expected_names_shapes_and_dtypes(tmp_path):
    p = _write(tmp_path, st_save({"w": torch.zeros(2, 3), "b": torch.zeros(2), "extra": torch.zeros(1)}))
    with pytest.raises(CheckpointError) as e:
        load_state(p, expected={"w": torch.zeros(3, 2), "b": torch.zeros(2, dtype=torch.float64),
                                "gone": torch.zeros(1)}, what="model.init")
    msg = str(e.value)
    assert "missing tensor(s) 'gone'" in msg and "unexpected tensor(s) 'extra'" in msg
    assert "tensor 'w' is float32 (2, 3), expected float32 (3, 2)" in msg
    assert "tensor 'b' is float32 (2,), expected float64 (2,)" in msg
    assert e.value.tensor == "gone"
    only_dtype = {"w": torch.zeros(2, 3), "b": torch.zeros(2, dtype=torch.float16), "extra": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="tensor 'b' is float32 .2,., expected float16") as e:
        load_state(p, expected=only_dtype)
    assert e.value.tensor == "b"


def test_initial_state_refuses_a_pickle_as_a_scenario_error(tmp_path):
    from fedsec.federation.env import initial_state, new_model
    from fedsec.scenario import ModelConfig, Scenario, ScenarioError

    s = Scenario(name="t", model=ModelConfig(name="mlp"))
    good = tmp_path / "init.safetensors"
    ref = {k: v + 1 for k, v in new_model(s).state_dict().items()}
    good.write_bytes(st_save(ref))
    state = initial_state(s.replace(**{"model.init": str(good)}))
    assert all(torch.equal(state[k], ref[k]) for k in ref)

    pt = tmp_path / "init.pt"
    torch.save(ref, pt)
    with pytest.raises(ScenarioError, match=r"^model\.init: .*init\.pt.*runs whatever code"):
        initial_state(s.replace(**{"model.init": str(pt)}))
    half = tmp_path / "half.safetensors"
    half.write_bytes(st_save({k: v.half() for k, v in ref.items()}))
    with pytest.raises(ScenarioError, match=r"^model\.init: .*is float16 .*expected float32.*model\.name = 'mlp'"):
        initial_state(s.replace(**{"model.init": str(half)}))


# -- fuzzing -----------------------------------------------------------------------------------
VALID = st_save({"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor([1, 2]),
                 "c": torch.tensor([True])}, metadata={"m": "v"})


def _outcome(tmp_path: Path, data: bytes):
    p = _write(tmp_path, data, "fuzz.safetensors")
    try:
        out = load_state(p)
    except CheckpointError as e:
        assert str(p) in str(e)
        return None
    read_metadata(p)  # the header was accepted, so the metadata reader accepts it too
    # Anything accepted is a file the reference implementation reads identically.
    ref = st_load(data)
    assert set(out) == set(ref)
    for k in ref:
        assert out[k].dtype == ref[k].dtype and out[k].shape == ref[k].shape
        assert torch.equal(out[k].reshape(-1).view(torch.uint8), ref[k].reshape(-1).view(torch.uint8))
    return out


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_are_refused_cleanly(tmp_path, data):
    _outcome(tmp_path, data)


@FUZZ
@given(st.binary(max_size=64), st.integers(0, 2**64 - 1))
def test_random_header_length_and_body(tmp_path, body, n):
    _outcome(tmp_path, struct.pack("<Q", n) + body)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, len(VALID)))
def test_corrupted_valid_file(tmp_path, flips, cut):
    data = bytearray(VALID)
    for at, byte in flips:
        data[at] = byte
    _outcome(tmp_path, bytes(data[:cut]))


_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=6),
                          st.floats(allow_nan=False))
_offsets = st.lists(st.integers(-2, 40), min_size=0, max_size=3)
_entry = st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "I64", "BOOL", "U8", "F16", "x", 3]),
                                "shape": st.lists(st.integers(-1, 4), max_size=3) | _json_scalars,
                                "data_offsets": _offsets | _json_scalars})


@FUZZ
@given(st.dictionaries(st.text(max_size=4), _entry | _json_scalars, max_size=4),
       st.dictionaries(st.text(max_size=3), st.text(max_size=3) | st.integers(), max_size=2) | _json_scalars,
       st.binary(max_size=48))
def test_structured_header_fuzz(tmp_path, tensors, meta, data):
    header = dict(tensors)
    if meta is not None:
        header["__metadata__"] = meta
    _outcome(tmp_path, _raw(header, data))


# -- no unsafe loaders anywhere in the project ------------------------------------------------
ROOT = Path(__file__).resolve().parent.parent


def test_no_torch_load_without_weights_only_and_no_pickle_load():
    offenders = []
    for folder in ("fedsec", "clients", "strategies", "experiments", "tests"):
        for f in (ROOT / folder).rglob("*.py"):
            text = f.read_text()
            for m in re.finditer(r"torch\.load\(", text):
                call = text[m.start():text.find(")", m.start()) + 1]
                if "weights_only=True" not in call:
                    offenders.append(f"{f.relative_to(ROOT)}: {call}")
            if folder in ("fedsec", "clients", "strategies"):  # library code never unpickles files
                for m in re.finditer(r"\b(pickle|cloudpickle|dill|joblib)\.loads?\(", text):
                    offenders.append(f"{f.relative_to(ROOT)}: {m.group(0)}")
    offenders = [o for o in offenders if not o.startswith("tests/test_checkpoint.py")]
    assert not offenders, offenders
