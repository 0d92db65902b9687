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


class NH2STNet(AttnNet):
    """NH2ST-style: the spot's own tokens cross-attend to its neighbours' tokens.

    Same token embedding as :class:`AttnNet`. Queries are the ``n_own`` own tokens (the spot at
    each field of view); keys/values are the neighbour tokens plus a learned null token (so a
    spot without neighbours still has something to attend to). The fused spot representation
    (mean of the queries after the blocks) predicts the genes. With targets given (training),
    also returns the auxiliary loss: InfoNCE between the target branch's image embedding (mean
    own token) and the spot's expression embedding, and between the neighbour branch's image
    embedding (masked mean of neighbour tokens) and the mean expression of the neighbours.
    """

    def __init__(self, d_in: int, n_types: int, d_model: int, n_heads: int, n_layers: int,
                 d_out: int, dropout: float, input_dropout: float, n_pos_freqs: int,
                 n_own: int, proj_dim: int = 64):
        super().__init__(d_in, n_types, d_model, n_heads, n_layers, d_out, dropout,
                         input_dropout, n_pos_freqs)
        self.n_own = n_own
        self.null = nn.Parameter(torch.zeros(1, 1, d_model))
        self.img_t = nn.Linear(d_model, proj_dim)
        self.img_n = nn.Linear(d_model, proj_dim)
        self.expr = nn.Sequential(nn.Linear(d_out, 2 * proj_dim), nn.GELU(),
                                  nn.Linear(2 * proj_dim, proj_dim))

    def forward(self, x, rel, types, valid, y=None, y_nb=None, nb_ok=None, temperature=0.05):
        from stfeat.heads._paper_nets import info_nce

        F = torch.nn.functional
        ang = rel[..., None] * self.freqs
        fourier = torch.cat([ang.sin(), ang.cos()], dim=-1).flatten(2)
        h = self.norm_in(self.proj(self.in_drop(x)) + self.type_emb(types)[None]
                         + self.pos(fourier))
        own, nb = h[:, :self.n_own], h[:, self.n_own:]
        nb_valid = valid[:, self.n_own:]
        kv = torch.cat([self.null.expand(len(h), 1, -1), nb], dim=1)
        pad = torch.cat([torch.zeros(len(h), 1, dtype=torch.bool, device=h.device), ~nb_valid], 1)
        q = own
        for blk in self.blocks:
            q = blk(q, kv, pad)
        pred = self.out(q.mean(1))
        if y is None:
            return pred
        ze = F.normalize(self.expr(y), dim=-1)
        aux = info_nce(F.normalize(self.img_t(own.mean(1)), dim=-1), ze, temperature)
        w = nb_valid.to(h.dtype)[..., None]
        ok = nb_ok > 0
        if nb.shape[1] and int(ok.sum()) >= 2:
            nb_mean = (nb * w).sum(1) / w.sum(1).clamp(min=1.0)
            zn = F.normalize(self.img_n(nb_mean[ok]), dim=-1)
            aux = aux + info_nce(zn, F.normalize(self.expr(y_nb[ok]), dim=-1), temperature)
        return pred, aux
