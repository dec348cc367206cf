"""Building blocks shared by the model families (plain PyTorch, no project imports).

Also the base class `I2IModel`: the one interface every image-to-image family implements, so the
unlearning methods, the training loops and the evaluation never branch on the family.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

MAIN_PHASE = "main"


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image MSE inside the hidden region: (B,)."""
    m = mask.expand_as(target)
    return ((pred - target) ** 2 * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)


def transformer_block(dim: int, heads: int, mlp_ratio: float) -> nn.TransformerEncoderLayer:
    """Pre-norm ViT block without dropout (dropout would make student and teacher disagree)."""
    return nn.TransformerEncoderLayer(
        dim,
        heads,
        dim_feedforward=int(dim * mlp_ratio),
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )


def group_norm(ch: int) -> nn.GroupNorm:
    """GroupNorm with the largest of 8/4/2/1 groups dividing `ch` (any width works)."""
    groups = next(g for g in (8, 4, 2, 1) if ch % g == 0)
    return nn.GroupNorm(groups, ch)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad right/bottom so H and W are multiples of `multiple` (strided convs need it)."""
    ph, pw = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


def cell_hidden(mask: torch.Tensor, cell: int) -> torch.Tensor:
    """(B,1,H,W) pixel mask -> (B, gh*gw) bool: a cell is hidden when most of its real pixels are.

    Counting only real pixels matters at the cropped last row/column (e.g. 30x30 with 4x4 cells):
    counting padding as visible would drop those cells and break the equal-count-per-batch rule.
    """
    m = pad_to_multiple(mask.float(), cell)
    real = pad_to_multiple(torch.ones_like(mask[:1, :1], dtype=torch.float32), cell)
    frac = F.avg_pool2d(m, cell) / F.avg_pool2d(real, cell)
    return frac.flatten(1) > 0.5


def keep_visible(hidden: torch.Tensor) -> torch.Tensor:
    """Indices of visible tokens, in order: (B, L_vis). Every row must show the same number."""
    n_vis = (~hidden).sum(1)
    if not bool((n_vis == n_vis[0]).all()) or int(n_vis[0]) == 0:
        raise ValueError("every image in a batch must hide the same, non-total number of patches")
    # stable sort puts visible tokens first, in their original order
    order = hidden.to(torch.int8).argsort(dim=1, stable=True)
    return order[:, : int(n_vis[0])]


class MaskedTokenTransformer(nn.Module):
    """MAE / MAGE token transformer: an encoder over the visible tokens only, and a lighter decoder
    that fills the hidden positions with a learned mask token. The families differ only in how
    tokens enter (patch embedding, codebook ids) and what the decoder head predicts."""

    def init_transformer(
        self,
        n_tokens: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        dec_dim: int,
        dec_depth: int,
        dec_heads: int,
        head_out: int,
    ) -> None:
        """Build the layers, `head` (dec_dim -> head_out per token) last, then initialise positions."""
        self.pos = nn.Parameter(torch.zeros(1, n_tokens, dim))
        self.blocks = nn.ModuleList(transformer_block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.dec_embed = nn.Linear(dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.dec_pos = nn.Parameter(torch.zeros(1, n_tokens, dec_dim))
        self.dec_blocks = nn.ModuleList(
            transformer_block(dec_dim, dec_heads, mlp_ratio) for _ in range(dec_depth)
        )
        self.dec_norm = nn.LayerNorm(dec_dim)
        self.head = nn.Linear(dec_dim, head_out)
        for prm in (self.pos, self.mask_token, self.dec_pos):
            nn.init.trunc_normal_(prm, std=0.02)

    def encode_visible(self, tokens: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, L, dim) before positions, hidden (B, L) -> (encoded (B, L_vis, dim), keep)."""
        keep = keep_visible(hidden)  # (B, L_vis)
        tokens = tokens + self.pos
        z = torch.gather(tokens, 1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        for blk in self.blocks:
            z = blk(z)
        return self.norm(z), keep

    def decode_tokens(self, z: torch.Tensor, keep: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Encoded visible tokens -> decoder features at every position: (B, L, dec_dim)."""
        b, n_tok = hidden.shape
        v = self.dec_embed(z)
        full = self.mask_token.expand(b, n_tok, -1).clone()
        full.scatter_(1, keep[..., None].expand(-1, -1, v.shape[-1]), v)
        y = full + self.dec_pos
        for blk in self.dec_blocks:
            y = blk(y)
        return self.dec_norm(y)


class ResBlock(nn.Module):
    """GN-SiLU-conv twice with a skip; an optional embedding (diffusion time) is added in between."""

    def __init__(self, cin: int, cout: int, emb_dim: int = 0) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout) if emb_dim else None
        self.norm2, self.conv2 = group_norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        if self.emb is not None and emb is not None:
            h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class I2IModel(nn.Module):
    """The family interface (DESIGN.md 2.1): h = D(E(T(x))) with T a pixel mask.

    One entry point, `forward(x, mask, mode)`, so DDP sees every call that trains parameters:
      * "encode"  -> one tensor (B, ...) of the activations that encoder re-targeting matches;
      * "predict" -> (B, C, H, W) in [0, 1], a differentiable single-pass output (recon baselines, MIA);
      * "loss"    -> the scalar pretraining loss of `phase` (`training_loss`).
    `seed` makes a stochastic encode/predict (diffusion timesteps and noise) repeatable: calls
    with the same seed and batch size draw the same randomness, so a student and its teacher see
    the same corruption of a sample.
    """

    family: ClassVar[str] = ""
    arch: Any

    # -- what each family declares ----------------------------------------------------------
    @property
    def mask_cell(self) -> int:
        """Masks are aligned to cells of this many pixels (patch / token / mask granularity)."""
        return int(self.arch.cell)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """What encoder-only methods train; everything else stays frozen (and bit-identical)."""
        raise NotImplementedError

    def full_parameters(self) -> list[nn.Parameter]:
        """What full-model methods may train: the whole generator, minus frozen stages (VQ tokenizer)."""
        return list(self.parameters())

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        """What one pretraining phase trains (families with one phase train everything)."""
        return list(self.parameters())

    def training_loss(
        self, x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, phase: str = MAIN_PHASE
    ) -> torch.Tensor:
        raise NotImplementedError

    def inpaint(self, x: torch.Tensor, mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """The user-facing output with the family's sampler: visible pixels kept, hidden ones generated."""
        raise NotImplementedError

    def sampler_info(self) -> dict[str, Any]:
        return {"name": "single_pass", "steps": 1}

    def _encode(self, x: torch.Tensor, mask: torch.Tensor, seed: int | None) -> torch.Tensor:
        raise NotImplementedError

    def _predict(self, x: torch.Tensor, mask: torch.Tensor, seed: int | None) -> torch.Tensor:
        raise NotImplementedError

    # -- the shared entry points -------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        mode: str = "predict",
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        phase: str = MAIN_PHASE,
    ) -> torch.Tensor:
        mask = mask.expand(x.shape[0], -1, -1, -1) if mask.shape[0] == 1 else mask
        if mode == "encode":
            return self._encode(x, mask, seed)
        if mode == "predict":
            return self._predict(x, mask, seed)
        if mode == "loss":
            if generator is None:
                raise ValueError("mode 'loss' needs a generator")
            return self.training_loss(x, mask, generator, phase)
        raise ValueError(f"unknown mode {mode!r}")

    def encode(self, x: torch.Tensor, mask: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        return self.forward(x, mask, mode="encode", seed=seed)


def sinusoidal(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) integer or float timesteps -> (B, dim) sinusoidal features (Transformer / DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    ang = t.float()[:, None] * freqs[None]
    emb = torch.cat([ang.sin(), ang.cos()], dim=1)
    return F.pad(emb, (0, dim % 2)) if dim % 2 else emb
