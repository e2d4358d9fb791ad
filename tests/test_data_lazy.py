"""A torch Dataset read on demand (fedsec.data.lazy): a federation over image files on disk
trains exactly as it does on the same images held in memory, and a client call reads only
its own partition's files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

from fedsec import load_scenario, run
from fedsec.data import DatasetData, DatasetSplits, TensorData, load_dataset, register_dataset
from fedsec.federation.env import partitions_of

QUICK = Path(__file__).resolve().parents[1] / "experiments" / "quickstart.toml"


class Counting(torch.utils.data.Dataset):
    """An ImageFolder that records which items were read (to show what a client touches)."""

    def __init__(self, root: Path) -> None:
        self.folder = ImageFolder(str(root))
        self.targets = self.folder.targets
        self.reads: list[int] = []

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int):
        self.reads.append(i)
        return self.folder[i]


def write_folder(root: Path, split: str, n: int, offset: int) -> None:
    """sklearn digits as 8x8 grayscale PNG files, one folder per class (ImageFolder's layout)."""
    ds = load_dataset("digits")
    data = ds.train if split == "train" else ds.test
    for i in range(n):
        k = offset + i
        label = int(data.y[k])
        pixels = (data.x[k, 0] * 255).round().to(torch.uint8).numpy()
        folder = root / split / f"{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, mode="L").save(folder / f"{k:05d}.png")


_SOURCES: dict[str, Counting] = {}


def _folder_splits(root: Path, lazy: bool) -> DatasetSplits:
    train = Counting(root / "train")
    _SOURCES[str(root)] = train
    tr = DatasetData.from_dataset(train)
    te = DatasetData.from_dataset(ImageFolder(str(root / "test")))
    if not lazy:
        tr, te = tr.materialize(), te.materialize()
    return DatasetSplits("png_digits", tr, te, 10)


register_dataset("png_digits_lazy")(lambda root, download: _folder_splits(root, True))
register_dataset("png_digits_memory")(lambda root, download: _folder_splits(root, False))


@pytest.fixture(scope="module")
def png_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("png")
    write_folder(root, "train", 400, 0)
    write_folder(root, "test", 120, 0)
    return root


def test_dataset_data_reads_rows_as_torchvision_does(png_root):
    data = DatasetData.from_dataset(ImageFolder(str(png_root / "train")))
    assert len(data) == 400 and data.in_shape == (3, 8, 8)  # ImageFolder opens PNGs as RGB
    rows = data.subset(torch.tensor([5, 0, 5]))
    assert isinstance(rows, TensorData) and rows.x.dtype == torch.float32
    img, label = ImageFolder(str(png_root / "train"))[5]
    expected = torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 255
    assert torch.allclose(rows.x[0], expected, atol=1e-7) and torch.equal(rows.x[0], rows.x[2])
    assert rows.y.tolist() == [label, int(data.y[0]), label]
    with pytest.raises(AttributeError, match="read on demand"):
        data.x
    with pytest.raises(IndexError, match=r"\[0, 400\)"):
        data.subset([400])
    with pytest.raises(ValueError, match="label 0 differs"):
        DatasetData.from_dataset(ImageFolder(str(png_root / "train")), labels=[1] * 400).subset([0])
    with pytest.raises(TypeError, match="map-style torch Dataset"):
        DatasetData.from_dataset(42)


def test_decoding_workers_give_the_same_rows(png_root):
    idx = torch.randperm(400, generator=torch.Generator().manual_seed(0))[:50]
    a = DatasetData.from_dataset(ImageFolder(str(png_root / "train"))).subset(idx)
    b = DatasetData.from_dataset(ImageFolder(str(png_root / "train")), workers=2, batch_size=7).subset(idx)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


@pytest.mark.parametrize("vectorize", [False, True])
def test_a_federation_on_files_read_on_demand_equals_one_in_memory(png_root, tmp_path, vectorize):
    sets = ['run.engine="inline"', "data.num_clients=5", "server.rounds=2", "client.epochs=1",
            f"run.vectorize={str(vectorize).lower()}",
            "server.fraction_train=0.6", f'data.root="{png_root}"', f'run.output="{tmp_path}"',
            'attack=[{behaviour="badnets", partitions=[0]}]']
    mem = run(load_scenario(QUICK, sets + ['data.dataset="png_digits_memory"']))
    s = load_scenario(QUICK, sets + ['data.dataset="png_digits_lazy"'])
    load_dataset.cache_clear()
    lazy = run(s)
    sa, sb = mem.model.state_dict(), lazy.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert [r["clean_acc"] for r in mem.history] == [r["clean_acc"] for r in lazy.history]
    # Each client call read its own partition's files and nothing else; the training set
    # was never read whole.
    parts = partitions_of(s)
    expected = [int(i) for row in lazy.history for p in row["sampled"] for i in parts[p]]
    source = _SOURCES[str(png_root)]
    assert sorted(source.reads[1:]) == sorted(expected)  # reads[0]: from_dataset's shape probe


def test_the_ray_engine_does_not_copy_a_set_read_on_demand(png_root):
    from fedsec.federation import shared

    s = load_scenario(QUICK, ['data.dataset="png_digits_lazy"', f'data.root="{png_root}"'])
    assert not shared.shareable(s)
    assert shared.shareable(load_scenario(QUICK, []))
