"""A user's own `transformers` ViT-MAE, unlearned as it is: from a save_pretrained folder, through
`lethe run`, back into the registry in the same format, and again from the registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_cli import assert_registered_source_unlearns, lethe  # the same checks as every family

from lethe.report import validate_report

# The user's model: trained by the user's own code (a subprocess, as their training job would be),
# a few steps on the 8x8 digits with ViT-MAE's own random masking, and saved with save_pretrained.
USER_TRAINING = """
import sys, torch
from sklearn.datasets import load_digits
from transformers import ViTMAEConfig, ViTMAEForPreTraining

torch.manual_seed(0)
x = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
config = ViTMAEConfig(
    image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=1,
    num_attention_heads=2, intermediate_size=64, decoder_hidden_size=16, decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2, decoder_intermediate_size=32,
)
model = ViTMAEForPreTraining(config)
opt = torch.optim.AdamW(model.parameters(), 1e-3)
for _ in range(40):
    loss = model(pixel_values=x[torch.randint(0, len(x), (64,))]).loss
    opt.zero_grad()
    loss.backward()
    opt.step()
model.save_pretrained(sys.argv[1])
"""


@pytest.fixture(scope="module")
def user_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("user") / "vit-mae"
    subprocess.run([sys.executable, "-c", USER_TRAINING, str(folder)], check=True, capture_output=True)
    return folder


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    # as transformers loads them (its files may keep older key names, mapped when loading)
    from transformers import ViTMAEForPreTraining

    return ViTMAEForPreTraining.from_pretrained(
        folder, local_files_only=True, use_safetensors=True
    ).state_dict()


@pytest.mark.slow
def test_a_save_pretrained_vit_mae_is_unlearned_and_handed_back_as_save_pretrained(
    tmp_path: Path, user_model: Path
) -> None:
    from lethe.tracking.model_format import download_pretrained

    work = tmp_path / "work"
    request = ("--dataset", "digits", "--forget-classes", "3")
    r = lethe(
        "run", "--preset", "smoke", "--family", "hf-vitmae", *request,
        "--source-model", str(user_model), "--workdir", str(work), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Loading weights" not in r.stderr and "Writing model shards" not in r.stderr
    report = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    validate_report(report)
    assert report["family"] == "hf-vitmae" and report["source_model"] == str(user_model)
    assert (report["mlflow"]["model_name"], report["mlflow"]["model_version"]) == ("lethe-hf-vitmae", "1")

    # The original is the user's model, weights unchanged; the oracle has the folder's architecture.
    user = _weights(user_model)
    original = torch.load(work / "models" / "original.pt", weights_only=True)
    assert all(torch.equal(original["state_dict"][f"hf.{k}"], v) for k, v in user.items())
    oracle = torch.load(work / "models" / "oracle.pt", weights_only=True)
    assert oracle["arch"] == original["arch"] and oracle["arch"]["patch"] == 2

    # The registered version carries a save_pretrained folder that transformers loads as it is: the
    # unlearned weights, encoder re-targeted, decoder bit-identical to the user's.
    folder = download_pretrained(
        "models:/lethe-hf-vitmae/1", report["mlflow"]["tracking_uri"], tmp_path / "dl"
    )
    state = _weights(folder)
    unlearned = torch.load(work / "models" / "unlearned.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(state[k], unlearned[f"hf.{k}"]) for k in state)
    decoder = [k for k in user if k.startswith("decoder.")]
    assert decoder and all(torch.equal(state[k], user[k]) for k in decoder)
    assert any(not torch.equal(state[k], user[k]) for k in user if k.startswith("vit.layers."))

    # ... and that registered version is the source of the next request, like every family's.
    assert_registered_source_unlearns(tmp_path, report, *request)


def test_a_folder_source_needs_a_family_with_a_folder_format(tmp_path: Path, user_model: Path) -> None:
    r = lethe(
        "run",
        "--preset",
        "smoke",
        "--source-model",
        str(user_model),
        "--workdir",
        str(tmp_path / "w"),
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert (
        "a save_pretrained folder as source_model needs family hf-vitmae or diffusers-inpaint, got 'mae'"
        in r.stderr
    )
    r = lethe(
        "run", "--preset", "smoke", "--family", "hf-vitmae", "--source-model", str(tmp_path / "none"),
        "--workdir", str(tmp_path / "w"), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2 and "is not a save_pretrained folder (no such directory)" in r.stderr
    assert not (tmp_path / "w").exists()


# A user's Palette-style inpainting model in diffusers: a UNet2DModel on (x_t, masked image, mask)
# trained a few DDPM steps on the digits, saved as unet/ + scheduler/.
USER_DIFFUSERS_TRAINING = """
import sys, torch
from diffusers import DDPMScheduler, UNet2DModel
from sklearn.datasets import load_digits

torch.manual_seed(0)
x0 = torch.tensor(load_digits().images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1  # [-1, 1]
unet = UNet2DModel(
    sample_size=8, in_channels=3, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=4, attention_head_dim=4,
)
sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
opt = torch.optim.AdamW(unet.parameters(), 1e-3)
for _ in range(30):
    x = x0[torch.randint(0, len(x0), (64,))]
    m = torch.zeros_like(x)
    m[:, :, 2:6, 2:6] = 1
    t, eps = torch.randint(0, 1000, (64,)), torch.randn_like(x)
    x_t = m * sched.add_noise(x, eps, t) + (1 - m) * x
    loss = (((unet(torch.cat([x_t, x * (1 - m), m], 1), t).sample - eps) * m) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
unet.save_pretrained(sys.argv[1] + "/unet")
sched.save_pretrained(sys.argv[1] + "/scheduler")
"""


@pytest.fixture(scope="module")
def user_diffusers_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("user") / "inpaint"
    subprocess.run(
        [sys.executable, "-c", USER_DIFFUSERS_TRAINING, str(folder)], check=True, capture_output=True
    )
    return folder


@pytest.mark.slow
def test_a_diffusers_inpainting_unet_is_unlearned_and_handed_back_in_its_format(
    tmp_path: Path, user_diffusers_model: Path
) -> None:
    from diffusers import DDPMScheduler, UNet2DModel

    from lethe.tracking.model_format import download_pretrained

    work = tmp_path / "work"
    request = ("--dataset", "digits", "--forget-classes", "3")
    r = lethe(
        "run", "--preset", "smoke", "--family", "diffusers-inpaint", *request,
        "--source-model", str(user_diffusers_model), "--workdir", str(work), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    validate_report(report)
    assert report["source_model"] == str(user_diffusers_model)
    assert report["sampler"] == {**report["sampler"], "name": "ddim (diffusers)", "steps": 4}
    user = UNet2DModel.from_pretrained(
        user_diffusers_model, subfolder="unet", low_cpu_mem_usage=False
    ).state_dict()
    original = torch.load(work / "models" / "original.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(original[f"unet.unet.{k}"], v) for k, v in user.items())

    # The registered version's save_pretrained copy: the unlearned UNet, its up path untouched.
    folder = download_pretrained(
        f"models:/{report['mlflow']['model_name']}/1", report["mlflow"]["tracking_uri"], tmp_path / "dl"
    )
    state = UNet2DModel.from_pretrained(folder, subfolder="unet", low_cpu_mem_usage=False).state_dict()
    assert (
        DDPMScheduler.from_pretrained(folder, subfolder="scheduler").config.beta_schedule
        == "squaredcos_cap_v2"
    )
    unlearned = torch.load(work / "models" / "unlearned.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(state[k], unlearned[f"unet.unet.{k}"]) for k in state)
    assert all(torch.equal(state[k], user[k]) for k in user if k.startswith(("up_blocks.", "conv_out.")))
    assert any(not torch.equal(state[k], user[k]) for k in user if k.startswith("down_blocks."))


@pytest.mark.slow
@pytest.mark.extended  # the registry path of folder families runs above with hf-vitmae
def test_a_registered_diffusers_inpaint_version_is_the_next_source(
    tmp_path: Path, user_diffusers_model: Path
) -> None:
    request = ("--dataset", "digits", "--forget-classes", "3")
    r = lethe(
        "run", "--preset", "smoke", "--family", "diffusers-inpaint", *request,
        "--source-model", str(user_diffusers_model), "--workdir", str(tmp_path / "work"), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert_registered_source_unlearns(
        tmp_path, json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text()), *request
    )
