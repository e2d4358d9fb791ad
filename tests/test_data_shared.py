"""Packed (uint8) training sets and the Ray object-store copy actors read instead of their own."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsec import load_scenario, run
from fedsec.data import TensorData, load_dataset
from fedsec.data.storage import Packed, expand, pack
from fedsec.federation import shared

QUICK = "experiments/quickstart.toml"
BASE = ["server.rounds=2", "data.num_clients=4", "client.epochs=1", "server.fraction_train=0.75"]


def test_8bit_source_packs_to_uint8_and_converts_back_as_torchvision_does():
    from torchvision.transforms import v2

    codes = torch.randint(0, 256, (20, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = v2.ToDtype(torch.float32, scale=True)(codes)  # how the torchvision loader makes the floats
    p = pack(TensorData(x, torch.arange(20)))
    assert p.codes.dtype == np.uint8 and p.scale == 255 and p.nbytes == 20 * 48 + 20 * 8
    assert np.array_equal(p.codes, codes.numpy())
    idx = np.array([3, 0, 17])
    assert torch.equal(p.rows(idx).x, x[idx]) and torch.equal(p.rows(idx).y, torch.tensor([3, 0, 17]))


@pytest.mark.parametrize("name, dtype, scale", [("digits", np.uint8, 16), ("digits_scenes", np.float32, 0)])
def test_bundled_sets_pack_exactly(name, dtype, scale):
    d = load_dataset(name).train
    p = pack(d)
    assert p.codes.dtype == dtype and p.scale == scale
    idx = np.arange(0, len(d), 7)
    got, want = p.rows(idx), d.subset(idx)
    # bitwise, and with the loader's memory layout (convolution's path depends on it)
    assert torch.equal(got.x, want.x) and got.x.stride() == want.x.stride()
    assert torch.equal(got.y, want.y)


def test_rows_never_modify_read_only_codes():
    codes = np.arange(2 * 1 * 2 * 2, dtype=np.uint8).reshape(2, 1, 2, 2)
    codes.setflags(write=False)  # as an array mapped from Ray's object store
    p = Packed(codes, 255, np.array([0, 1]))
    x = p.rows(np.array([1])).x
    x += 1  # the rows are the caller's own
    assert codes[1, 0, 0, 0] == 4 and torch.equal(expand(torch.tensor([255], dtype=torch.uint8), 255),
                                                  torch.tensor([1.0]))


def test_attached_copy_gives_the_same_partitions_as_the_dataset():
    from fedsec.federation.env import dataset_of, local_data, partitions_of

    s = load_scenario(QUICK, BASE)
    try:
        shared.attach(shared.key_of(s), shared.build(s))
        assert shared.attached_keys() == [shared.key_of(s)]
        for pid in range(4):
            got = local_data(s, pid)
            want = dataset_of(s).train.subset(partitions_of(s)[pid])
            assert torch.equal(got.x, want.x) and torch.equal(got.y, want.y)
        other = s.replace(**{"run.seed": 1})  # another split: not served from this copy
        assert shared.partition(other, 0) is None
    finally:
        shared.detach_all()


def test_ray_actors_read_the_shared_copy_and_match_inline(tmp_path):
    from fedsec.federation import ray_engine

    a = run(load_scenario(QUICK, BASE + ['run.engine="inline"']), output=tmp_path)
    b = run(load_scenario(QUICK, BASE + ['run.engine="ray"']), output=tmp_path)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    import ray

    pool = ray_engine._POOL["pool"]
    key = shared.key_of(load_scenario(QUICK, BASE))
    got = ray.get([actor.__ray_call__.remote(lambda self: __import__("fedsec.federation.shared",
                                                                    fromlist=["x"]).attached_keys())
                   for actor in pool.actors])
    assert all(key in keys for keys in got)
