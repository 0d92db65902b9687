"""Stage-two heads: scikit-learn regressors from cached spot features to gene expression.

=============  =====================  =========================================================
name           class                  what it is
=============  =====================  =========================================================
hest-ridge     :class:`HestRidge`     HEST-Benchmark's probe: scaler, PCA(256), ridge (no intercept)
ridge          :class:`RidgeCVHead`   standardise + ridge, penalty by GCV or grouped k-fold
lgbm           :class:`LGBMHead`      LightGBM, one booster per gene, early stopping
mlp            :class:`MLPHead`       one-hidden-layer PyTorch MLP, early stopping
attention      :class:`AttentionHead` spot token attends to its other scales and neighbours
knn            :class:`KNNHead`       FAISS exemplar retrieval, similarity-weighted average
contrastive    :class:`ContrastiveHead`  InfoNCE image-expression space, top-k training retrieval
slide-transformer  :class:`SlideTransformerHead`  transformer over chunks of a section's spots
ensemble       :class:`EnsembleHead`  stacked heads (default ridge + lgbm + knn), non-negative weights per
                                      gene from grouped inner-CV out-of-fold predictions
=============  =====================  =========================================================

Every head: ``fit(X, Y)`` with X (n, d) float features and Y (n, n_genes); ``predict(X)``;
``get_params``/``set_params``/``clone``; ``save(dir)``/``load(dir)`` (no pickle, see
:func:`save_head`). The attention head also takes token arrays (n, T, d) and ``rel_pos``; the slide transformer takes
``coords_um`` and ``sample_ids``. Heads whose ``fit`` takes ``groups`` (ridge, lgbm, mlp, ensemble) use them for
grouped inner validation. The ensemble saves its base heads in sub-folders (``heads/<i>_<name>``).
"""

from __future__ import annotations

from stfeat.heads._base import BaseHead
from stfeat.heads._persist import load_head, save_head
from stfeat.heads.attention import AttentionHead
from stfeat.heads.contrastive import ContrastiveHead
from stfeat.heads.ensemble import EnsembleHead
from stfeat.heads.gbm import LGBMHead
from stfeat.heads.knn import KNNHead
from stfeat.heads.hest_ridge import HestRidge
from stfeat.heads.ridge import RidgeCVHead
from stfeat.heads.mlp import MLPHead
from stfeat.heads.slide_transformer import SlideTransformerHead

#: name -> head class
HEADS: dict[str, type[BaseHead]] = {
    cls.name: cls for cls in (HestRidge, RidgeCVHead, LGBMHead, MLPHead, AttentionHead, KNNHead,
                ContrastiveHead, SlideTransformerHead, EnsembleHead)
}


def make_head(name: str, **params) -> BaseHead:
    """An unfitted head by name (a key of :data:`HEADS`), with its parameters.

    Raises
    ------
    ValueError
        For an unknown name or parameter; the message lists the valid ones.
    """
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}. Fix: use one of {', '.join(sorted(HEADS))}.")
    cls = HEADS[name]
    valid = cls().get_params(deep=False)
    bad = sorted(set(params) - set(valid))
    if bad:
        raise ValueError(f"head {name!r} has no parameter(s) {bad}. Fix: use some of "
                         f"{sorted(valid)}.")
    return cls(**params)


# Short public names for notebooks (``st.heads.RidgeCV()``): the same classes as above.
RidgeCV = RidgeCVHead
LGBM = LGBMHead
MLP = MLPHead
Attention = AttentionHead
KNN = KNNHead
Ensemble = EnsembleHead

__all__ = ["RidgeCV", "LGBM", "MLP", "Attention", "KNN", "Ensemble", "EnsembleHead", "HEADS", "make_head", "save_head", "load_head", "BaseHead", "HestRidge", "RidgeCVHead",
           "LGBMHead", "MLPHead", "AttentionHead", "KNNHead", "ContrastiveHead",
           "SlideTransformerHead"]
