"""Prediction targets: which genes, and on which scale.

Two decisions are made here, both from TRAINING data only (per fold):

* **Gene selection** (:func:`select_genes`), from a rule string:

  - ``"hvg:K"``: the K most variable genes, ranked by the variance over all training spots (pooled
    across training samples) of ``log1p(counts per 10k)``. Plain variance of the log-normalised
    values, not Seurat's binned dispersion: with tens of genes chosen from one tissue type it picks
    the same genes and needs no binning choices.
  - ``"hex:K"``: the K most highly expressed genes, ranked by the mean of ``log1p(counts per 10k)``
    over the training spots.
  - ``"file:PATH"``: the genes listed in PATH (one symbol per line, ``#`` comments allowed); genes
    missing from the training data are reported by name.
  - ``"common"``: every gene present in all training samples.

  Candidates are always the genes present in every training sample. A test sample that lacks a
  chosen gene gets zeros for it (in legacy ST and Space Ranger tables an absent gene had no counts),
  with a warning naming the sample and genes.

* **Target transform** (:func:`transform_counts`): ``log1p_cp10k`` by default, i.e.
  ``log1p(1e4 * counts / library_size)`` where the library size is the total count over ALL genes of
  the spot, computed before the gene subset is taken. Others: ``raw``, ``log1p``, ``cp10k``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from stfeat.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import scipy.sparse as sp

log = logging.getLogger(__name__)

TRANSFORMS = ("log1p_cp10k", "cp10k", "log1p", "raw")
GENE_RULES = ("hvg", "hex", "file", "common")
RANKING_NOTE = "ranked on training spots by {stat} of log1p(counts per 10k), library size over all genes"


@dataclass
class Expression:
    """Raw counts of one sample with its library sizes (computed over all genes).

    Attributes
    ----------
    sample_id
        The sample's id.
    genes
        Gene symbols, (g,) str, unique.
    counts
        Raw counts, scipy CSR (n, g) float32.
    library_size
        Total counts per spot over ALL genes, (n,) float64.
    """

    sample_id: str
    genes: np.ndarray
    counts: "sp.csr_matrix"
    library_size: np.ndarray
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    @classmethod
    def from_matrix(cls, sample_id: str, counts, genes: Sequence[str]) -> "Expression":
        """Build from a counts matrix (dense or sparse, spots x genes) and gene symbols."""
        import scipy.sparse as sp

        X = sp.csr_matrix(counts, dtype=np.float32)
        genes = np.asarray([str(g) for g in genes], dtype=object)
        if X.shape[1] != len(genes):
            raise ValueError(f"{sample_id}: {X.shape[1]} count columns but {len(genes)} gene names")
        if len(set(genes)) != len(genes):
            # Duplicated symbols (e.g. two Ensembl ids for one symbol): sum them, like scanpy's var_names_make_unique
            # would not; summing keeps the library size right and the symbol unique.
            uniq, inv = np.unique(genes, return_inverse=True)
            agg = sp.csr_matrix((np.ones(len(genes), np.float32), (np.arange(len(genes)), inv)),
                                shape=(len(genes), len(uniq)))
            log.warning("%s: %d duplicated gene symbols summed", sample_id, len(genes) - len(uniq))
            X, genes = (X @ agg).tocsr(), uniq.astype(object)
        lib = np.asarray(X.sum(axis=1)).ravel().astype(np.float64)
        return cls(sample_id=str(sample_id), genes=genes, counts=X, library_size=lib)

    @classmethod
    def from_sample(cls, sample) -> "Expression":
        """Build from a :class:`stfeat.io.Sample` (raw counts in ``adata.X``)."""
        return cls.from_matrix(sample.sample_id, sample.adata.X, sample.adata.var_names)

    @property
    def index(self) -> dict[str, int]:
        if not self._index:
            self._index = {g: i for i, g in enumerate(self.genes)}
        return self._index

    @property
    def n_spots(self) -> int:
        return int(self.counts.shape[0])

    def columns(self, genes: Sequence[str]) -> tuple["sp.csr_matrix", list[str]]:
        """Counts of ``genes`` in that order, zeros for absent genes; returns (matrix, missing genes)."""
        import scipy.sparse as sp

        idx = self.index
        cols = [idx.get(g, -1) for g in genes]
        missing = [g for g, c in zip(genes, cols) if c < 0]
        present = [i for i, c in enumerate(cols) if c >= 0]
        sel = sp.csr_matrix(
            (np.ones(len(present), np.float32), ([cols[i] for i in present], present)),
            shape=(len(self.genes), len(genes)),
        )
        return (self.counts @ sel).tocsr(), missing


def check_transform(name: str) -> str:
    """Return ``name`` if it is a known target transform, else raise InputError listing them."""
    if name not in TRANSFORMS:
        raise InputError(None, f"unknown target transform {name!r}.", f"choose one of {', '.join(TRANSFORMS)}.")
    return name


def transform_counts(counts, library_size: np.ndarray, transform: str = "log1p_cp10k") -> np.ndarray:
    """Apply a target transform to raw counts of (already subset) genes.

    Parameters
    ----------
    counts
        Raw counts (n, g), dense or sparse.
    library_size
        Total counts per spot over ALL genes, taken before subsetting, (n,).
    transform
        ``log1p_cp10k`` (default), ``cp10k``, ``log1p`` or ``raw``.

    Returns
    -------
    Dense float32 (n, g). Spots with a zero library size get zeros under the cp10k transforms.
    """
    import scipy.sparse as sp

    check_transform(transform)
    X = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    X = X.astype(np.float64, copy=True)
    if transform in ("cp10k", "log1p_cp10k"):
        lib = np.asarray(library_size, dtype=np.float64)
        scale = np.divide(1e4, lib, out=np.zeros_like(lib), where=lib > 0)
        X *= scale[:, None]
    if transform in ("log1p", "log1p_cp10k"):
        np.log1p(X, out=X)
    return X.astype(np.float32)


def _lognorm_sparse(expr: Expression, cols: np.ndarray) -> "sp.csr_matrix":
    """log1p(cp10k) of the given columns, staying sparse (zeros map to zeros)."""
    import scipy.sparse as sp

    X = expr.counts[:, cols].tocsr().astype(np.float64)
    lib = expr.library_size
    scale = np.divide(1e4, lib, out=np.zeros_like(lib), where=lib > 0)
    X = sp.diags(scale) @ X
    X = X.tocsr()
    X.data = np.log1p(X.data)
    return X


def gene_stats(train: Sequence[Expression], genes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of log1p(cp10k) for ``genes`` over all training spots pooled.

    Genes absent from a sample count as zeros there.
    """
    genes = list(genes)
    n = 0
    s1 = np.zeros(len(genes))
    s2 = np.zeros(len(genes))
    for e in train:
        idx = e.index
        cols = np.array([idx.get(g, -1) for g in genes])
        ok = cols >= 0
        if ok.any():
            L = _lognorm_sparse(e, cols[ok])
            s1[ok] += np.asarray(L.sum(axis=0)).ravel()
            s2[ok] += np.asarray(L.multiply(L).sum(axis=0)).ravel()
        n += e.n_spots
    if n == 0:
        raise ValueError("no training spots to compute gene statistics on")
    mean = s1 / n
    var = np.maximum(s2 / n - mean**2, 0.0)
    return mean, var


@dataclass(frozen=True)
class GeneRule:
    """A parsed gene-selection rule (see the module docstring)."""

    kind: str
    k: int | None = None
    path: Path | None = None

    @classmethod
    def parse(cls, spec: str) -> "GeneRule":
        """Parse ``hvg:50``, ``hex:50``, ``file:PATH`` or ``common``."""
        spec = str(spec).strip()
        kind, _, arg = spec.partition(":")
        kind = kind.lower()
        if kind == "common" and not arg:
            return cls("common")
        if kind in ("hvg", "hex"):
            try:
                k = int(arg)
            except ValueError:
                k = -1
            if k <= 0:
                raise InputError(None, f"gene rule {spec!r}: {kind} needs a positive count.", f"write e.g. {kind}:50.")
            return cls(kind, k=k)
        if kind == "file" and arg:
            p = Path(arg).expanduser()
            if not p.is_file():
                raise InputError(p, "gene list file not found.", "give an existing file, one gene symbol per line.")
            return cls("file", path=p)
        raise InputError(None, f"unknown gene rule {spec!r}.", "use hvg:K, hex:K, file:PATH or common.")

    def describe(self) -> str:
        if self.kind == "hvg":
            return f"top-{self.k} highly variable genes, " + RANKING_NOTE.format(stat="variance")
        if self.kind == "hex":
            return f"top-{self.k} highly expressed genes, " + RANKING_NOTE.format(stat="mean")
        if self.kind == "file":
            return f"genes listed in {self.path}"
        return "all genes present in every training sample"

    def __str__(self) -> str:
        if self.kind in ("hvg", "hex"):
            return f"{self.kind}:{self.k}"
        if self.kind == "file":
            return f"file:{self.path}"
        return "common"


def read_gene_list(path: str | Path) -> list[str]:
    """Gene symbols from a text file, one per line; blank lines and ``#`` comments ignored."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read gene list ({exc}).", "give a UTF-8 text file, one gene per line.")
    genes: list[str] = []
    for line in lines:
        g = line.split("#", 1)[0].strip()
        if g and g not in genes:
            genes.append(g)
    if not genes:
        raise InputError(path, "the gene list is empty.", "write one gene symbol per line.")
    return genes


def common_genes(exprs: Sequence[Expression]) -> list[str]:
    """Genes present in every sample, in the order of the first sample."""
    if not exprs:
        return []
    shared = set(exprs[0].genes)
    for e in exprs[1:]:
        shared &= set(e.genes)
    return [g for g in exprs[0].genes if g in shared]


@dataclass
class GeneSelection:
    """The result of :func:`select_genes`: genes, the rule and the training statistics behind it."""

    genes: list[str]
    rule: str
    description: str
    train_samples: list[str]
    mean: np.ndarray  # log1p(cp10k) mean per chosen gene over training spots
    var: np.ndarray  # log1p(cp10k) variance per chosen gene over training spots
    missing: list[str] = field(default_factory=list)  # file rule: listed genes absent from training data

    def top_k(self, k: int, by: str) -> list[str]:
        """The ``k`` chosen genes with the highest training ``var`` (by="hvg") or ``mean`` (by="hex")."""
        score = self.var if by == "hvg" else self.mean
        order = np.argsort(-score, kind="stable")[: min(k, len(self.genes))]
        return [self.genes[i] for i in order]

    def to_dict(self) -> dict:
        return {
            "genes": list(self.genes),
            "rule": self.rule,
            "description": self.description,
            "train_samples": list(self.train_samples),
            "missing_from_training": list(self.missing),
        }


def select_genes(train: Sequence[Expression], rule: str | GeneRule) -> GeneSelection:
    """Choose target genes from training samples only.

    Parameters
    ----------
    train
        Expression of the training samples of one fold (or of all samples for the final model).
    rule
        ``hvg:K``, ``hex:K``, ``file:PATH``, ``common`` or a :class:`GeneRule`.

    Returns
    -------
    GeneSelection
        Genes in rank order (hvg/hex) or file/common order, with their training statistics.
    """
    rule = rule if isinstance(rule, GeneRule) else GeneRule.parse(rule)
    if not train:
        raise ValueError("select_genes needs at least one training sample")
    candidates = common_genes(train)
    if not candidates:
        raise InputError(None, f"the training samples {[e.sample_id for e in train]} share no gene.",
                         "check that all samples use the same gene naming (symbols vs Ensembl ids).")
    missing: list[str] = []
    if rule.kind == "file":
        listed = read_gene_list(rule.path)
        cand = set(candidates)
        genes = [g for g in listed if g in cand]
        missing = [g for g in listed if g not in cand]
        if missing:
            log.warning("%d of %d genes in %s are not in every training sample and are dropped: %s",
                        len(missing), len(listed), rule.path, ", ".join(missing[:20]) + (" ..." if len(missing) > 20 else ""))
        if not genes:
            raise InputError(rule.path, f"none of the {len(listed)} listed genes is present in every training sample "
                             f"(e.g. {', '.join(listed[:5])}).", "check the gene symbols against the count tables.")
        mean, var = gene_stats(train, genes)
    elif rule.kind == "common":
        genes = candidates
        mean, var = gene_stats(train, genes)
    else:
        mean_all, var_all = gene_stats(train, candidates)
        score = var_all if rule.kind == "hvg" else mean_all
        if rule.k > len(candidates):
            log.warning("asked for %d genes but only %d are present in every training sample", rule.k, len(candidates))
        # stable sort on -score; ties broken by the first sample's gene order, so the choice is deterministic
        order = np.argsort(-score, kind="stable")[: rule.k]
        genes = [candidates[i] for i in order]
        mean, var = mean_all[order], var_all[order]
    return GeneSelection(genes=genes, rule=str(rule), description=rule.describe(),
                         train_samples=[e.sample_id for e in train], mean=mean, var=var, missing=missing)


def target_matrix(expr: Expression, genes: Sequence[str], transform: str = "log1p_cp10k") -> np.ndarray:
    """Transformed targets (n, len(genes)) float32 for one sample; absent genes are zeros (warned)."""
    counts, missing = expr.columns(list(genes))
    if missing:
        log.warning("%s lacks %d target genes, taken as zero counts: %s", expr.sample_id, len(missing),
                    ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    return transform_counts(counts, expr.library_size, transform)
