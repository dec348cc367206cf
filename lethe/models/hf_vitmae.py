"""Hugging Face `transformers` ViT-MAE (`ViTMAEForPreTraining`) as an image-to-image family.

The model Li et al. unlearn, in the format a platform team keeps it: a `save_pretrained` folder
(config.json + model.safetensors, optionally preprocessor_config.json). lethe wraps it unchanged:
  * encoder = the ViT (patch embedding, CLS token, encoder layers, final norm); the decoder stays
    frozen under encoder-only methods, and the fixed sin-cos position tables are never trained;
  * the re-targeting loss compares the encoder's last hidden states (CLS + visible patches);
  * lethe's pixel masks become ViT-MAE's patch mask: the `noise` argument of its forward is chosen so
    its argsort keeps exactly the visible patches, in order, and the keep count is set from the
    mask, so nothing is shuffled at random at evaluation;
  * pixels: lethe's images are in [0, 1]; a folder's image processor mean / std (when it normalises)
    is applied on the way in and undone on the way out.
Loading reads safetensors only (`use_safetensors=True`, no pickle), from local files only.
`transformers` is imported when a model is built, so the other families never pay for it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lethe.models.layers import MAIN_PHASE, I2IModel, cell_hidden, masked_mse

__all__ = ["HFViTMAE", "HFViTMAEArch", "folder_arch", "load_pretrained", "save_pretrained"]

PREPROCESSOR_FILE = "preprocessor_config.json"


@dataclass(frozen=True)
class HFViTMAEArch:
    """The ViTMAEConfig fields lethe reads and writes, plus the image normalisation (if any)."""

    height: int
    width: int
    channels: int
    patch: int
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 256
    decoder_hidden_size: int = 64
    decoder_num_hidden_layers: int = 2
    decoder_num_attention_heads: int = 4
    decoder_intermediate_size: int = 128
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    qkv_bias: bool = True
    # per-channel normalisation the model was trained with; empty = images in [0, 1] as they are
    image_mean: Sequence[float] = field(default_factory=list)
    image_std: Sequence[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        # ViT-MAE's sin-cos position table is built for a square grid of whole patches.
        if self.height != self.width:
            raise ValueError(f"hf-vitmae needs square images; got {self.height}x{self.width}")
        if self.height % self.patch:
            raise ValueError(f"hf-vitmae: patch ({self.patch}) must divide the image side ({self.height})")
        for name in ("image_mean", "image_std"):
            value = list(getattr(self, name))
            if value and len(value) != self.channels:
                raise ValueError(f"hf-vitmae: {name} needs {self.channels} values, got {len(value)}")
            object.__setattr__(self, name, [float(v) for v in value])
        if self.image_std and min(self.image_std) <= 0:
            raise ValueError(f"hf-vitmae: image_std must be positive, got {self.image_std}")

    @property
    def cell(self) -> int:
        return self.patch

    @property
    def num_tokens(self) -> int:
        return (self.height // self.patch) ** 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def hf_config(self):
        from transformers import ViTMAEConfig

        return ViTMAEConfig(
            image_size=self.height,
            patch_size=self.patch,
            num_channels=self.channels,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            decoder_hidden_size=self.decoder_hidden_size,
            decoder_num_hidden_layers=self.decoder_num_hidden_layers,
            decoder_num_attention_heads=self.decoder_num_attention_heads,
            decoder_intermediate_size=self.decoder_intermediate_size,
            hidden_act=self.hidden_act,
            layer_norm_eps=self.layer_norm_eps,
            qkv_bias=self.qkv_bias,
            # dropout would make a student and its teacher disagree on the same input
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            norm_pix_loss=False,
        )

    @classmethod
    def from_hf(cls, config: Any, preprocessor: dict[str, Any] | None = None) -> HFViTMAEArch:
        """The arch of a loaded ViTMAEConfig; ValueError (one line) for what lethe cannot wrap."""
        if getattr(config, "model_type", None) != "vit_mae":
            raise ValueError(f"expected a ViT-MAE config (model_type vit_mae), got {config.model_type!r}")
        if config.norm_pix_loss:
            # Predictions are per-patch normalised pixels: they cannot be turned back into an image.
            raise ValueError("hf-vitmae cannot evaluate a model trained with norm_pix_loss=true")
        size = config.image_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        pre = preprocessor or {}
        norm = bool(pre.get("do_normalize")) and "image_mean" in pre
        return cls(
            height=int(h),
            width=int(w),
            channels=int(config.num_channels),
            patch=int(config.patch_size),
            hidden_size=config.hidden_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads,
            intermediate_size=config.intermediate_size,
            decoder_hidden_size=config.decoder_hidden_size,
            decoder_num_hidden_layers=config.decoder_num_hidden_layers,
            decoder_num_attention_heads=config.decoder_num_attention_heads,
            decoder_intermediate_size=config.decoder_intermediate_size,
            hidden_act=str(config.hidden_act),
            layer_norm_eps=float(config.layer_norm_eps),
            qkv_bias=bool(config.qkv_bias),
            image_mean=_channels(pre.get("image_mean"), int(config.num_channels)) if norm else [],
            image_std=_channels(pre.get("image_std"), int(config.num_channels)) if norm else [],
        )


def _channels(value: Any, channels: int) -> list[float]:
    values = [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value or []]
    return values * channels if len(values) == 1 else values


def sincos_table(grid: int, dim: int) -> torch.Tensor:
    """ViT-MAE's fixed position table for a grid x grid patch grid: (1 + grid * grid, dim), a zero row
    for the CLS token first. Each half of the width encodes one axis as [sin | cos] over dim / 4
    frequencies, the column first: the layout of the MAE reference code and its checkpoints."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")  # (grid, grid)

    def axis(pos: torch.Tensor) -> torch.Tensor:  # (grid, grid) -> (grid * grid, dim / 2)
        angles = pos.reshape(-1, 1).double() * omega
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    table = torch.cat([axis(cols), axis(rows)], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()


def initialise(hf: nn.Module) -> None:
    """ViT-MAE's own initialisation, on a ViTMAEForPreTraining built from a config.

    transformers 5 builds one with all-zero position tables (fixed, never trained), zero CLS and mask
    tokens and a Conv2d-initialised patch projection: its encoder init is skipped once the projection
    counts as initialised, and its decoder init zeroes the decoder's table again. Without positions a
    hidden patch cannot tell where it is, so the model learns the mean image: on Fashion-MNIST its
    pretraining loss stayed at the pixel variance (0.127) where lethe's `mae` fell to 0.07 in 60 steps.
    """
    emb, dec = hf.vit.embeddings, hf.decoder
    grid = math.isqrt(emb.patch_embeddings.num_patches)
    std = hf.config.initializer_range
    with torch.no_grad():
        emb.position_embeddings.copy_(sincos_table(grid, emb.position_embeddings.shape[-1]).unsqueeze(0))
        dec.decoder_pos_embed.copy_(sincos_table(grid, dec.decoder_pos_embed.shape[-1]).unsqueeze(0))
        w = emb.patch_embeddings.projection.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a Linear over the patch (MAE reference)
        nn.init.normal_(emb.cls_token, std=std)
        nn.init.normal_(dec.mask_token, std=std)


class HFViTMAE(I2IModel):
    """`ViTMAEForPreTraining` behind lethe's family interface; `self.hf` is the model itself."""

    family = "hf-vitmae"

    def __init__(self, arch: HFViTMAEArch, hf: nn.Module | None = None) -> None:
        super().__init__()
        from transformers import ViTMAEForPreTraining

        self.arch = arch
        if hf is None:
            hf = ViTMAEForPreTraining(arch.hf_config())
            initialise(hf)
        self.hf = hf
        c = arch.channels
        mean = torch.tensor(arch.image_mean or [0.0] * c).view(1, c, 1, 1)
        std = torch.tensor(arch.image_std or [1.0] * c).view(1, c, 1, 1)
        # not in the state dict: they come from the arch (and from preprocessor_config.json)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    # -- the family interface ------------------------------------------------------------------
    def encoder_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.hf.vit.parameters() if p.requires_grad]

    def full_parameters(self) -> list[nn.Parameter]:
        # the sin-cos position tables are fixed (requires_grad False in transformers): never trained
        return [p for p in self.hf.parameters() if p.requires_grad]

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        return self.full_parameters()

    def _encode(self, x: torch.Tensor, mask: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        # 'encode' -> (B, 1 + L_vis, D): the CLS token and the visible patches' last hidden states
        return self._run_vit(x, mask)[0]

    def _predict(self, x: torch.Tensor, mask: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        # 'predict' -> (B, C, H, W) in [0, 1], every pixel predicted
        return self._pixels(x, mask).clamp(0.0, 1.0)

    def training_loss(
        self, x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, phase: str = MAIN_PHASE
    ) -> torch.Tensor:
        """ViT-MAE's loss: MSE on the hidden patches, in the model's own (normalised) pixel space."""
        target = (x - self.pixel_mean) / self.pixel_std
        pred = (self._pixels(x, mask) - self.pixel_mean) / self.pixel_std
        return masked_mse(pred, target, mask).mean()

    def inpaint(self, x: torch.Tensor, mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """The user-facing output: visible pixels kept, hidden ones predicted (deterministic)."""
        mask = mask.expand(x.shape[0], -1, -1, -1) if mask.shape[0] == 1 else mask
        return x * (1 - mask) + self._predict(x, mask) * mask

    # -- internals -----------------------------------------------------------------------------
    def token_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(B,1,H,W) pixel mask -> (B, L) bool, a patch hidden when most of it is hidden."""
        return cell_hidden(mask[:, :1], self.arch.patch)

    def _noise(self, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
        """ViT-MAE keeps the patches of lowest noise: visible ones first, each group in position order.

        Returns the noise (B, L) and the number of hidden patches (the same in every row)."""
        hidden = self.token_mask(mask)  # (B, L)
        counts = hidden.sum(1)
        if counts.numel() and bool((counts != counts[0]).any()):
            raise ValueError("every image of a batch must hide the same number of patches")
        n = hidden.shape[1]
        order = torch.arange(n, device=mask.device, dtype=torch.float32) / (2 * n)
        return hidden.float() + order, int(counts[0]) if counts.numel() else 0

    @contextmanager
    def _hiding(self, n_hidden: int) -> Iterator[None]:
        # ViT-MAE keeps int(L * (1 - mask_ratio)) patches: a ratio half a patch below n_hidden / L
        # makes that exactly L - n_hidden whatever the float rounding.
        config = self.hf.config
        before = config.mask_ratio
        config.mask_ratio = (n_hidden - 0.5) / self.arch.num_tokens
        try:
            yield
        finally:
            config.mask_ratio = before

    def _run_vit(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        noise, n_hidden = self._noise(mask)
        pixels = (x - self.pixel_mean) / self.pixel_std
        with self._hiding(n_hidden):
            out = self.hf.vit(pixel_values=pixels, noise=noise)
        return out.last_hidden_state, out.ids_restore

    def _pixels(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Every pixel as the decoder predicts it, in [0, 1] units (not clamped): (B, C, H, W)."""
        latent, ids_restore = self._run_vit(x, mask)
        logits = self.hf.decoder(latent, ids_restore).logits  # (B, L, p*p*C)
        pred = self.hf.unpatchify(logits, (self.arch.height, self.arch.width))
        return pred * self.pixel_std + self.pixel_mean


def _quiet() -> None:
    # transformers draws a progress bar per load / save: a line of noise per step on the terminal
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def folder_arch(read: Callable[[str], str | None]) -> HFViTMAEArch:
    """The arch of a save_pretrained folder from its JSON files alone (no weights read).

    `read(name)` returns the text of a file of the folder, or None when it has no such file."""
    from transformers import ViTMAEConfig

    text = read("config.json")
    if text is None:
        raise ValueError("not a save_pretrained folder (no config.json)")
    data = json.loads(text)
    if data.get("model_type") != "vit_mae":
        raise ValueError(f"expected a ViT-MAE config (model_type vit_mae), got {data.get('model_type')!r}")
    pre = read(PREPROCESSOR_FILE)
    return HFViTMAEArch.from_hf(ViTMAEConfig.from_dict(data), json.loads(pre) if pre else None)


def load_pretrained(folder: str | Path) -> HFViTMAE:
    """A `save_pretrained` folder -> HFViTMAE (eval mode); safetensors only, local files only.

    ValueError (one line) when the folder is not a ViT-MAE lethe can wrap."""
    from transformers import AutoConfig, ViTMAEForPreTraining

    _quiet()
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} is not a save_pretrained folder (no config.json)")
    if not any(folder.glob("*.safetensors")):
        raise ValueError(f"{folder} has no .safetensors weights (lethe never loads pickled weights)")
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    pre_file = folder / PREPROCESSOR_FILE
    pre = json.loads(pre_file.read_text()) if pre_file.is_file() else None
    arch = HFViTMAEArch.from_hf(config, pre)
    hf = ViTMAEForPreTraining.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    return HFViTMAE(arch, hf).eval()


def save_pretrained(model: HFViTMAE, folder: str | Path) -> Path:
    """Write `model` as its users load it: `ViTMAEForPreTraining.from_pretrained(folder)`."""
    _quiet()
    folder = Path(folder)
    model = getattr(model, "module", model)
    model.hf.save_pretrained(folder, safe_serialization=True)
    a = model.arch
    if a.image_mean:
        pre = {
            "image_processor_type": "ViTImageProcessor",
            "do_normalize": True,
            "image_mean": list(a.image_mean),
            "image_std": list(a.image_std),
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_resize": True,
            "size": {"height": a.height, "width": a.width},
        }
        (folder / PREPROCESSOR_FILE).write_text(json.dumps(pre, indent=2) + "\n")
    return folder


def auto_patch_square(side: int) -> int:
    """The smallest divisor of `side` giving at most 8x8 patches: 28 -> 4, 64 -> 8, 8 -> 1."""
    return next(p for p in range(max(1, math.ceil(side / 8)), side + 1) if side % p == 0)
