"""The transformers ViT-MAE adapter: lethe's masks become its patch mask, its folder format round-trips."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from lethe import masks
from lethe.models.hf_vitmae import HFViTMAE, HFViTMAEArch, load_pretrained, save_pretrained, sincos_table


def _model(tiny_model, c: int = 1) -> HFViTMAE:
    return tiny_model("hf-vitmae", 16, 16, c).eval()


def test_vitmae_hides_exactly_the_cells_lethe_hides_and_keeps_their_order(tiny_model) -> None:
    m = _model(tiny_model)
    x = torch.rand(3, 1, 16, 16)
    for mask in (masks.box_mask(16, 16, 0.43, m.mask_cell), masks.border_mask(16, 16, 0.25, m.mask_cell)):
        mask = mask.expand(3, -1, -1, -1)
        hidden = m.token_mask(mask)  # (B, L)
        noise, n_hidden = m._noise(mask)
        with m._hiding(n_hidden):
            out = m.hf.vit(pixel_values=x, noise=noise)
        assert torch.equal(out.mask.bool(), hidden)  # ViT-MAE's 1 = removed
        # visible patches enter in position order, and the same call gives the same answer
        assert out.last_hidden_state.shape[1] == 1 + int((~hidden[0]).sum())
        assert torch.equal(m(x, mask, mode="encode"), m(x, mask, mode="encode"))
    assert m.hf.config.mask_ratio == 0.75  # the model's own setting is back after every call


def test_a_new_vitmae_knows_where_its_patches_are(tiny_model) -> None:
    # transformers 5 builds ViTMAEForPreTraining from a config with all-zero position tables: every
    # hidden patch then got the same prediction, and pretraining learnt only the mean image.
    m = _model(tiny_model)
    emb, dec = m.hf.vit.embeddings, m.hf.decoder
    grid = 16 // m.arch.patch
    assert torch.equal(emb.position_embeddings[0], sincos_table(grid, m.arch.hidden_size))
    assert torch.equal(dec.decoder_pos_embed[0], sincos_table(grid, m.arch.decoder_hidden_size))
    assert not emb.position_embeddings.requires_grad  # fixed, as ViT-MAE defines them
    assert emb.cls_token.abs().sum() > 0 and dec.mask_token.abs().sum() > 0
    mask = masks.box_mask(16, 16, 0.5, m.mask_cell)
    with torch.no_grad():
        out = m(torch.zeros(1, 1, 16, 16), mask, mode="predict")  # a blank image: only position differs
    hidden = out[0, 0][mask[0, 0].bool()]
    assert hidden.std() > 1e-3


def test_the_sin_cos_table_is_vitmaes_own_layout() -> None:
    # the column's [sin | cos] first, then the row's, a zero row for CLS: what pretrained ViT-MAE
    # checkpoints were trained with (transformers builds it rotated by half the width to match)
    from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding as build

    for grid, dim in ((7, 128), (4, 32)):
        ref = build(height=grid, width=grid, embed_dim=dim, cls_token=True)
        ref = torch.cat([ref[..., dim // 2 :], ref[..., : dim // 2]], dim=-1)
        assert torch.allclose(sincos_table(grid, dim), ref.reshape(1 + grid * grid, dim), atol=1e-6)
    t = sincos_table(3, 8)  # two frequencies per axis (1 and 1/100); patch (row 1, column 2) is index 5
    assert torch.equal(t[0], torch.zeros(8))
    col, row = torch.tensor([2.0, 2.0 / 100]).double(), torch.tensor([1.0, 1.0 / 100]).double()
    expected = torch.cat([col.sin(), col.cos(), row.sin(), row.cos()]).float()
    assert torch.allclose(t[1 + 5], expected, atol=1e-6)


def test_a_batch_that_hides_different_counts_is_refused(tiny_model) -> None:
    m = _model(tiny_model)
    mask = torch.cat([masks.box_mask(16, 16, 0.43, 4), torch.zeros(1, 1, 16, 16)])
    with pytest.raises(ValueError, match="same number of patches"):
        m(torch.rand(2, 1, 16, 16), mask, mode="encode")


def test_save_pretrained_loads_back_with_transformers_and_with_lethe(tiny_model, tmp_path) -> None:
    m = _model(tiny_model, c=3)
    x, mask = torch.rand(2, 3, 16, 16), masks.box_mask(16, 16, 0.43, m.mask_cell)
    folder = save_pretrained(m, tmp_path / "model")
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.bin"))
    hf = transformers.ViTMAEForPreTraining.from_pretrained(folder, local_files_only=True)
    ours = m.hf.state_dict()
    assert set(hf.state_dict()) == set(ours)
    assert all(torch.equal(v, ours[k]) for k, v in hf.state_dict().items())
    back = load_pretrained(folder)
    assert back.arch == m.arch
    assert torch.equal(back.inpaint(x, mask), m.inpaint(x, mask))


def test_a_folders_normalisation_is_applied_and_written_back(tiny_model, tmp_path) -> None:
    m = _model(tiny_model)
    folder = save_pretrained(m, tmp_path / "plain")
    pre = {"do_normalize": True, "image_mean": [0.5], "image_std": [0.25]}
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    normed = load_pretrained(folder)
    assert normed.arch.image_mean == [0.5] and normed.arch.image_std == [0.25]
    x, mask = torch.rand(2, 1, 16, 16), masks.box_mask(16, 16, 0.43, 4)
    # the ViT sees (x - 0.5) / 0.25, not x: its hidden states differ from the unnormalised model's
    assert not torch.allclose(normed(x, mask, mode="encode"), m(x, mask, mode="encode"))
    again = load_pretrained(save_pretrained(normed, tmp_path / "again"))
    assert again.arch == normed.arch


def test_folders_lethe_cannot_wrap_are_refused_in_one_line(tiny_model, tmp_path) -> None:
    m = _model(tiny_model)
    with pytest.raises(ValueError, match="no config.json"):
        load_pretrained(tmp_path)
    folder = save_pretrained(m, tmp_path / "m")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="no .safetensors weights"):
        load_pretrained(folder)
    cfg = m.hf.config
    cfg.norm_pix_loss = True
    with pytest.raises(ValueError, match="norm_pix_loss"):
        HFViTMAEArch.from_hf(cfg)
    with pytest.raises(ValueError, match="patch .5. must divide the image side .16."):
        HFViTMAEArch(height=16, width=16, channels=1, patch=5)
