"""Trigger geometry and arithmetic (fedsec.data.triggers), on tiny tensors."""

import pytest
import torch

from fedsec.data.triggers import Trigger


def _support(t: Trigger, shape=(1, 8, 8)) -> set[tuple[int, int]]:
    return {(int(r), int(c)) for r, c in t.support(shape).nonzero().tolist()}


@pytest.mark.parametrize(
    "kw, cells",
    [
        ({"size": 2, "location": "top_left"}, {(0, 0), (0, 1), (1, 0), (1, 1)}),
        ({"size": 2, "location": "bottom_right", "margin": 1}, {(5, 5), (5, 6), (6, 5), (6, 6)}),
        ({"size": 2, "location": "top_right"}, {(0, 6), (0, 7), (1, 6), (1, 7)}),
        ({"size": 2, "location": "bottom_left"}, {(6, 0), (6, 1), (7, 0), (7, 1)}),
        ({"size": 2, "location": "center"}, {(3, 3), (3, 4), (4, 3), (4, 4)}),
        ({"size": 3, "location": (2, 4), "shape": "cross"}, {(2, 5), (3, 4), (3, 5), (3, 6), (4, 5)}),
    ],
)
def test_patch_writes_exactly_its_pixels(kw, cells):
    t = Trigger(kind="patch", value=0.75, **kw)
    x = torch.rand(2, 3, 8, 8)
    out = t.apply(x)
    assert _support(t) == cells
    changed = torch.zeros(8, 8, dtype=torch.bool)
    for r, c in cells:
        changed[r, c] = True
    assert torch.all(out[:, :, changed] == 0.75)  # every channel of every sample
    assert torch.equal(out[:, :, ~changed], x[:, :, ~changed])
    assert not torch.equal(out, x)  # a copy; the input is untouched
    assert torch.equal(t.apply(x[0]), out[0])  # (C, H, W) works too


def test_blend_arithmetic_and_fixed_pattern():
    t = Trigger(kind="blend", alpha=0.25, seed=3)
    x = torch.rand(4, 1, 8, 8)
    mask, pat = t.mask_and_pattern((1, 8, 8))
    assert torch.allclose(t.apply(x), 0.75 * x + 0.25 * pat)
    assert torch.equal(Trigger(kind="blend", seed=3).mask_and_pattern((1, 8, 8))[1], pat)
    assert not torch.equal(Trigger(kind="blend", seed=4).mask_and_pattern((1, 8, 8))[1], pat)
    given = torch.full((8, 8), 0.5)
    tg = Trigger(kind="blend", alpha=0.5, pattern=given.tolist())
    assert torch.allclose(tg.apply(torch.zeros(1, 3, 8, 8)), torch.full((1, 3, 8, 8), 0.25))


def test_pattern_trigger_uses_user_mask():
    mask = torch.zeros(8, 8)
    mask[0, 0], mask[7, 7] = 1.0, 0.5
    t = Trigger(kind="pattern", mask=mask.tolist(), pattern=torch.ones(8, 8).tolist())
    out = t.apply(torch.zeros(1, 1, 8, 8))
    assert out[0, 0, 0, 0] == 1.0 and out[0, 0, 7, 7] == 0.5 and float(out.sum()) == 1.5


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("base", [Trigger(size=4, location="top_left"), Trigger(size=3, shape="cross"),
                                  Trigger(kind="blend", alpha=0.3)])
def test_split_pieces_are_disjoint_and_cover_the_trigger(base, k):
    shape = (3, 8, 8)
    pieces = base.split(k)
    assert len(pieces) == k
    sup = [p.support(shape) for p in pieces]
    for i in range(k):
        assert sup[i].any()
        for j in range(i + 1, k):
            assert not (sup[i] & sup[j]).any()
    union = torch.stack(sup).any(0)
    assert torch.equal(union, base.support(shape))
    # stamping every piece in turn gives the global trigger
    x = torch.rand(2, *shape)
    y = x
    for p in pieces:
        y = p.apply(y)
    if base.kind == "patch":
        assert torch.equal(y, base.apply(x))
    # each piece alone only touches its own pixels, with the global trigger's values there
    for p, s in zip(pieces, sup):
        out = p.apply(x)
        assert torch.equal(out[:, :, ~s], x[:, :, ~s])
        assert torch.allclose(out[:, :, s], base.apply(x)[:, :, s])


def test_square_splits_into_row_bars():
    pieces = Trigger(size=4, location="top_left").split(4)
    for i, p in enumerate(pieces):
        assert _support(p) == {(i, c) for c in range(4)}


def test_split_rejects_more_pieces_than_pixels():
    with pytest.raises(ValueError, match="^k:"):
        Trigger(size=2).split(5)
    with pytest.raises(ValueError, match="^k:"):
        Trigger(size=2).split(0)


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"kind": "star"}, "kind"),
        ({"size": 0}, "size"),
        ({"size": True}, "size"),
        ({"location": "middle"}, "location"),
        ({"location": [1, -1]}, "location"),
        ({"margin": -1}, "margin"),
        ({"value": 2.0}, "value"),
        ({"value": "white"}, "value"),
        ({"alpha": 0.0}, "alpha"),
        ({"seed": -3}, "seed"),
        ({"kind": "pattern"}, "mask"),
        ({"kind": "pattern", "mask": [[2.0]], "pattern": [[1.0]]}, "mask"),
    ],
)
def test_bad_values_name_the_field(spec, field):
    with pytest.raises(ValueError, match=rf"^trigger\.{field}"):
        Trigger.from_spec(spec)


def test_unknown_field_is_named():
    with pytest.raises(ValueError, match=r"trigger\.colour: unknown"):
        Trigger.from_spec({"colour": 1})


def test_patch_that_does_not_fit_is_an_error():
    with pytest.raises(ValueError, match="size"):
        Trigger(size=9).apply(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="location"):
        Trigger(size=3, location=(6, 6)).apply(torch.zeros(1, 1, 8, 8))


def test_spec_round_trip():
    t = Trigger(size=2, location=(1, 2), shape="cross").split(3)[1]
    assert Trigger.from_spec(t.to_spec()) == t
