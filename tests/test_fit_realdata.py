"""Stage two on the real HER2ST sections (skipped without ../shared/data): split and targets."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.realdata


def test_her2st_split_and_training_only_genes(her2st):
    from stfeat.evaluate import make_splits
    from stfeat.io import resolve_samples
    from stfeat.targets import Expression, select_genes, target_matrix

    refs = resolve_samples(her2st)
    plan = make_splits([r.sample_id for r in refs], [r.patient for r in refs], "auto")
    assert plan.mode == "loso" and len(plan.folds) == 5
    assert ("all 5 sections come from one patient: C; leave-one-section-out, which does NOT test "
            "generalisation across patients") in plan.notes
    exprs = {r.sample_id: Expression.from_sample(r.load()) for r in refs[:3]}
    train = [exprs[s] for s in list(exprs)[1:]]
    sel = select_genes(train, "hvg:50")
    assert len(sel.genes) == 50 and sel.train_samples == list(exprs)[1:]
    assert all(g in set(e.genes) for e in train for g in sel.genes)
    # library size over ALL genes: cp10k of the full matrix sums to 1e4 per non-empty spot
    e = exprs[list(exprs)[0]]
    full = target_matrix(e, list(e.genes), "cp10k")
    ok = e.library_size > 0
    np.testing.assert_allclose(full[ok].sum(axis=1), 1e4, rtol=1e-3)
    Y = target_matrix(e, sel.genes, "log1p_cp10k")
    assert Y.shape == (e.n_spots, 50) and np.isfinite(Y).all()
