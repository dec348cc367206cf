"""The model section: one typed section per model family (MAE, VQGAN, diffusion, hf-vitmae, GAN, VAE)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from lethe.catalogue import section_key
from lethe.config.base import _Strict


class MAEConfig(_Strict):
    """ViT masked autoencoder; the image shape and patch size come from the data."""

    dim: int = Field(128, ge=8)
    depth: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    dec_dim: int = Field(64, ge=8)
    dec_depth: int = Field(2, ge=1)
    dec_heads: int = Field(4, ge=1)
    patch: int | None = Field(None, ge=1, description="None: chosen from the image size (<= 8x8 tokens)")

    @model_validator(mode="after")
    def _heads_divide(self) -> MAEConfig:
        _check_heads(self.dim, self.heads, "dim", "heads")
        _check_heads(self.dec_dim, self.dec_heads, "dec_dim", "dec_heads")
        return self


class VQGANConfig(_Strict):
    """VQ tokenizer (conv encoder / codebook / conv decoder, adversarial + perceptual training) and a
    MAGE-style masked-token transformer decoded with MaskGIT. Token grid <= 8x8 from the data."""

    # tokenizer
    ch: int = Field(16, ge=4, description="tokenizer base channels (doubled after the first stage)")
    downsample: int | None = Field(None, ge=0, le=4, description="stride-2 stages; None: <= 8x8 tokens")
    codebook_size: int = Field(256, ge=2)
    code_dim: int = Field(32, ge=2)
    codebook_update: Literal["ema", "gradient"] = "ema"
    ema_decay: float = Field(0.99, gt=0, lt=1)
    commitment: float = Field(0.25, ge=0)
    perceptual_weight: float = Field(0.1, ge=0, description="frozen random-conv feature loss (see vqgan.py)")
    adv_weight: float = Field(0.1, ge=0)
    adv_start_step: int = Field(200, ge=0, description="tokenizer steps before the discriminator joins")
    disc_ch: int = Field(16, ge=4)
    tokenizer_share: float = Field(0.4, gt=0, lt=1, description="share of pretrain.epochs for the tokenizer")
    # token transformer
    dim: int = Field(128, ge=8)
    depth: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(2.0, gt=0)
    dec_dim: int = Field(64, ge=8)
    dec_depth: int = Field(2, ge=1)
    dec_heads: int = Field(4, ge=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    # MaskGIT sampler
    decode_steps: int = Field(8, ge=1)
    temperature: float = Field(1.0, ge=0, description="token sampling temperature; 0 = greedy")
    choice_temperature: float = Field(2.0, ge=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> VQGANConfig:
        _check_heads(self.dim, self.heads, "dim", "heads")
        _check_heads(self.dec_dim, self.dec_heads, "dec_dim", "dec_heads")
        return self


class DiffusionConfig(_Strict):
    """Palette-style conditional inpainting DDPM with a small UNet, sampled with DDIM."""

    # The UNet runs at half resolution (2x2 space-to-depth): at 28x28 that costs about what the MAE
    # costs per image on CPU, where a full-resolution UNet of the same width costs ~2.5x more.
    patch: int = Field(
        2, ge=1, le=4, description="space-to-depth factor: the UNet runs at 1/patch resolution"
    )
    ch: int = Field(32, ge=4, description="UNet base channels")
    mults: list[int] = Field(default_factory=lambda: [1, 2], min_length=1, max_length=4)
    res_blocks: int = Field(1, ge=1)
    attention: bool = True
    timesteps: int = Field(1000, ge=2)
    schedule: Literal["cosine", "linear"] = "cosine"
    sample_steps: int = Field(10, ge=1, description="DDIM steps at evaluation")
    eta: float = Field(0.0, ge=0, le=1, description="0 = deterministic DDIM")

    @model_validator(mode="after")
    def _steps(self) -> DiffusionConfig:
        if self.sample_steps > self.timesteps:
            raise ValueError(
                f"sample_steps ({self.sample_steps}) must not exceed timesteps ({self.timesteps})"
            )
        if any(m < 1 for m in self.mults):
            raise ValueError("mults must be positive")
        return self


class HFViTMAEConfig(_Strict):
    """`transformers` ViTMAEForPreTraining, built from these fields when lethe trains it (no
    --source-model), else read from the source folder's config.json; images must be square."""

    hidden_size: int = Field(128, ge=8)
    num_hidden_layers: int = Field(4, ge=1)
    num_attention_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(256, ge=8)
    decoder_hidden_size: int = Field(64, ge=8)
    decoder_num_hidden_layers: int = Field(2, ge=1)
    decoder_num_attention_heads: int = Field(4, ge=1)
    decoder_intermediate_size: int = Field(128, ge=8)
    patch: int | None = Field(
        None, ge=1, description="None: the smallest divisor of the side giving <= 8x8 patches"
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> HFViTMAEConfig:
        _check_heads(self.hidden_size, self.num_attention_heads, "hidden_size", "num_attention_heads")
        _check_heads(
            self.decoder_hidden_size,
            self.decoder_num_attention_heads,
            "decoder_hidden_size",
            "decoder_num_attention_heads",
        )
        return self


class DiffusersInpaintConfig(_Strict):
    """`diffusers` UNet2DModel on (x_t, masked image, mask) with a DDPM schedule, sampled with
    diffusers' DDIM; used when lethe trains it (a source model brings its own unet / scheduler)."""

    block_out_channels: list[int] = Field(default_factory=lambda: [32, 64], min_length=1, max_length=4)
    layers_per_block: int = Field(1, ge=1)
    attention: bool = Field(True, description="attention in the down / up blocks below the top level")
    norm_num_groups: int = Field(8, ge=1)
    attention_head_dim: int = Field(8, ge=1)
    timesteps: int = Field(1000, ge=2)
    beta_schedule: Literal["squaredcos_cap_v2", "linear", "scaled_linear"] = "squaredcos_cap_v2"
    sample_steps: int = Field(10, ge=1, description="DDIM steps at evaluation")
    eta: float = Field(0.0, ge=0, le=1, description="0 = deterministic DDIM")
    cell: int | None = Field(None, ge=1, description="training-mask cell; None: as the other families")

    @model_validator(mode="after")
    def _groups(self) -> DiffusersInpaintConfig:
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups ({self.norm_num_groups}) must divide block_out_channels {bad}")
        if self.sample_steps > self.timesteps:
            raise ValueError(
                f"sample_steps ({self.sample_steps}) must not exceed timesteps ({self.timesteps})"
            )
        return self


class GANConfig(_Strict):
    """DCGAN-style generator + spectral-norm discriminator; the image shape comes from the data."""

    latent_dim: int = Field(64, ge=2)
    ch: int = Field(32, ge=4, description="generator channels at full resolution (doubled per stage down)")
    disc_ch: int = Field(32, ge=4)
    loss: Literal["hinge", "nonsat"] = "hinge"


class VAEConfig(_Strict):
    """Convolutional VAE, Bernoulli decoder; beta weights the KL term of the ELBO."""

    latent_dim: int = Field(32, ge=2)
    ch: int = Field(32, ge=4)
    beta: float = Field(1.0, ge=0)


def _check_heads(dim: int, heads: int, dim_name: str, heads_name: str) -> None:
    if dim % heads:
        raise ValueError(f"{dim_name} ({dim}) must be divisible by {heads_name} ({heads})")


_MAE_KEYS = frozenset(MAEConfig.model_fields)


class ModelConfig(_Strict):
    """One typed section per family; a run uses the section of `family` (the others are ignored
    and stay out of its cache keys)."""

    mae: MAEConfig = Field(default_factory=MAEConfig)
    vqgan: VQGANConfig = Field(default_factory=VQGANConfig)
    diffusion: DiffusionConfig = Field(default_factory=DiffusionConfig)
    hf_vitmae: HFViTMAEConfig = Field(default_factory=HFViTMAEConfig)
    diffusers_inpaint: DiffusersInpaintConfig = Field(default_factory=DiffusersInpaintConfig)
    gan: GANConfig = Field(default_factory=GANConfig)
    vae: VAEConfig = Field(default_factory=VAEConfig)
    plugin: dict[str, Any] = Field(
        default_factory=dict, description="a plug-in family's settings, passed to its build_arch"
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_flat_mae(cls, data: Any) -> Any:
        # Configs written before the families existed put MAE fields directly under `model`.
        if isinstance(data, dict) and any(k in _MAE_KEYS for k in data):
            data = dict(data)
            flat = {k: data.pop(k) for k in list(data) if k in _MAE_KEYS}
            data["mae"] = {**(data.get("mae") or {}), **flat}
        return data

    def section(self, family: str) -> dict[str, Any]:
        section = getattr(self, section_key(family))
        return dict(section) if isinstance(section, dict) else section.model_dump(mode="json")
