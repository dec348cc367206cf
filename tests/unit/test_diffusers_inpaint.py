"""The diffusers inpainting adapter: the encoder is the UNet's own down path, sampling is diffusers'
DDIM, and the folder format (unet/ + scheduler/) round-trips."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from lethe import masks
from lethe.models.diffusers_inpaint import (
    DiffusersInpaint,
    DiffusersInpaintArch,
    load_pretrained,
    save_pretrained,
)


def _model(tiny_model, c: int = 1) -> DiffusersInpaint:
    return tiny_model("diffusers-inpaint", 16, 16, c).eval()


def test_the_encoder_features_are_the_unets_own_down_path_and_mid_block(tiny_model) -> None:
    m = _model(tiny_model)
    u = m.unet.unet
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3, 700])
    seen = {}
    u.mid_block.register_forward_hook(lambda _m, _i, out: seen.setdefault("mid", out))
    with torch.no_grad():
        u(x, t)
        feats = m.unet(x, t, features_only=True)
    assert torch.equal(feats[-1], seen["mid"])
    # one activation for conv_in, one per resnet and downsampler of every down block, one for the mid
    per_block = [len(b.resnets) + len(b.downsamplers or []) for b in u.down_blocks]
    assert len(feats) == 1 + sum(per_block) + 1
    enc = {id(p) for p in m.encoder_parameters()}
    assert all(
        id(p) not in enc
        for p in [*u.time_embedding.parameters(), *u.up_blocks.parameters(), *u.conv_out.parameters()]
    )


def test_inpainting_runs_diffusers_ddim_for_the_configured_steps(tiny_model) -> None:
    m = _model(tiny_model)
    calls = []
    m.unet.unet.register_forward_hook(lambda *_: calls.append(1))
    x, mask = torch.rand(2, 1, 16, 16), masks.box_mask(16, 16, 0.43, m.mask_cell)
    out = m.inpaint(x, mask, seed=1)
    assert len(calls) == m.arch.sample_steps == 3
    assert torch.equal(out, m.inpaint(x, mask, seed=1)) and not torch.equal(out, m.inpaint(x, mask, seed=2))
    assert m.sampler_info()["name"] == "ddim (diffusers)"


def test_save_pretrained_loads_back_with_diffusers_and_with_lethe(tiny_model, tmp_path) -> None:
    m = _model(tiny_model, c=3)
    folder = save_pretrained(m, tmp_path / "model")
    unet = UNet2DModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
    sched = DDPMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True)
    ours = m.unet.unet.state_dict()
    assert all(torch.equal(v, ours[k]) for k, v in unet.state_dict().items())
    assert sched.config.num_train_timesteps == m.arch.timesteps
    back = load_pretrained(folder)
    # the sampler's steps are lethe's evaluation setting (model.diffusers_inpaint.sample_steps), not the folder's
    assert back.arch == dataclasses.replace(m.arch, sample_steps=10)
    back.arch = m.arch
    x, mask = torch.rand(2, 3, 16, 16), masks.box_mask(16, 16, 0.43, m.mask_cell)
    assert torch.equal(back.inpaint(x, mask), m.inpaint(x, mask))


def test_models_lethe_cannot_drive_are_refused_in_one_line(tiny_model, tmp_path) -> None:
    arch = _model(tiny_model).arch.to_dict()
    with pytest.raises(ValueError, match="needs a UNet2DModel with in_channels 3 .* got 3 and 3"):
        DiffusersInpaintArch(**{**arch, "unet": {**arch["unet"], "out_channels": 3}})
    with pytest.raises(ValueError, match="epsilon-predicting scheduler, got 'v_prediction'"):
        DiffusersInpaintArch(
            **{**arch, "scheduler": {**arch["scheduler"], "prediction_type": "v_prediction"}}
        )
    folder = save_pretrained(_model(tiny_model), tmp_path / "m")
    for f in (folder / "unet").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(ValueError, match="no .safetensors weights"):
        load_pretrained(folder)
    with pytest.raises(ValueError, match="no unet/config.json"):
        load_pretrained(tmp_path)
