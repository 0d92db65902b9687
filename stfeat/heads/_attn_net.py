"""The attention network of :class:`stfeat.heads.AttentionHead` (imports torch: load lazily)."""

from __future__ import annotations

import torch
import torch.nn as nn


class Block(nn.Module):
    """Query-to-tokens multi-head attention, residual + layer norm, then feed-forward residual."""

    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(2 * d_model, d_model))
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, q, kv, pad):
        a, _ = self.attn(q, kv, kv, key_padding_mask=pad, need_weights=False)
        q = self.norm1(q + self.drop(a))
        return self.norm2(q + self.drop(self.ffn(q)))


class AttnNet(nn.Module):
    """Tokens (B, T, d) + offsets (B, T, 2) + types (T,) + valid mask (B, T) -> genes (B, g).

    Token embedding = projection of the features + type embedding + MLP of Fourier features of
    the offset; the query starts from token 0 and attends to all valid tokens.
    """

    def __init__(self, d_in: int, n_types: int, d_model: int, n_heads: int, n_layers: int,
                 d_out: int, dropout: float, input_dropout: float, n_pos_freqs: int):
        super().__init__()
        self.in_drop = nn.Dropout(input_dropout)
        self.proj = nn.Linear(d_in, d_model)
        self.type_emb = nn.Embedding(n_types, d_model)
        self.register_buffer("freqs", (2.0 ** torch.arange(n_pos_freqs)) * torch.pi)
        self.pos = nn.Sequential(nn.Linear(4 * n_pos_freqs, d_model), nn.GELU(),
                                 nn.Linear(d_model, d_model))
        self.norm_in = nn.LayerNorm(d_model)
        self.blocks = nn.ModuleList([Block(d_model, n_heads, dropout) for _ in range(n_layers)])
        self.out = nn.Linear(d_model, d_out)
        # the residual over the linear baseline starts at zero: epoch 0 = the baseline
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, rel, types, valid):
        ang = rel[..., None] * self.freqs  # (B, T, 2, F); rel already in units of pos_scale
        fourier = torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(2)
        h = self.proj(self.in_drop(x)) + self.type_emb(types)[None] + self.pos(fourier)
        h = self.norm_in(h)
        q = h[:, :1]
        for blk in self.blocks:
            q = blk(q, h, ~valid)
        return self.out(q[:, 0])
