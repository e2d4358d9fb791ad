import numpy as np
import pytest
import torch

from fedsec.data import PARTITIONERS, load_dataset, partition
from fedsec.models import MODELS, build_model


@pytest.fixture(scope="module")
def labels():
    return load_dataset("digits").train.y.numpy()


def test_digits_split_is_fixed_and_in_range():
    d = load_dataset("digits")
    assert d.in_shape == (1, 8, 8) and d.num_classes == 10
    assert (len(d.train), len(d.test)) == (1437, 360)
    assert 0.0 <= float(d.train.x.min()) and float(d.train.x.max()) <= 1.0
    assert sorted(set(d.test.y.tolist())) == list(range(10))


def test_digits_scenes_composes_each_digit_on_a_photo():
    from fedsec.data.datasets import digits_scenes

    d, base = load_dataset("digits_scenes"), load_dataset("digits")
    assert d.in_shape == (3, 32, 32) and d.num_classes == 10
    assert torch.equal(d.train.y, base.train.y) and torch.equal(d.test.y, base.test.y)
    assert 0.0 <= float(d.train.x.min()) and float(d.train.x.max()) <= 1.0
    # fixed draws: an independent build (no cache) gives the same images
    again = digits_scenes(root=None, download=False)
    assert torch.equal(again.train.x, d.train.x) and torch.equal(again.test.x, d.test.x)
    # the digit is the pixelwise maximum over a photo dimmed to <= 0.5, so the pixels above
    # 0.5 on every channel are exactly the upscaled digit's pixels above 0.5
    ink = torch.nn.functional.interpolate(base.train.x, size=(20, 20), mode="bilinear", align_corners=False)
    assert torch.equal((d.train.x > 0.5).all(1).flatten(1).sum(1), (ink > 0.5).flatten(1).sum(1))
    # backgrounds differ between images (random crops), so the photo carries no label
    assert not torch.equal(d.train.x[0, :, :4, :4], d.train.x[1, :, :4, :4])


@pytest.mark.parametrize("name", PARTITIONERS.names())
def test_partitions_disjoint_and_deterministic(name, labels):
    parts = partition(name, labels, 10, seed=3)
    flat = np.concatenate(parts)
    assert len(flat) == len(np.unique(flat)), "partitions overlap"
    assert all(len(p) > 0 for p in parts)
    again = partition(name, labels, 10, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(name, labels, 10, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


@pytest.mark.parametrize("name", ["iid", "dirichlet"])
def test_partitions_cover_the_data(name, labels):
    assert len(np.concatenate(partition(name, labels, 10, seed=0))) == len(labels)


def test_shards_give_few_classes_and_near_full_coverage(labels):
    parts = partition("shards", labels, 10, seed=0, shards_per_client=2)
    # Flower's ShardPartitioner drops the shards left over after an even deal.
    assert len(np.concatenate(parts)) >= 0.9 * len(labels)
    assert max(len(set(labels[p])) for p in parts) <= 4
    assert np.mean([len(set(labels[p])) for p in parts]) <= 3


def _label_skew(parts, labels):
    """Mean total-variation distance between client label histograms and the global one."""
    glob = np.bincount(labels, minlength=10) / len(labels)
    return np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=10) / len(p) - glob).sum() for p in parts])


def test_dirichlet_skew_grows_as_alpha_shrinks(labels):
    skew = [_label_skew(partition("dirichlet", labels, 10, seed=0, alpha=a), labels) for a in (100.0, 1.0, 0.1)]
    assert skew[0] < skew[1] < skew[2]
    assert _label_skew(partition("iid", labels, 10, seed=0), labels) < skew[1]


def test_partition_rejects_bad_arguments(labels):
    with pytest.raises(ValueError, match="alpha must be > 0"):
        partition("dirichlet", labels, 4, seed=0, alpha=0)
    with pytest.raises(KeyError, match="valid names: dirichlet, iid, shards"):
        partition("zipf", labels, 4, seed=0)


@pytest.mark.parametrize("name", MODELS.names())
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_every_model_forward_on_every_input_size(name, shape):
    kw = {"k": 1} if name == "wrn" else {}
    model = build_model(name, in_shape=shape, num_classes=7, **kw)
    out = model(torch.rand(2, *shape))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_unknown_model_and_parameter():
    with pytest.raises(KeyError, match="did you mean 'cnn'"):
        build_model("cn", in_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(TypeError, match=r"unknown parameter\(s\) \['depthh'\]"):
        build_model("mlp", in_shape=(1, 8, 8), num_classes=10, depthh=2)


def test_missing_torchvision_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST not found under data.root="):
        load_dataset("mnist", str(tmp_path))


def _write_idx(path, arr):
    import struct

    arr = np.asarray(arr, dtype=np.uint8)
    magic = 0x0800 | arr.ndim  # unsigned byte, ndim dimensions
    path.write_bytes(struct.pack(">I", magic) + b"".join(struct.pack(">I", n) for n in arr.shape)
                     + arr.tobytes())


def test_torchvision_mnist_from_local_root(tmp_path):
    """A tiny MNIST written in the real IDX format, read by torchvision's own loader."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("t10k", 5)):
        _write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, n))
    d = load_dataset("mnist", str(tmp_path))
    assert d.in_shape == (1, 28, 28) and (len(d.train), len(d.test)) == (12, 5)
    assert d.train.x.dtype == torch.float32 and float(d.train.x.max()) <= 1.0
