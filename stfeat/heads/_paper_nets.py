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
