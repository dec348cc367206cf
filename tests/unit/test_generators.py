"""GAN / VAE shapes follow the data; pretraining losses; checkpoints of generator families."""

from __future__ import annotations

import pytest
import torch

from lethe.catalogue import family_kind
from lethe.errors import CheckpointError
from lethe.models import (
    GAN,
    VAE,
    GANArch,
    GeneratorFamily,
    VAEArch,
    get_family,
    load_checkpoint,
    save_checkpoint,
)

SHAPES = [(28, 28, 1), (32, 32, 3), (64, 64, 3), (8, 8, 1), (30, 20, 3)]


@pytest.mark.parametrize(("h", "w", "c"), SHAPES)
@pytest.mark.parametrize("family", ["gan", "vae"])
def test_samples_have_the_data_shape_and_range(family: str, h: int, w: int, c: int) -> None:
    fam = get_family(family)
    assert isinstance(fam, GeneratorFamily) and fam.kind == "generator"
    arch = fam.build_arch({"latent_dim": 8, "ch": 8, "disc_ch": 8}, h, w, c)
    model = fam.model_cls(fam.arch_cls(**arch))
    with torch.no_grad():
        x = model.sample(torch.randn(3, model.latent_dim))
    assert x.shape == (3, c, h, w)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    gen = torch.Generator().manual_seed(0)
    for group, params in model.train_groups().items():
        loss = model.group_loss(group, torch.rand(4, c, h, w), gen)
        assert loss.ndim == 0 and torch.isfinite(loss)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        assert any(g is not None for g in grads)


def test_gan_groups_split_generator_and_discriminator() -> None:
    m = GAN(GANArch(16, 16, 1, latent_dim=8, ch=8, disc_ch=8))
    groups = m.train_groups()
    assert list(groups) == ["disc", "gen"]
    ids = [{id(p) for p in v} for v in groups.values()]
    assert not ids[0] & ids[1]
    assert {id(p) for p in m.generator_parameters()} == ids[1]


def test_sample_of_one_latent_does_not_depend_on_its_batch() -> None:
    m = GAN(GANArch(16, 16, 1, latent_dim=8, ch=8, disc_ch=8)).train()
    z = torch.randn(4, 8)
    assert torch.allclose(m.sample(z)[:1], m.sample(z[:1]), atol=1e-6)


def test_family_kinds() -> None:
    assert family_kind("gan") == family_kind("vae") == "generator"
    assert family_kind("mae") == "i2i"


def test_bad_arch_values_fail_clearly() -> None:
    with pytest.raises(ValueError, match="GAN loss"):
        GANArch(28, 28, 1, loss="wasserstein")
    with pytest.raises(ValueError, match="4..64"):
        VAEArch(128, 128, 3)


def test_checkpoint_round_trip_and_wrong_family(tmp_path) -> None:
    torch.manual_seed(0)
    m = VAE(VAEArch(28, 28, 1, latent_dim=8, ch=8, beta=0.5))
    path = save_checkpoint(tmp_path / "vae.pt", m, {"feature": "Trouser"})
    loaded, meta = load_checkpoint(path, expected_kind="vae")
    assert isinstance(loaded, VAE) and loaded.arch.beta == 0.5 and meta == {"feature": "Trouser"}
    z = torch.randn(2, 8)
    assert torch.equal(loaded.sample(z), m.sample(z))
    with pytest.raises(CheckpointError, match="another architecture"):
        load_checkpoint(path, expected_kind="gan")
    g = GAN(GANArch(28, 28, 1, latent_dim=8, ch=8, disc_ch=8))
    gpath = save_checkpoint(tmp_path / "gan.pt", g)
    loaded_g, _ = load_checkpoint(gpath, expected_kind="gan")  # spectral-norm parametrisations load too
    assert torch.equal(loaded_g.sample(z), g.sample(z))
