"""What the in-process engines skip: .npy round trips (TensorArray), model builds
(reusable_model), the collector walking start-up objects (frozen_gc); each must
leave every result as it was."""

from __future__ import annotations

import gc
import pickle

import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.serde import array_from_proto, array_to_proto
from flwr.supercore.inflatable.inflatable_utils import inflatable_class_registry

from fedsec import load_scenario
from fedsec.federation.arrays import TensorArray, in_memory, in_memory_content, tensor_record
from fedsec.federation.engines import LocalGrid, _server_context, frozen_gc, node_id_of
from fedsec.federation.env import new_model, reusable_model

STATE = {
    "w": torch.randn(3, 4),
    "t": torch.randn(4, 3).t(),  # not contiguous
    "n": torch.tensor(7),  # 0-d, int64 (BatchNorm's num_batches_tracked)
    "b": torch.tensor([True, False]),
    "h": torch.ones(2, dtype=torch.float16),
}


def test_tensor_array_is_the_array_flower_would_make():
    ours, flowers = tensor_record(STATE), ArrayRecord(STATE)
    assert list(ours) == list(flowers)
    for k in STATE:
        a, b = ours[k], flowers[k]
        assert isinstance(a, TensorArray) and isinstance(a, Array)
        assert (a.dtype, tuple(a.shape), a.stype, a.data) == (b.dtype, tuple(b.shape), b.stype, b.data)
        assert a.object_id == b.object_id
    assert ours.object_id == flowers.object_id and ours.count_bytes() == flowers.count_bytes()
    got = ours.to_torch_state_dict()
    assert all(torch.equal(got[k], STATE[k]) and got[k].dtype == STATE[k].dtype for k in STATE)


def test_tensor_array_is_a_snapshot_and_hands_out_copies():
    src = {"w": torch.zeros(3)}
    rec = tensor_record(src)
    src["w"] += 1  # the sender changes its tensor after sending
    first = rec.to_torch_state_dict()["w"]
    first += 5  # a receiver writes its copy
    assert torch.equal(rec.to_torch_state_dict()["w"], torch.zeros(3))


def test_tensor_array_crosses_flower_links_and_pickles_as_a_plain_array():
    a = TensorArray.of(STATE["w"])
    # Flower's wire format: a plain Array on the other side
    back = array_from_proto(array_to_proto(a))
    assert type(back) is Array and torch.equal(torch.from_numpy(back.numpy()), STATE["w"])
    # deflate names the class Flower's inflater knows
    assert a.deflate().split(b" ")[0] == b"Array" and "Array" in inflatable_class_registry
    # Ray / multiprocessing
    p = pickle.loads(pickle.dumps(a))
    assert isinstance(p, TensorArray) and torch.equal(p.tensor(), STATE["w"])


def test_replaced_bytes_win_over_the_tensor():
    a = TensorArray.of(torch.zeros(2))
    a.data = Array(torch.ones(2)).data
    assert torch.equal(torch.from_numpy(a.numpy()), torch.ones(2))


def test_in_memory_decodes_once_and_keeps_the_rest():
    rec = ArrayRecord(STATE)
    fast = in_memory(rec)
    assert all(isinstance(v, TensorArray) for v in fast.values()) and in_memory(fast) is fast
    assert all(torch.equal(fast.to_torch_state_dict()[k], STATE[k]) for k in STATE)
    cfg = ConfigRecord({"x": 1})
    content = in_memory_content(RecordDict({"arrays": rec, "config": cfg}))
    assert content["config"] is cfg and isinstance(content["arrays"]["w"], TensorArray)


def test_the_reused_model_is_a_fresh_model():
    s = load_scenario("experiments/quickstart.toml")
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in new_model(s).state_dict().items()}
    m = reusable_model(s, state)
    # a previous client leaves it in a mess: eval mode, frozen layer, gradients, a hook
    m.eval()
    next(m.parameters()).requires_grad_(False)
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    with torch.no_grad():
        next(m.parameters()).add_(1)
    again = reusable_model(s, state)
    assert again is m  # reused ...
    fresh = new_model(s)
    fresh.load_state_dict(state)
    assert again.training and all(p.requires_grad and p.grad is None for p in again.parameters())
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), fresh.state_dict().values()))
    handle = again[0].register_forward_hook(lambda *a: None)
    try:
        assert reusable_model(s, state) is not again  # ... unless it cannot be reset: rebuilt
    finally:
        handle.remove()


def test_frozen_gc_freezes_at_the_first_train_message_and_thaws_after():
    from fedsec.federation.client import client_app

    grid = LocalGrid(client_app, 1, executor=lambda msgs, ctxs: [None] * len(msgs))
    _server_context()
    before = gc.get_freeze_count()
    with frozen_gc(grid):
        grid.push_messages([Message(RecordDict(), node_id_of(0), MessageType.QUERY)])
        assert gc.get_freeze_count() == before  # discovery: not yet
        grid.push_messages([Message(RecordDict(), node_id_of(0), MessageType.TRAIN)])
        assert gc.get_freeze_count() > before
    assert gc.get_freeze_count() == 0  # unfreeze moves every frozen object back


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["inline"])
def test_quickstart_digest_unchanged(engine, tmp_path):
    """The quickstart's final model is bitwise the one recorded before the redesign."""
    import hashlib
    import json

    from fedsec import run

    ref = json.load(open("tests/data/digests_pre_redesign.json"))["quickstart"]
    r = run(load_scenario("experiments/quickstart.toml", [f'run.engine="{engine}"']), output=tmp_path)
    h = hashlib.sha256()
    for k, v in sorted(r.model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    assert h.hexdigest()[:16] == ref


def test_the_reused_model_follows_moves_and_replaced_buffers():
    s = load_scenario("experiments/quickstart.toml", ['model.name="wrn"', "model.params={depth = 10, k = 1}"])
    state = new_model(s).state_dict()
    m = reusable_model(s, state, torch.device("cpu"))
    m.bn.running_mean = torch.zeros_like(m.bn.running_mean)  # a buffer replaced: rebuilt
    again = reusable_model(s, state, torch.device("cpu"))
    assert again is not m and torch.equal(again.bn.running_mean, state["bn.running_mean"])
    again.double()  # dtypes changed: rebuilt
    third = reusable_model(s, state)
    assert third is not again and next(third.parameters()).dtype == torch.float32
