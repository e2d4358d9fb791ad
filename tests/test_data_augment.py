"""Training augmentation (per batch, training device, own seeded generator) and input normalisation."""

from __future__ import annotations

import pytest
import torch

from fedsec import load_scenario, run
from fedsec.data.augment import (
    AUGMENTATIONS,
    Normalize,
    attach_normalization,
    augmentation_name,
    augmenting,
    crop_shift,
    normalization,
    register_augmentation,
)
from fedsec.scenario import ScenarioError
from fedsec.seeding import generator

QUICK = "experiments/quickstart.toml"
SCENES = ['run.engine="inline"', 'data.dataset="digits_scenes"', "data.num_clients=4", "server.rounds=1",
          "client.epochs=1"]

if "identity_copy" not in AUGMENTATIONS:
    # An augmentation that changes nothing but is not "none": it runs the whole augmentation path.
    register_augmentation("identity_copy")(lambda x, g: x.clone())


def _reference_crop(x: torch.Tensor, gen: torch.Generator, padding: int, flip: bool) -> torch.Tensor:
    """Straightforward per-image version: pad, slice, maybe torch.flip (same draw order)."""
    b, _, h, w = x.shape
    off = torch.randint(0, 2 * padding + 1, (b, 2), generator=gen)
    coins = torch.rand(b, generator=gen) < 0.5 if flip else torch.zeros(b, dtype=torch.bool)
    out = []
    for i in range(b):
        p = torch.nn.functional.pad(x[i], (padding,) * 4)
        c = p[:, off[i, 0]:off[i, 0] + h, off[i, 1]:off[i, 1] + w]
        out.append(torch.flip(c, dims=[2]) if coins[i] else c)
    return torch.stack(out)


@pytest.mark.parametrize("flip", [False, True])
def test_crop_shift_matches_a_per_image_reference(flip):
    x = torch.rand(16, 3, 6, 5, generator=torch.Generator().manual_seed(1))
    got = crop_shift(x, generator(0, "t"), padding=2, flip=flip)
    want = _reference_crop(x, generator(0, "t"), padding=2, flip=flip)
    assert torch.equal(got, want)


def test_crop_shift_hand_worked():
    """One 2x2 image, padding 1: offset (0, 0) shows the zero border top-left; a flip mirrors."""
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])

    def seed_drawing(offset: list[int], coin: bool) -> int:  # a seed whose draws are the wanted ones
        for seed in range(1000):
            g = generator(seed, "hand")
            off = torch.randint(0, 3, (1, 2), generator=g).tolist()[0]
            if off == offset and bool(torch.rand(1, generator=g)[0] < 0.5) == coin:
                return seed
        raise AssertionError("no seed found")

    out = crop_shift(x, generator(seed_drawing([0, 0], False), "hand"), padding=1, flip=True)
    assert out.tolist() == [[[[0.0, 0.0], [0.0, 1.0]]]]
    out = crop_shift(x, generator(seed_drawing([1, 1], True), "hand"), padding=1, flip=True)
    assert out.tolist() == [[[[2.0, 1.0], [4.0, 3.0]]]]
    out = crop_shift(x, generator(seed_drawing([2, 1], True), "hand"), padding=1, flip=True)
    assert out.tolist() == [[[[4.0, 3.0], [0.0, 0.0]]]]
    assert torch.equal(x, torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]))  # input untouched


def test_augmentation_is_deterministic_under_a_seed_and_varies_with_round():
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    aug = AUGMENTATIONS.get("crop_flip")
    a = aug(x, generator(0, "augment", 1, 3))
    b = aug(x, generator(0, "augment", 1, 3))
    c = aug(x, generator(0, "augment", 2, 3))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_defaults_keep_existing_datasets_unaugmented():
    assert augmentation_name("digits", "auto") == "none"
    assert augmentation_name("digits_scenes", "auto") == "none"  # recorded ABD results stay valid
    assert augmentation_name("cifar10", "auto") == "crop_flip"
    assert augmentation_name("gtsrb", "auto") == "crop"  # a mirrored "turn left" is "turn right"
    assert normalization("digits", "auto") is None and normalization("cifar10", "none") is None
    assert normalization("cifar10", "auto")[0] == (0.4914, 0.4822, 0.4465)


def test_augmented_runs_are_reproducible_and_differ_from_plain(tmp_path):
    a = run(load_scenario(QUICK, SCENES + ['data.augment="crop_flip"']), output=tmp_path)
    b = run(load_scenario(QUICK, SCENES + ['data.augment="crop_flip"']), output=tmp_path)
    c = run(load_scenario(QUICK, SCENES + ['data.augment="none"']), output=tmp_path)
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_augmentation_draws_never_touch_the_clients_random_stream(tmp_path):
    """An augmentation that returns its input unchanged gives the bitwise-same model as none:
    batch order and every other draw come from the client's generator, untouched."""
    a = run(load_scenario(QUICK, SCENES + ['data.augment="identity_copy"']), output=tmp_path)
    c = run(load_scenario(QUICK, SCENES + ['data.augment="none"']), output=tmp_path)
    sa, sc = a.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sc[k]) for k in sa)


def test_augmentation_leaves_the_test_split_and_evaluation_alone():
    from fedsec.federation.env import dataset_of, new_model
    from fedsec.metrics import evaluate

    s = load_scenario(QUICK, SCENES + ['data.augment="crop_flip"'])
    test = dataset_of(s).test
    before = test.x.clone()
    model = new_model(s)
    plain = evaluate(model, test, 10)
    seen: list[torch.Tensor] = []
    model.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with augmenting(model, AUGMENTATIONS.get("crop_flip"), generator(0, "augment", 1, 0)):
        during = evaluate(model, test, 10)  # evaluation mode: no augmentation
        model.train()
        model(test.x[:4])  # training mode: augmented
    assert during == plain and torch.equal(test.x, before)
    assert torch.equal(seen[0], test.x[:1024]) and not torch.equal(seen[-1], test.x[:4])
    assert torch.equal(test.x, before)


def test_normalisation_is_part_of_the_model_input():
    from fedsec.models import build_model

    torch.manual_seed(0)
    net = build_model("cnn", in_shape=(3, 32, 32), num_classes=10)
    ref = build_model("cnn", in_shape=(3, 32, 32), num_classes=10)
    ref.load_state_dict(net.state_dict())
    attach_normalization(net, "cifar10", "auto")
    x = torch.rand(2, 3, 32, 32)
    mean, std = normalization("cifar10", "auto")
    by_hand = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    net.eval(), ref.eval()
    assert torch.allclose(net(x), ref(by_hand), atol=1e-6)
    assert list(net.state_dict()) == list(ref.state_dict())  # checkpoints keep their keys
    assert Normalize(mean, std)(net, (x,))[0].shape == x.shape
    plain = build_model("cnn", in_shape=(1, 8, 8), num_classes=10)
    assert attach_normalization(plain, "digits", "auto")._forward_pre_hooks == {}  # digits: bitwise as before


def test_scenario_validation_of_augment_and_normalize():
    with pytest.raises(ScenarioError) as e:
        load_scenario(QUICK, ['data.augment="crop_flp"', 'data.normalize="dataset"'])
    msgs = e.value.errors
    assert any(m.startswith("data.augment: got 'crop_flp'") and "did you mean 'crop_flip'" in m for m in msgs), msgs
    assert any(m.startswith("data.normalize: got 'dataset', expected 'auto' or 'none'") for m in msgs), msgs
    with pytest.raises(ScenarioError, match=r"data.augment: got 'crop', expected 'none' with run.vectorize = true"):
        load_scenario(QUICK, ['data.augment="crop"', "run.vectorize=true", 'run.engine="inline"'])
