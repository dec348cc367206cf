"""VQ-GAN tokenizer + bidirectional masked-token transformer (MaskGIT / MAGE style, Li et al. 2024).

Two stages, trained one after the other in the same pretraining job (phases "tokenizer" then
"transformer"):

* the tokenizer: conv encoder -> vector quantiser (codebook, commitment loss, EMA or gradient
  codebook updates, straight-through estimator) -> conv decoder, trained with L1 reconstruction,
  a perceptual term and a hinge-loss patch discriminator;
* the token transformer, MAGE layout: an encoder over the *visible* tokens and a decoder that fills
  mask tokens and predicts codebook logits (cross-entropy on hidden tokens, MaskGIT cosine mask
  ratios). Inpainting / outpainting decodes iteratively, most confident tokens first (MaskGIT).

For unlearning the tokenizer is frozen and the "encoder" is the transformer's encoder, as in the
authors' MAGE code. An image and its noise partner share one token mask.

Perceptual term: the project's feature net (featnet.py) is trained on all data, forget set
included, and it is also the FD instrument. Using it inside the tokenizer would leak the forget set
into the oracle and let training optimise the evaluation metric. The documented substitute is a
frozen, randomly initialised conv net (fixed seed; random conv features still measure local
structure), held in non-persistent buffers so it never enters a checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from lethe.models.layers import (
    MAIN_PHASE,
    I2IModel,
    MaskedTokenTransformer,
    ResBlock,
    cell_hidden,
    group_norm,
    pad_to_multiple,
)

TOKENIZER, TRANSFORMER = "tokenizer", "transformer"
_PERCEPTUAL_SEED = 20240501


def auto_downsample(height: int, width: int) -> int:
    """Stride-2 stages giving at most 8x8 tokens: 28 -> 2 (7x7), 64 -> 3 (8x8), 8 -> 0."""
    n = 0
    while math.ceil(max(height, width) / 2**n) > 8:
        n += 1
    return n


@dataclass(frozen=True)
class VQGANArch:
    height: int
    width: int
    channels: int
    downsample: int  # stride-2 stages; one token per 2**downsample pixels square
    ch: int = 32  # tokenizer base width (doubled once after the first stage)
    codebook_size: int = 256
    code_dim: int = 32
    codebook_update: str = "ema"  # "ema" | "gradient"
    ema_decay: float = 0.99
    commitment: float = 0.25
    perceptual_weight: float = 0.1
    adv_weight: float = 0.1
    adv_start_step: int = 200  # tokenizer steps before the discriminator joins (taming's disc_start)
    disc_ch: int = 32
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    dec_dim: int = 64
    dec_depth: int = 2
    dec_heads: int = 4
    label_smoothing: float = 0.1
    decode_steps: int = 8
    temperature: float = 1.0  # token sampling temperature; 0 = greedy
    choice_temperature: float = 2.0  # Gumbel noise on confidences, annealed to 0 (MaskGIT)

    def __post_init__(self) -> None:
        if self.codebook_update not in ("ema", "gradient"):
            raise ValueError(f"codebook_update must be 'ema' or 'gradient', got {self.codebook_update!r}")

    @property
    def cell(self) -> int:
        return 2**self.downsample

    @property
    def grid(self) -> tuple[int, int]:
        return math.ceil(self.height / self.cell), math.ceil(self.width / self.cell)

    @property
    def num_tokens(self) -> int:
        gh, gw = self.grid
        return gh * gw

    def to_dict(self) -> dict:
        return asdict(self)


def _widths(arch: VQGANArch) -> list[int]:
    return [arch.ch * min(2, 2**i) for i in range(arch.downsample + 1)]


class _Encoder(nn.Module):
    def __init__(self, arch: VQGANArch) -> None:
        super().__init__()
        w = _widths(arch)
        layers: list[nn.Module] = [nn.Conv2d(arch.channels, w[0], 3, padding=1)]
        for i in range(arch.downsample):
            layers += [ResBlock(w[i], w[i]), nn.Conv2d(w[i], w[i + 1], 4, stride=2, padding=1)]
        layers += [ResBlock(w[-1], w[-1]), group_norm(w[-1]), nn.SiLU(), nn.Conv2d(w[-1], arch.code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)  # (B, C, H', W') -> (B, code_dim, gh, gw)


class _Decoder(nn.Module):
    def __init__(self, arch: VQGANArch) -> None:
        super().__init__()
        w = _widths(arch)
        layers: list[nn.Module] = [nn.Conv2d(arch.code_dim, w[-1], 3, padding=1), ResBlock(w[-1], w[-1])]
        for i in reversed(range(arch.downsample)):
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(w[i + 1], w[i], 3, padding=1),
                ResBlock(w[i], w[i]),
            ]
        layers += [group_norm(w[0]), nn.SiLU(), nn.Conv2d(w[0], arch.channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z))  # (B, code_dim, gh, gw) -> (B, C, H', W') in [0, 1]


class _PatchDiscriminator(nn.Module):
    """PatchGAN: one real/fake logit per receptive field."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            group_norm(2 * width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


def _all_reduce_(t: torch.Tensor) -> torch.Tensor:
    # EMA codebook statistics must agree across DDP workers, or the replicas drift apart.
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def _broadcast_(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(t, 0)
    return t


class VectorQuantizer(nn.Module):
    """Nearest-code quantiser. 'ema': the codebook is a buffer moved by exponential moving averages
    of its assigned vectors (no codebook loss; dead codes restarted from the batch). 'gradient':
    the codebook is a parameter trained by the VQ-VAE codebook loss ||sg(z) - e||^2."""

    def __init__(self, size: int, dim: int, update: str, decay: float) -> None:
        super().__init__()
        self.size, self.dim, self.update, self.decay = size, dim, update, decay
        init = torch.randn(size, dim) / math.sqrt(dim)
        if update == "ema":
            self.register_buffer("embed", init)
            self.register_buffer("cluster_size", torch.zeros(size))
            self.register_buffer("embed_sum", init.clone())
            self.register_buffer("initted", torch.zeros((), dtype=torch.bool))
        else:
            self.embed = nn.Parameter(init)

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.embed)  # (...,) -> (..., D)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        # (N, D) -> (N,) ids of the nearest codes (squared L2)
        d = z.pow(2).sum(1, keepdim=True) - 2 * z @ self.embed.t() + self.embed.pow(2).sum(1)[None]
        return d.argmin(1)

    def train_forward(
        self, z: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, D, h, w) -> straight-through quantised (B, D, h, w), commitment loss, codebook loss."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (N, D)
        if self.update == "ema":
            with torch.no_grad():
                self._ema_step(flat.detach(), generator)
        ids = self.nearest(flat.detach())
        q = self.codes(ids)
        commit = F.mse_loss(flat, q.detach())
        book = F.mse_loss(q, flat.detach()) if self.update == "gradient" else flat.new_zeros(())
        q_st = flat + (q - flat).detach()  # straight-through: the encoder gets the decoder's gradient
        return q_st.view(b, h, w, d).permute(0, 3, 1, 2), commit, book

    def _sample_rows(self, flat: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(flat), (n,), generator=generator).to(flat.device)
        return _broadcast_(flat[idx].clone())

    def _ema_step(self, flat: torch.Tensor, generator: torch.Generator) -> None:
        if not bool(self.initted):
            # Start from data: random codes far from the encoder outputs would never be picked.
            self.embed.copy_(self._sample_rows(flat, self.size, generator))
            self.embed_sum.copy_(self.embed)
            self.cluster_size.fill_(1.0)
            self.initted.fill_(True)
        ids = self.nearest(flat)
        onehot = F.one_hot(ids, self.size).type(flat.dtype)  # (N, K)
        counts = _all_reduce_(onehot.sum(0))
        sums = _all_reduce_(onehot.t() @ flat)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + 1e-5) / (n + self.size * 1e-5) * n  # Laplace smoothing
        self.embed.copy_(self.embed_sum / smoothed[:, None])
        dead = self.cluster_size < 1e-2
        if bool(dead.any()):
            fresh = self._sample_rows(flat, int(dead.sum()), generator)
            self.embed[dead] = fresh
            self.embed_sum[dead] = fresh
            self.cluster_size[dead] = 1.0


class VQGAN(I2IModel, MaskedTokenTransformer):
    family = "vqgan"

    def __init__(self, arch: VQGANArch) -> None:
        super().__init__()
        self.arch = arch
        a = arch
        # -- tokenizer (frozen after its phase) --
        self.tok_encoder = _Encoder(a)
        self.quantizer = VectorQuantizer(a.codebook_size, a.code_dim, a.codebook_update, a.ema_decay)
        self.tok_decoder = _Decoder(a)
        self.disc = _PatchDiscriminator(a.channels, a.disc_ch)
        self.register_buffer("tok_step", torch.zeros((), dtype=torch.long))
        g = torch.Generator().manual_seed(_PERCEPTUAL_SEED)
        self.register_buffer(
            "perc_w1",
            torch.randn(16, a.channels, 3, 3, generator=g) / math.sqrt(9 * a.channels),
            persistent=False,
        )
        self.register_buffer(
            "perc_w2", torch.randn(32, 16, 3, 3, generator=g) / math.sqrt(9 * 16), persistent=False
        )
        # -- token transformer: MAGE encoder over visible tokens, decoder with mask tokens --
        self.tok_embed = nn.Embedding(a.codebook_size, a.dim)
        self.init_transformer(
            a.num_tokens,
            a.dim,
            a.depth,
            a.heads,
            a.mlp_ratio,
            a.dec_dim,
            a.dec_depth,
            a.dec_heads,
            a.codebook_size,
        )

    # -- parameter groups ----------------------------------------------------------------------
    def tokenizer_modules(self) -> list[nn.Module]:
        return [self.tok_encoder, self.quantizer, self.tok_decoder, self.disc]

    def encoder_parameters(self) -> list[nn.Parameter]:
        mods = [self.tok_embed, self.blocks, self.norm]
        return [self.pos, *(p for m in mods for p in m.parameters())]

    def full_parameters(self) -> list[nn.Parameter]:
        tok = {id(p) for m in self.tokenizer_modules() for p in m.parameters()}
        return [p for p in self.parameters() if id(p) not in tok]

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        if phase == TOKENIZER:
            return [p for m in self.tokenizer_modules() for p in m.parameters()]
        if phase == TRANSFORMER:
            return self.full_parameters()
        raise ValueError(f"unknown vqgan phase {phase!r}; expected {TOKENIZER!r} or {TRANSFORMER!r}")

    def sampler_info(self) -> dict[str, Any]:
        a = self.arch
        return {
            "name": "maskgit",
            "steps": a.decode_steps,
            "temperature": a.temperature,
            "choice_temperature": a.choice_temperature,
            "seeded": True,
        }

    # -- tokenizer -----------------------------------------------------------------------------
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return pad_to_multiple(x, self.arch.cell)

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, : self.arch.height, : self.arch.width]

    @torch.no_grad()
    def tokenize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, L) code ids."""
        z = self.tok_encoder(self._pad(x))  # (B, D, gh, gw)
        return self.quantizer.nearest(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])).view(x.shape[0], -1)

    def detokenize(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, L, D) code vectors -> (B, C, H, W) image."""
        gh, gw = self.arch.grid
        z = codes.transpose(1, 2).reshape(codes.shape[0], -1, gh, gw)
        return self._crop(self.tok_decoder(z))

    def token_mask(self, mask: torch.Tensor) -> torch.Tensor:
        return cell_hidden(mask, self.arch.cell)  # (B, L) bool

    def _visible_ids(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # The conv encoder's receptive field crosses cells: tokenize the *masked* image so no
        # visible token carries hidden pixels (the eval input has none to give either).
        return self.tokenize(x * (1 - mask))

    def _perceptual(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        def feats(x: torch.Tensor) -> list[torch.Tensor]:
            f1 = F.relu(F.conv2d(x * 2 - 1, self.perc_w1, padding=1))
            f2 = F.relu(F.conv2d(F.avg_pool2d(f1, 2), self.perc_w2, padding=1))
            return [f1, f2]

        return sum(F.mse_loss(fa, fb) for fa, fb in zip(feats(a), feats(b), strict=True))

    def _tokenizer_loss(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        a = self.arch
        xp = self._pad(x)
        z_q, commit, book = self.quantizer.train_forward(self.tok_encoder(xp), generator)
        rec = self.tok_decoder(z_q)  # (B, C, H', W')
        loss = (rec - xp).abs().mean() + a.commitment * commit + book
        if a.perceptual_weight:
            loss = loss + a.perceptual_weight * self._perceptual(rec, xp)
        if a.adv_weight and int(self.tok_step) >= a.adv_start_step:
            # One loss, one backward (DDP-friendly): the discriminator learns from detached fakes,
            # and the generator's adversarial term goes through a parameter-detached copy of the
            # discriminator, so neither player's gradient reaches the other's weights.
            d_loss = F.relu(1 - self.disc(xp)).mean() + F.relu(1 + self.disc(rec.detach())).mean()
            frozen = {k: v.detach() for k, v in self.disc.named_parameters()}
            g_loss = -functional_call(self.disc, frozen, (rec,)).mean()
            loss = loss + a.adv_weight * g_loss + d_loss
        self.tok_step += 1
        return loss

    # -- token transformer -----------------------------------------------------------------------
    def _encode_ids(self, ids: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_visible(self.tok_embed(ids), hidden)  # (B, L_vis, dim), keep

    def _decode_logits(self, z: torch.Tensor, keep: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.decode_tokens(z, keep, hidden))  # (B, L, K)

    def _logits(self, ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        z, keep = self._encode_ids(ids, hidden)
        return self._decode_logits(z, keep, hidden)

    def _transformer_loss(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.token_mask(mask)
        target = self.tokenize(x)  # (B, L)
        logits = self._logits(self._visible_ids(x, mask), hidden)
        return F.cross_entropy(logits[hidden], target[hidden], label_smoothing=self.arch.label_smoothing)

    # -- the family interface ----------------------------------------------------------------------
    def training_loss(
        self, x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, phase: str = MAIN_PHASE
    ) -> torch.Tensor:
        if phase == TOKENIZER:
            return self._tokenizer_loss(x, generator)
        if phase in (TRANSFORMER, MAIN_PHASE):
            return self._transformer_loss(x, mask)
        raise ValueError(f"unknown vqgan phase {phase!r}")

    def _encode(self, x: torch.Tensor, mask: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        # 'encode' -> (B, L_vis, dim): the transformer encoder over the visible tokens
        return self._encode_ids(self._visible_ids(x, mask), self.token_mask(mask))[0]

    def _predict(self, x: torch.Tensor, mask: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """One differentiable pass: hidden tokens become their expected code under the predicted
        distribution (soft), visible tokens keep their code; the frozen decoder renders (B,C,H,W)."""
        hidden = self.token_mask(mask)
        ids = self._visible_ids(x, mask)
        probs = self._logits(ids, hidden).softmax(-1)  # (B, L, K)
        soft = probs @ self.quantizer.embed  # (B, L, D)
        codes = torch.where(hidden[..., None], soft, self.quantizer.codes(ids))
        return self.detokenize(codes)

    @torch.no_grad()
    def inpaint(self, x: torch.Tensor, mask: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """MaskGIT decoding: each step samples every unknown token, keeps the most confident ones
        (cosine schedule) and re-masks the rest. Same seed -> same output."""
        a = self.arch
        mask = mask.expand(x.shape[0], -1, -1, -1) if mask.shape[0] == 1 else mask
        g = torch.Generator().manual_seed(seed)
        unknown = self.token_mask(mask)  # (B, L)
        ids = self._visible_ids(x, mask)
        n0 = int(unknown[0].sum())
        steps = min(a.decode_steps, n0)
        for s in range(steps):
            logits = self._logits(ids, unknown).float()  # (B, L, K)
            logp = logits.log_softmax(-1)
            if a.temperature > 0:
                sampled = (logits / a.temperature + _gumbel(logits.shape, g, x.device)).argmax(-1)
            else:
                sampled = logits.argmax(-1)
            conf = logp.gather(-1, sampled[..., None])[..., 0]  # (B, L)
            ratio = (s + 1) / steps
            conf = conf + a.choice_temperature * (1 - ratio) * _gumbel(conf.shape, g, x.device)
            n_unknown = int(unknown[0].sum())
            remain = min(int(math.floor(n0 * math.cos(math.pi / 2 * ratio))), n_unknown - 1)
            ids = torch.where(unknown, sampled, ids)
            conf = conf.masked_fill(~unknown, float("inf"))  # known tokens are never re-masked
            new_unknown = torch.zeros_like(unknown)
            if remain > 0:
                new_unknown.scatter_(1, conf.topk(remain, dim=1, largest=False).indices, True)
            unknown = new_unknown
        out = self.detokenize(self.quantizer.codes(ids))
        return x * (1 - mask) + out * mask


def _gumbel(shape: torch.Size | tuple[int, ...], g: torch.Generator, device: torch.device) -> torch.Tensor:
    u = torch.rand(shape, generator=g).clamp_(1e-9, 1 - 1e-9)
    return (-torch.log(-torch.log(u))).to(device)
