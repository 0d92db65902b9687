"""Networks of the contrastive and slide-transformer heads (import torch: load lazily)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def info_nce(zi, ze, temperature: float):
    """Symmetric InfoNCE (the CLIP loss) of matched rows of two L2-normalised embeddings."""
    logits = zi @ ze.T / temperature
    labels = torch.arange(len(zi), device=zi.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


class ContrastiveNet(nn.Module):
    """Image MLP and expression MLP into one L2-normalised space (+ optional gene regressor)."""

    def __init__(self, d_in: int, g: int, hidden: int, dim: int, dropout: float,
                 input_dropout: float, mse: bool):
        super().__init__()
        self.image = nn.Sequential(nn.Dropout(input_dropout), nn.Linear(d_in, hidden), nn.GELU(),
                                   nn.Dropout(dropout), nn.Linear(hidden, dim))
        self.expr = nn.Sequential(nn.Linear(g, hidden), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, dim))
        self.reg = nn.Linear(dim, g) if mse else None

    def embed_image(self, x):
        return F.normalize(self.image(x), dim=-1)

    def embed_expr(self, y):
        return F.normalize(self.expr(y), dim=-1)

    def regress(self, x):
        """The MSE branch: genes from the (unnormalised) image projection."""
        return self.reg(self.image(x))

    def forward(self, x, y):
        h = self.image(x)
        zi = F.normalize(h, dim=-1)
        ze = self.embed_expr(y)
        yhat = self.reg(h) if self.reg is not None else h.new_zeros(0)
        return zi, ze, yhat


def sinusoidal(offsets, n_freqs: int):
    """Sinusoidal encoding of 2-D offsets (already in units of the spot pitch): (..., 4 F).

    Wavelengths from 1 to 2^(F-1) pitches (geometric), sin and cos per axis, as the transformer's
    position encoding but of continuous micrometre offsets.
    """
    freqs = 2 * math.pi / (2.0 ** torch.arange(n_freqs, device=offsets.device,
                                                dtype=offsets.dtype))
    ang = offsets[..., None] * freqs  # (..., 2, F)
    return torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(-2)


class _RelBiasLayer(nn.Module):
    """Pre-norm self-attention layer whose logits get a learned bias of the pairwise offset."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(2 * d_model, d_model))
        self.drop = nn.Dropout(dropout)

    def forward(self, h, bias, pad):
        # bias: (B, H, L, L) additive logits; padding keys get -inf
        B, L = pad.shape
        mask = bias.masked_fill(pad[:, None, None, :], float("-inf")).reshape(B * self.n_heads, L, L)
        a = self.norm1(h)
        a, _ = self.attn(a, a, a, attn_mask=mask, need_weights=False)
        h = h + self.drop(a)
        return h + self.drop(self.ffn(self.norm2(h)))


class SlideTransformerNet(nn.Module):
    """Chunk tokens (B, L, d) + offsets (B, L, 2) + padding (B, L) -> genes (B, L, g).

    Token = projection of the spot's features + a linear map of the sinusoidal encoding of its
    offset from the chunk centre (+ an opt-in learned embedding of its absolute grid position).
    Each pre-norm self-attention layer adds to its logits a per-head bias computed by a small MLP
    from the sinusoidal encoding of the PAIRWISE offset between spots (translation-invariant, so
    "attend to the spots within one pitch" is easy to learn). A linear output layer that starts
    at zero: the residual over the ridge skip path starts at the ridge.
    """

    def __init__(self, d_in: int, d_out: int, d_model: int, n_heads: int, n_layers: int,
                 dropout: float, input_dropout: float, n_pos_freqs: int,
                 n_abs_positions: int = 0):
        super().__init__()
        self.n_pos_freqs = n_pos_freqs
        self.n_heads = n_heads
        self.in_drop = nn.Dropout(input_dropout)
        self.proj = nn.Linear(d_in, d_model)
        self.pos = nn.Linear(4 * n_pos_freqs, d_model)
        self.abs_x = nn.Embedding(n_abs_positions, d_model) if n_abs_positions else None
        self.abs_y = nn.Embedding(n_abs_positions, d_model) if n_abs_positions else None
        self.rel = nn.Sequential(nn.Linear(4 * n_pos_freqs + 1, 32), nn.GELU(),
                                 nn.Linear(32, n_heads * n_layers))
        self.layers = nn.ModuleList([_RelBiasLayer(d_model, n_heads, dropout)
                                     for _ in range(n_layers)])
        self.norm_out = nn.LayerNorm(d_model)
        self.out = nn.Linear(d_model, d_out)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, offsets, pad, abs_pos=None):
        h = self.proj(self.in_drop(x)) + self.pos(sinusoidal(offsets, self.n_pos_freqs))
        if self.abs_x is not None and abs_pos is not None:
            h = h + self.abs_x(abs_pos[..., 0]) + self.abs_y(abs_pos[..., 1])
        pair = offsets[:, None, :, :] - offsets[:, :, None, :]  # (B, L, L, 2): key - query
        dist = pair.norm(dim=-1, keepdim=True)
        bias = self.rel(torch.cat([sinusoidal(pair, self.n_pos_freqs), dist], dim=-1))
        bias = bias.permute(0, 3, 1, 2)  # (B, H * layers, L, L)
        H = self.n_heads
        for i, layer in enumerate(self.layers):
            h = layer(h, bias[:, i * H:(i + 1) * H], pad)
        return self.out(self.norm_out(h))
