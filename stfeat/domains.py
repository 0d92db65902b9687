"""Spatial-domain agreement: do clusters of predicted expression find the tissue's domains?

Per held-out sample, k-means (seeded) on the standardised predicted expression and, separately, on the
standardised measured expression; the adjusted Rand index (ARI) and normalised mutual information (NMI,
scikit-learn) between the two clusterings, and, when the sample has region labels (e.g. a pathologist's
annotation, ``obs["region"]`` of the sample), between the predicted-expression clusters and the labels
(measured-expression clusters against the labels are given as the reference). k is the number of label
classes when labels exist, else :data:`DEFAULT_K`.
"""

from __future__ import annotations

import numpy as np

DEFAULT_K = 5


def _clusters(M: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(StandardScaler().fit_transform(M))


def domain_agreement(predictions: dict, labels: dict | None = None, *, k_default: int = DEFAULT_K, seed: int = 0):
    """One row per held-out sample (``predictions``: sample id -> AnnData with ``X`` predicted and
    ``layers["measured"]``; ``labels``: sample id -> per-spot labels, None/"" = unlabelled)."""
    import pandas as pd
    from sklearn.metrics import adjusted_rand_score as ari
    from sklearn.metrics import normalized_mutual_info_score as nmi

    rows = []
    for sid, a in predictions.items():
        P = np.asarray(a.X, np.float64)
        M = np.asarray(a.layers["measured"], np.float64)
        keep = np.isfinite(P).all(axis=0) & np.isfinite(M).all(axis=0)
        P, M = P[:, keep], M[:, keep]
        lab = None if labels is None else labels.get(sid)
        has = None
        if lab is not None:
            lab = np.asarray(lab, dtype=object)
            has = np.array([x not in (None, "") and x == x for x in lab], bool)
            if not has.any():
                lab = None
        k = len(set(lab[has])) if lab is not None else k_default
        row = {"sample": sid, "n_spots": len(P), "n_genes": int(keep.sum()), "k": k,
               "k_source": "label classes" if lab is not None else "default"}
        if k < 2 or len(P) <= k or P.shape[1] == 0:
            rows.append(row)
            continue
        cp, cm = _clusters(P, k, seed), _clusters(M, k, seed)
        row.update(ari_pred_vs_measured=ari(cm, cp), nmi_pred_vs_measured=nmi(cm, cp))
        if lab is not None:
            y = lab[has].astype(str)
            row.update(n_labelled=int(has.sum()), ari_pred_vs_labels=ari(y, cp[has]), nmi_pred_vs_labels=nmi(y, cp[has]),
                       ari_measured_vs_labels=ari(y, cm[has]), nmi_measured_vs_labels=nmi(y, cm[has]))
        rows.append(row)
    return pd.DataFrame(rows)
