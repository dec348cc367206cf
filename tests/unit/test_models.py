"""MAE shapes, masks, the encoder split and checkpoints."""

from __future__ import annotations

import pytest
import torch

from lethe import masks
from lethe.errors import CheckpointError
from lethe.models import MAE, FeatNet, FeatNetArch, MAEArch, auto_patch, load_checkpoint, save_checkpoint


def tiny(h: int = 28, w: int = 28, c: int = 1) -> MAE:
    torch.manual_seed(0)
    return MAE(
        MAEArch(h, w, c, auto_patch(h, w), dim=16, depth=1, heads=2, dec_dim=8, dec_depth=1, dec_heads=2)
    )


@pytest.mark.parametrize(
    ("h", "w", "c"), [(28, 28, 1), (8, 8, 1), (32, 32, 3), (64, 64, 3), (30, 30, 3), (28, 20, 1)]
)
def test_mae_shapes_follow_the_data(h: int, w: int, c: int) -> None:
    m = tiny(h, w, c)
    x = torch.rand(3, c, h, w)
    box = masks.box_mask(h, w, 0.43, m.mask_cell)
    assert m(x, box.expand(3, -1, -1, -1)).shape == (3, c, h, w)
    out = m.inpaint(x, box)
    assert out.shape == x.shape
    # visible pixels are kept exactly; only the hidden box is predicted
    assert torch.equal(out * (1 - box), x * (1 - box))
    n_hidden = int(m.token_mask(box).sum())
    assert m.encode(x, box).shape == (3, m.arch.num_tokens - n_hidden, 16)


def test_auto_patch_keeps_at_most_8x8_tokens() -> None:
    for side in (8, 16, 28, 32, 50, 64):
        p = auto_patch(side, side)
        assert -(-side // p) <= 8


def test_box_mask_is_centred_and_about_40_percent_of_each_side() -> None:
    m = masks.box_mask(28, 28, 12 / 28, 4)[0, 0]
    assert m.sum() == 144
    assert m[8:20, 8:20].all() and m[:8].sum() == 0 and m[20:].sum() == 0


def test_random_mask_hides_the_same_count_per_image() -> None:
    g = torch.Generator().manual_seed(0)
    m = masks.random_mask(5, 28, 28, 4, 0.5, g)
    per_image = m.flatten(1).sum(1)
    assert torch.all(per_image == per_image[0]) and per_image[0] == 24 * 16
    assert not torch.equal(m[0], m[1])


def test_encoder_and_decoder_parameters_partition_the_model() -> None:
    m = tiny()
    enc = {id(p) for p in m.encoder_parameters()}
    dec = [n for n, p in m.named_parameters() if id(p) not in enc]
    assert enc and dec
    assert all(n.startswith(("dec_", "mask_token", "head")) for n in dec)


def test_checkpoint_round_trip_is_bit_identical(tmp_path) -> None:
    m = tiny()
    path = save_checkpoint(tmp_path / "m.pt", m, {"role": "original"})
    back, meta = load_checkpoint(path, expected_kind="mae", expected_arch=m.arch.to_dict())
    assert meta == {"role": "original"}
    for (k, a), (_, b) in zip(m.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


def test_checkpoint_of_another_architecture_is_refused(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "f.pt", FeatNet(FeatNetArch(28, 28, 1, 10, 4, 8)))
    with pytest.raises(CheckpointError, match="another architecture.*expected mae.*got featnet"):
        load_checkpoint(path, expected_kind="mae")
    m = tiny()
    path = save_checkpoint(tmp_path / "m.pt", m)
    with pytest.raises(CheckpointError, match="differs in dim"):
        load_checkpoint(path, expected_kind="mae", expected_arch={**m.arch.to_dict(), "dim": 32})


def test_garbage_checkpoint_gives_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
