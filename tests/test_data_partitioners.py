"""Any flwr-datasets partitioner by name (``flwr:<Class>``), natural-id partitions, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsec import load_scenario
from fedsec.data import TensorData, load_dataset, register_dataset
from fedsec.data.datasets import DATASETS, DatasetSplits
from fedsec.data.natural import NATURAL_IDS, natural_ids, register_natural_ids, track_of
from fedsec.data.partition import flwr_partitioners, partition
from fedsec.scenario import ScenarioError

QUICK = "experiments/quickstart.toml"
INLINE = 'run.engine="inline"'
WRITERS = 5


def _synthetic_writers(root, download) -> DatasetSplits:
    """60 training images by 5 writers (12 each, interleaved), 8x8 grey, 3 classes."""
    g = torch.Generator().manual_seed(0)
    n = 60
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.arange(n) % 3
    return DatasetSplits("writers_synth", TensorData(x, y), TensorData(x[:15].clone(), y[:15].clone()), 3)


def _writer_of() -> np.ndarray:
    return (np.arange(60) * 7) % WRITERS  # every writer has examples of every class


if "writers_synth" not in DATASETS:
    register_dataset("writers_synth")(_synthetic_writers)
if "writers_synth" not in NATURAL_IDS:
    register_natural_ids("writers_synth")(lambda root, download: {"writer": _writer_of()})


def test_flwr_partitioner_by_name_is_flowers_own_split():
    """``flwr:PathologicalPartitioner`` gives exactly what flwr-datasets gives for the same
    table and seed (independent reference: the class called directly)."""
    from datasets import Dataset
    from flwr_datasets.partitioner import PathologicalPartitioner

    labels = load_dataset("digits").train.y.numpy()
    got = partition("flwr:PathologicalPartitioner", labels, 5, seed=7, num_classes_per_partition=2)
    ref = PathologicalPartitioner(num_partitions=5, partition_by="label", num_classes_per_partition=2, seed=7)
    ref.dataset = Dataset.from_dict({"label": labels, "idx": np.arange(len(labels))})
    want = [np.sort(np.asarray(ref.load_partition(i)["idx"])) for i in range(5)]
    assert all(np.array_equal(a, b) for a, b in zip(got, want))
    assert all(len(set(labels[p].tolist())) <= 2 for p in got)  # the pathological property


def test_flwr_partitioner_in_a_scenario_runs(tmp_path):
    from fedsec import run
    from fedsec.federation.env import partitions_of

    s = load_scenario(QUICK, [INLINE, "data.num_clients=4", "server.rounds=1", "client.epochs=1",
                              'data.partitioner="flwr:ShardPartitioner"',
                              "data.partitioner_params={num_shards_per_partition = 3, keep_incomplete_shard = true}"])
    parts = partitions_of(s)
    assert len(parts) == 4 and len(np.unique(np.concatenate(parts))) == sum(len(p) for p in parts)
    r = run(s, output=tmp_path)
    assert r.history[0]["sampled"] == [0, 1, 2, 3]


def test_flwr_partitioner_errors_name_the_field():
    with pytest.raises(ScenarioError) as e:
        load_scenario(QUICK, ['data.partitioner="flwr:PathologicalPartitioner"',
                              "data.partitioner_params={num_classes_per_partiton = 2}"])
    msgs = e.value.errors
    assert any(m.startswith("data.partitioner_params.num_classes_per_partiton: unknown parameter of "
                            "PathologicalPartitioner") for m in msgs), msgs
    assert any(m.startswith("data.partitioner_params.num_classes_per_partition: required") for m in msgs), msgs
    with pytest.raises(ScenarioError, match=r"data.partitioner: got 'flwr:Patological', expected .*"
                                            r"'flwr:PathologicalPartitioner'"):
        load_scenario(QUICK, ['data.partitioner="flwr:Patological"'])
    assert "flwr:NaturalIdPartitioner" in flwr_partitioners()
    assert "flwr:VerticalEvenPartitioner" not in flwr_partitioners()  # splits columns, not rows


def test_a_partitioner_that_makes_another_count_is_an_error():
    labels = load_dataset("digits").train.y.numpy()
    with pytest.raises(ValueError, match=r"NaturalIdPartitioner made 10 partitions, but data.num_clients = 4"):
        partition("flwr:NaturalIdPartitioner", labels, 4, seed=0, partition_by="label")


NATURAL = ['data.partitioner="flwr:NaturalIdPartitioner"', 'data.partitioner_params={partition_by = "writer"}']


def test_natural_partition_gives_each_client_one_writer():
    """Independent reference: the examples of each writer, writers in sorted order."""
    from fedsec.federation.env import partitions_of

    s = load_scenario(QUICK, [INLINE, 'data.dataset="writers_synth"', f"data.num_clients={WRITERS}", *NATURAL])
    writer = _writer_of()
    want = [np.flatnonzero(writer == w) for w in sorted(set(writer.tolist()))]
    got = partitions_of(s)
    assert len(got) == WRITERS and all(np.array_equal(a, b) for a, b in zip(got, want))
    assert [len(p) for p in got] == [12] * WRITERS


def test_natural_partition_federation_runs(tmp_path):
    from fedsec import run

    s = load_scenario(QUICK, [INLINE, 'data.dataset="writers_synth"', f"data.num_clients={WRITERS}", *NATURAL,
                              "server.rounds=1", "client.epochs=1", 'model.name="mlp"'])
    r = run(s, output=tmp_path)
    assert r.history[0]["sampled"] == list(range(WRITERS)) and r.history[0]["failed"] == []
    assert 0.0 <= r.history[0]["clean_acc"] <= 1.0


def test_natural_partition_errors():
    labels = np.arange(60) % 3
    cols = {"writer": _writer_of()}
    with pytest.raises(ValueError, match=r"NaturalIdPartitioner made 5 partitions, but data.num_clients = 4: "
                                         r"set data.num_clients = 5"):
        partition("flwr:NaturalIdPartitioner", labels, 4, seed=0, columns=cols, partition_by="writer")
    with pytest.raises(ValueError, match=r"partition_by: got 'user', expected one of \['label', 'writer'\]"):
        partition("flwr:NaturalIdPartitioner", labels, 5, seed=0, columns=cols, partition_by="user")
    assert natural_ids("digits") == {}  # the bundled digits carry no writer


def test_gtsrb_tracks_follow_torchvisions_file_order(tmp_path):
    """Track ids from GTSRB's file names, in the order torchvision's loader walks them
    (a fake tree of empty .ppm files: only the names are read)."""
    from torchvision.datasets.folder import make_dataset

    train = tmp_path / "gtsrb" / "GTSRB" / "Training"
    names = {"00000": ["00000_00000.ppm", "00000_00001.ppm", "00001_00000.ppm"],
             "00001": ["00000_00000.ppm", "00003_00029.ppm"]}
    for cls, files in names.items():
        (train / cls).mkdir(parents=True)
        for f in files:
            (train / cls / f).write_bytes(b"")
    cols = natural_ids("gtsrb", str(tmp_path))
    assert cols["track"].tolist() == [0, 0, 1, 100000, 100003]
    assert [track_of(p, t) for p, t in make_dataset(str(train), extensions=(".ppm",))] == cols["track"].tolist()
