"""Mergeable statistics: one implementation of each training statistic for every engine.

Everything the trainer computes from rows is, or can be made, a merge of statistics over
chunks of rows (issue 19). Each statistic here is a small object holding its
hyper-parameters (scikit-learn style: stored unchanged) with four methods:

``init() -> state``
    The statistic of no rows.
``update(state, chunk) -> state``
    Add the rows of one chunk (a :class:`pandas.DataFrame` as
    :func:`segstream.shared.data.iter_batches` yields it; empty chunks are fine). May update
    ``state`` in place and returns it.
``merge(a, b) -> state``
    The statistic of the rows of ``a`` and of ``b``. Exact statistics (counts, histograms,
    sums) are commutative and associative up to floating-point rounding of the sums (exactly
    so for integer-valued data); sketches are within their stated error whatever the order.
``finalize(state) -> result``
    The value the trainer uses (edges, histograms, solved coefficients, metrics).

States are plain numpy containers (sketches travel as their serialised bytes), so they pickle
and can be Dask task results. The engines (:mod:`segstream.training.engines`) decide how chunks
are scheduled; the maths is here, and the row kernels are the partitioner's and the group-by
engine's own (``_hist_rows``, ``_assign_bins``, ``_ols_suffstats``, ``_ols_merge_parts``,
``_glm_accumulate``), called on each chunk, never copied.

Groups and nodes are given per row by a column name or a callable ``chunk -> int array``
(values ``< 0``: the row belongs to none and is skipped); callables must be picklable
(module-level functions or :func:`functools.partial`) for a Dask cluster.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import pandas as pd
from numba import njit

from segstream.training._groupby_kernels import _ols_merge_parts

S = TypeVar("S")

Rows = str | Callable[[pd.DataFrame], np.ndarray]

__all__ = [
    "BinEdges",
    "EvaluationSums",
    "GLMIRLSStats",
    "Joint",
    "KLLSketch",
    "MomentStats",
    "NodeHistograms",
    "OLSSuffStats",
    "OutcomeHistograms",
    "ResidualQuantiles",
    "Statistic",
    "fold",
]


class Statistic(Protocol[S]):
    """What an engine needs of a statistic (see the module docstring)."""

    def init(self) -> S: ...

    def update(self, state: S, chunk: pd.DataFrame) -> S: ...

    def merge(self, a: S, b: S) -> S: ...

    def finalize(self, state: S) -> Any: ...


def fold(stat: Statistic[S], chunks: Any) -> S:
    """``update`` over an iterable of chunks from ``init`` (the sequential engine's inner loop)."""
    st = stat.init()
    for c in chunks:
        st = stat.update(st, c)
    return st


class Joint:
    """Several statistics in one pass over the rows (the data are read once): the state is
    the tuple of their states, merged and finalised member by member.

    Parameters
    ----------
    stats : sequence of Statistic
    """

    def __init__(self, stats: Sequence[Any]) -> None:
        self.stats = stats

    def init(self) -> tuple[Any, ...]:
        return tuple(s.init() for s in self.stats)

    def update(self, state: tuple[Any, ...], chunk: pd.DataFrame) -> tuple[Any, ...]:
        return tuple(s.update(x, chunk) for s, x in zip(self.stats, state, strict=True))

    def merge(self, a: tuple[Any, ...], b: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(s.merge(x, y) for s, x, y in zip(self.stats, a, b, strict=True))

    def finalize(self, state: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(s.finalize(x) for s, x in zip(self.stats, state, strict=True))


def _rows_of(spec: Rows, chunk: pd.DataFrame) -> np.ndarray:
    if callable(spec):
        out = np.asarray(spec(chunk))
    else:
        out = chunk[spec].to_numpy()
    if out.shape != (len(chunk),):
        raise ValueError(f"group/node ids must have shape ({len(chunk)},), got {out.shape}")
    return out.astype(np.int64, copy=False)


def _matrix(chunk: pd.DataFrame, cols: Sequence[str]) -> np.ndarray:
    if not len(cols):
        return np.empty((len(chunk), 0))
    return np.ascontiguousarray(chunk[list(cols)].to_numpy(np.float64))


# --------------------------------------------------------------------------- sketches


class KLLSketch:
    """A KLL quantile sketch of float64 values that pickles (as its serialised bytes).

    Wraps Apache DataSketches' ``kll_doubles_sketch`` (NaN values are ignored). Normalised
    rank error about ``1.65 / k**0.966`` for a single quantile at 99 % confidence (``k = 200``:
    1.33 %), whatever the order or grouping of updates and merges.

    References
    ----------
    Karnin, Lang & Liberty, "Optimal quantile approximation in streams", FOCS 2016;
    Apache DataSketches, https://datasketches.apache.org (``datasketches`` on PyPI).
    """

    __slots__ = ("k", "sketch")

    def __init__(self, k: int = 200) -> None:
        from datasketches import kll_doubles_sketch

        self.k = int(k)
        self.sketch = kll_doubles_sketch(self.k)

    def update(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size:
            self.sketch.update(v)

    def merge(self, other: KLLSketch) -> KLLSketch:
        """Merge ``other`` into this sketch; returns it."""
        if not other.sketch.is_empty():
            self.sketch.merge(other.sketch)
        return self

    @property
    def n(self) -> int:
        return int(self.sketch.n)

    def quantiles(self, ranks: np.ndarray) -> np.ndarray:
        """Values at normalised ``ranks`` in [0, 1] (NaN for an empty sketch)."""
        r = np.asarray(ranks, dtype=np.float64)
        if self.sketch.is_empty():
            return np.full(r.shape, np.nan)
        return np.asarray(self.sketch.get_quantiles(r.tolist()), dtype=np.float64)

    def rank(self, value: float) -> float:
        return float(self.sketch.get_rank(float(value)))

    def __getstate__(self) -> tuple[int, bytes]:
        return self.k, self.sketch.serialize()

    def __setstate__(self, state: tuple[int, bytes]) -> None:
        from datasketches import kll_doubles_sketch

        self.k = state[0]
        self.sketch = kll_doubles_sketch.deserialize(state[1])


# --------------------------------------------------------------------------- moments


@dataclass
class MomentState:
    """Per column: finite count, mean, centred sum of squares, min, max (float64 arrays)."""

    n: np.ndarray
    mean: np.ndarray
    m2: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


class MomentStats:
    """Finite count, min, max, mean and standard deviation (ddof 0) of numeric columns: the
    partitioner's target scaler (``_finite_stats``) over chunks.

    Merged with the pairwise update of Chan, Golub & LeVeque (1979/1983): ``M2 = M2a + M2b +
    d^2 na nb / n``; agrees with the two-pass whole-data result to about 1e-12 relative.

    Parameters
    ----------
    columns : sequence of str
    """

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = columns

    def init(self) -> MomentState:
        k = len(self.columns)
        return MomentState(
            np.zeros(k), np.zeros(k), np.zeros(k), np.full(k, np.inf), np.full(k, -np.inf)
        )

    def update(self, state: MomentState, chunk: pd.DataFrame) -> MomentState:
        if len(chunk) == 0:
            return state
        X = _matrix(chunk, self.columns)
        fin = np.isfinite(X)
        n = fin.sum(axis=0).astype(np.float64)
        Xz = np.where(fin, X, 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(n > 0, Xz.sum(axis=0) / np.maximum(n, 1), 0.0)
        m2 = (np.where(fin, X - mean, 0.0) ** 2).sum(axis=0)
        lo = np.where(fin, X, np.inf).min(axis=0)
        hi = np.where(fin, X, -np.inf).max(axis=0)
        return self.merge(state, MomentState(n, mean, m2, lo, hi))

    def merge(self, a: MomentState, b: MomentState) -> MomentState:
        n = a.n + b.n
        d = b.mean - a.mean
        with np.errstate(invalid="ignore", divide="ignore"):
            w = np.where(n > 0, b.n / np.where(n > 0, n, 1.0), 0.0)
        mean = a.mean + d * w
        m2 = a.m2 + b.m2 + d * d * a.n * w
        return MomentState(n, mean, m2, np.minimum(a.lo, b.lo), np.maximum(a.hi, b.hi))

    def finalize(self, state: MomentState) -> dict[str, tuple[int, float, float, float, float]]:
        """Per column ``(count, min, max, mean, std)`` as ``_finite_stats`` (NaN when empty)."""
        out = {}
        for j, c in enumerate(self.columns):
            if state.n[j] == 0:
                out[c] = (0, np.nan, np.nan, np.nan, np.nan)
            else:
                out[c] = (
                    int(state.n[j]),
                    float(state.lo[j]),
                    float(state.hi[j]),
                    float(state.mean[j]),
                    math.sqrt(state.m2[j] / state.n[j]),
                )
        return out


# --------------------------------------------------------------------------- bin edges


@dataclass
class EdgeState:
    """Per feature: a KLL sketch and the distinct finite values while there are at most
    ``max_bins`` of them (``None`` once there are more)."""

    sketches: list[KLLSketch]
    distinct: list[np.ndarray | None]


class BinEdges:
    """The partitioner's histogram bin edges of each feature, over chunks.

    Same rule as the partitioner's ``_quantile_bins``: a feature with at most ``max_bins``
    distinct finite values gets the midpoints between them (tracked exactly: the distinct
    sets are unions, so these edges equal the whole-data ones); otherwise the edges are the
    quantiles at ``linspace(0, 1, max_bins + 1)[1:-1]`` of a KLL sketch (rank error of each
    edge within the sketch's bound, 1.33 % at ``k = 200``), deduplicated and below the
    maximum.

    Parameters
    ----------
    features : sequence of str
    max_bins : int, default=255
        2..255, as the partitioner.
    k : int, default=200
        KLL accuracy parameter.

    References
    ----------
    Ke et al., "LightGBM", NeurIPS 2017 (histogram split finding); see :class:`KLLSketch`.
    """

    def __init__(self, features: Sequence[str], *, max_bins: int = 255, k: int = 200) -> None:
        self.features = features
        self.max_bins = max_bins
        self.k = k

    def init(self) -> EdgeState:
        F = len(self.features)
        return EdgeState([KLLSketch(self.k) for _ in range(F)], [np.empty(0)] * F)

    def update(self, state: EdgeState, chunk: pd.DataFrame) -> EdgeState:
        if len(chunk) == 0:
            return state
        X = _matrix(chunk, self.features)
        part = self.init()
        for j in range(X.shape[1]):
            x = X[:, j]
            x = x[np.isfinite(x)]
            part.sketches[j].update(x)
            u = np.unique(x)
            part.distinct[j] = u if u.size <= self.max_bins else None
        return self.merge(state, part)

    def merge(self, a: EdgeState, b: EdgeState) -> EdgeState:
        sk, dist = [], []
        for j in range(len(self.features)):
            s = KLLSketch(self.k)
            s.merge(a.sketches[j]).merge(b.sketches[j])
            sk.append(s)
            da, db = a.distinct[j], b.distinct[j]
            if da is None or db is None:
                dist.append(None)
            else:
                u = np.union1d(da, db)
                dist.append(u if u.size <= self.max_bins else None)
        return EdgeState(sk, dist)

    def finalize(self, state: EdgeState) -> tuple[np.ndarray, np.ndarray]:
        """``(edges (F, max_bins - 1) float64 padded with +inf, nbins (F,) int64)``: the
        partitioner's layout (code ``b`` means ``edges[b-1] < x <= edges[b]``)."""
        F = len(self.features)
        mb = self.max_bins
        edges = np.full((F, max(mb - 1, 1)), np.inf)
        nbins = np.ones(F, dtype=np.int64)
        for j in range(F):
            u = state.distinct[j]
            if u is not None:
                if u.size == 0:
                    continue
                th = u[:-1] + (u[1:] - u[:-1]) / 2.0
                bad = th >= u[1:]
                th[bad] = u[:-1][bad]
            else:
                sk = state.sketches[j]
                q = sk.quantiles(np.linspace(0.0, 1.0, mb + 1)[1:-1])
                th = np.unique(q)
                th = th[th < sk.quantiles(np.array([1.0]))[0]]
            edges[j, : th.size] = th
            nbins[j] = th.size + 1
        return edges, nbins


def assign_bins(X: np.ndarray, edges: np.ndarray, max_bins: int) -> np.ndarray:
    """uint8 bin codes (n, F) of ``X (n, F)`` on ``edges`` from :meth:`BinEdges.finalize`
    (NaN -> ``max_bins``), with the partitioner's own kernel ``_assign_bins``."""
    from segstream.training.partitioner import _assign_bins

    n, F = X.shape
    out = np.empty((n, F), dtype=np.uint8)
    if n == 0:
        return out
    padded = np.full((F, 256), np.inf)
    padded[:, : edges.shape[1]] = edges
    Zs = np.ascontiguousarray(X.T, dtype=np.float64)
    _assign_bins(Zs, np.arange(F, dtype=np.int64), padded, max_bins, out)
    return out


# --------------------------------------------------------------------------- node histograms


class NodeHistograms:
    """Per node, the partitioner's split histograms: ``(n_nodes, F, max_bins + 1, T + 1)``
    float64 with, per feature and bin, the sums of the (scaled) targets and the row count in
    the last slot (bin ``max_bins`` holds missing values), the layout of the partitioner's
    ``_hist_rows`` (which fills it, chunk by chunk, node by node).

    Parameters
    ----------
    features : sequence of str
        Split features (binned on ``edges``).
    edges : ndarray (F, max_bins - 1)
        From :meth:`BinEdges.finalize` (frozen for the pass).
    n_nodes : int
        Node ids run from 0 to ``n_nodes - 1``.
    node : str or callable
        Node of each row (``< 0``: no node growing in this pass, skipped).
    targets : callable
        ``chunk -> (n, T)`` targets as the partitioner uses them (scaled, weighted, float32;
        missing -> 0).
    max_bins : int, default=255

    Notes
    -----
    Merge is elementwise addition: counts are exact; target sums are float64 additions of
    float32 values, exact for integer-valued targets and otherwise equal to the whole-data
    histogram to rounding (about 1e-15 relative per addition).
    """

    def __init__(
        self,
        features: Sequence[str],
        edges: np.ndarray,
        n_nodes: int,
        node: Rows,
        targets: Callable[[pd.DataFrame], np.ndarray],
        *,
        max_bins: int = 255,
    ) -> None:
        self.features = features
        self.edges = edges
        self.n_nodes = n_nodes
        self.node = node
        self.targets = targets
        self.max_bins = max_bins

    def _T(self, chunk: pd.DataFrame) -> np.ndarray:
        Y = np.asarray(self.targets(chunk), dtype=np.float32)
        return Y.reshape(len(chunk), -1)

    def init(self) -> np.ndarray | None:
        return None  # T is known from the first chunk; None is the empty histogram

    def update(self, state: np.ndarray | None, chunk: pd.DataFrame) -> np.ndarray | None:
        from segstream.training.partitioner import _hist_rows

        if len(chunk) == 0:
            return state
        nd = _rows_of(self.node, chunk)
        Y = self._T(chunk)
        if state is None:
            F = len(self.features)
            state = np.zeros((self.n_nodes, F, self.max_bins + 1, Y.shape[1] + 1))
        sel = np.flatnonzero((nd >= 0) & (nd < self.n_nodes))
        if sel.size == 0:
            return state
        order = sel[np.argsort(nd[sel], kind="stable")]
        bins = assign_bins(_matrix(chunk, self.features)[order], self.edges, self.max_bins)
        Ys = np.ascontiguousarray(Y[order])
        ns = nd[order]
        cuts = np.flatnonzero(np.diff(ns)) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [ns.size]])
        for s, e in zip(starts, ends, strict=True):
            _hist_rows(bins, Ys, s, e, state[ns[s]])
        return state

    def merge(self, a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return b
        if b is None:
            return a
        return a + b

    def finalize(self, state: np.ndarray | None) -> np.ndarray | None:
        return state


# --------------------------------------------------------------------------- OLS


@njit(cache=True)
def _merge_tables(tab, p, out):  # pragma: no cover - numba
    """out[g] = every slice of ``tab (K, G, width)`` merged by ``_ols_merge_parts``."""
    for g in range(tab.shape[1]):
        _ols_merge_parts(tab, g, p, out[g])


class OLSSuffStats:
    """Per-group weighted sufficient statistics of a linear regression, over chunks.

    One table row per group in the group-by engine's layout (``ols_table_width(p)``
    doubles: ``n, sum w, sum w v, sum w u, sum w u v, sum w u u' (packed), max |x|, shifts``
    around the group's first row), filled per chunk by the engine's ``_ols_suffstats`` and
    merged by its ``_ols_merge_parts`` (moving one side's sums to the other's shift), so the
    merged statistics equal the whole-data ones to rounding (exactly for integer data).

    Parameters
    ----------
    features : sequence of str
        Predictors, p of them.
    target : str
    group : str or callable
        Group id of each row in ``[0, n_groups)`` (``< 0``: skipped).
    n_groups : int
    weight : str, optional
        Row weights (default 1). Rows with a non-finite predictor/target or a weight
        ``<= 0`` are skipped (the engine's ``keep``).

    References
    ----------
    Chan, Golub & LeVeque, "Algorithms for computing the sample variance", The American
    Statistician 37 (1983) (shifted and pairwise-merged sums).
    """

    def __init__(
        self,
        features: Sequence[str],
        target: str,
        group: Rows,
        n_groups: int,
        *,
        weight: str | None = None,
    ) -> None:
        self.features = features
        self.target = target
        self.group = group
        self.n_groups = n_groups
        self.weight = weight

    def init(self) -> np.ndarray:
        from segstream.training._groupby_kernels import ols_table_width

        return np.zeros((self.n_groups, ols_table_width(len(self.features))))

    def update(self, state: np.ndarray, chunk: pd.DataFrame) -> np.ndarray:
        from segstream.training._groupby_kernels import _ols_suffstats

        if len(chunk) == 0:
            return state
        X = _matrix(chunk, self.features)
        y = chunk[self.target].to_numpy(np.float64).reshape(-1, 1)
        w = np.ones(len(chunk)) if self.weight is None else chunk[self.weight].to_numpy(np.float64)
        codes = _rows_of(self.group, chunk)
        keep = (
            (codes >= 0)
            & (codes < self.n_groups)
            & np.isfinite(X).all(axis=1)
            & np.isfinite(y[:, 0])
            & (w > 0)
        )
        tab = np.zeros((1, *state.shape))
        _ols_suffstats(np.where(keep, codes, 0), keep, X, np.ascontiguousarray(y), w, tab)
        return self.merge(state, tab[0])

    def merge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.empty_like(a)
        _merge_tables(np.stack([a, b]), len(self.features), out)
        return out

    def finalize(self, state: np.ndarray) -> dict[str, np.ndarray]:
        """Centred statistics and the OLS solution per group.

        Returns
        -------
        dict
            ``n (G,)``, ``W (G,)`` total weight, ``xbar (G, p)``, ``ybar (G,)`` weighted means,
            ``A (G, p, p)`` = sum w dx dx', ``rhs (G, p)`` = sum w dx dy (centred), and
            ``coef (G, 1 + p)`` (intercept, slopes; NaN where ``A`` is singular or the group
            is empty), solved by numpy (the trainer solves with the engine's own solver).
        """
        p = len(self.features)
        G = state.shape[0]
        o_su, o_suv, o_suu = 3, 3 + p, 3 + 2 * p
        o_sh = o_suu + p * (p + 1) // 2 + p
        n = state[:, 0]
        W = state[:, 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            iW = np.where(W > 0, 1.0 / W, np.nan)
        su = state[:, o_su : o_su + p]
        suv = state[:, o_suv : o_suv + p]
        A = np.zeros((G, p, p))
        kk = o_suu
        for a in range(p):
            for b in range(a + 1):
                A[:, a, b] = state[:, kk]
                A[:, b, a] = state[:, kk]
                kk += 1
        A -= su[:, :, None] * su[:, None, :] * iW[:, None, None]
        rhs = suv - su * (state[:, 2] * iW)[:, None]
        xbar = state[:, o_sh : o_sh + p] + su * iW[:, None]
        ybar = state[:, o_sh + p] + state[:, 2] * iW
        coef = np.full((G, 1 + p), np.nan)
        for g in np.flatnonzero(W > 0):
            try:
                b = np.linalg.solve(A[g], rhs[g]) if p else np.empty(0)
            except np.linalg.LinAlgError:
                continue
            coef[g, 1:] = b
            coef[g, 0] = ybar[g] - b @ xbar[g]
        return {"n": n, "W": W, "xbar": xbar, "ybar": ybar, "A": A, "rhs": rhs, "coef": coef}


# --------------------------------------------------------------------------- GLM (one IRLS pass)


@dataclass
class GLMState:
    """Per group: working weight ``W``, working-response mean ``zbar``, predictor means
    ``xbar (G, p)``, centred ``A (G, p, p)`` and ``rhs (G, p)``, deviance, rows at the edge."""

    W: np.ndarray
    zbar: np.ndarray
    xbar: np.ndarray
    A: np.ndarray
    rhs: np.ndarray
    dev: np.ndarray
    extreme: np.ndarray


class GLMIRLSStats:
    """Statistics of one IRLS iteration of the group-by GLMs at fixed coefficients, over
    chunks: per chunk, the rows are laid out by group (the engine's ``_group_rows``) and
    ``_glm_accumulate`` computes each group's centred working statistics; chunks are merged
    with the pairwise update of Chan, Golub & LeVeque (``A = Aa + Ab + Wa Wb / W dx dx'``,
    likewise ``rhs``; deviance and edge-row counts add). The merged statistics feed the
    engine's ``_glm_update`` exactly as a whole-data pass would (equal to rounding).

    Parameters
    ----------
    features : sequence of str
    target : str
    group : str or callable
    coef : ndarray (G, 1 + p)
        Current coefficients (intercept, slopes) of each group.
    family : {"binomial", "poisson", "gaussian"}
    weight : str, optional
        Prior weights (default 1).
    offset : str, optional
        Offset column (e.g. log exposure).
    init : bool, default=False
        First iteration at the family's starting means (binomial only: ``mu = (y + 0.5) / 2``
        is row-local; Poisson's start needs the group mean of the whole data, so start it from
        coefficients ``[log ybar_g, 0, ...]`` computed by a :class:`MomentStats` pass).

    Raises
    ------
    ValueError
        ``init=True`` with the Poisson family; unknown family.

    References
    ----------
    McCullagh & Nelder, *Generalized Linear Models*, 2nd ed., 1989, ch. 2.5 (IRLS);
    Chan, Golub & LeVeque 1983 (merging centred sums).
    """

    def __init__(
        self,
        features: Sequence[str],
        target: str,
        group: Rows,
        coef: np.ndarray,
        *,
        family: str = "binomial",
        weight: str | None = None,
        offset: str | None = None,
        init: bool = False,
    ) -> None:
        self.features = features
        self.target = target
        self.group = group
        self.coef = coef
        self.family = family
        self.weight = weight
        self.offset = offset
        self.init_ = init

    def _family(self) -> int:
        from segstream.training import glm_kernels as k

        fams = {
            "gaussian": k.FAMILY_GAUSSIAN,
            "binomial": k.FAMILY_BINOMIAL,
            "poisson": k.FAMILY_POISSON,
        }
        if self.family not in fams:
            raise ValueError(f"family must be one of {sorted(fams)}, got {self.family!r}")
        if self.init_ and self.family == "poisson":
            raise ValueError(
                "init=True needs the whole-data group means for the Poisson family: start "
                "from coefficients [log ybar_g, 0, ...] instead"
            )
        return fams[self.family]

    def init(self) -> GLMState:
        G = self.coef.shape[0]
        p = len(self.features)
        return GLMState(
            np.zeros(G),
            np.zeros(G),
            np.full((G, p), np.nan),
            np.zeros((G, p, p)),
            np.zeros((G, p)),
            np.zeros(G),
            np.zeros(G, np.int64),
        )

    def update(self, state: GLMState, chunk: pd.DataFrame) -> GLMState:
        from segstream.training import glm_kernels as k
        from segstream.training.groupby_regression import _group_rows

        fam = self._family()
        if len(chunk) == 0:
            return state
        G = self.coef.shape[0]
        p = len(self.features)
        X = _matrix(chunk, self.features)
        y = chunk[self.target].to_numpy(np.float64)
        w = np.ones(len(y)) if self.weight is None else chunk[self.weight].to_numpy(np.float64)
        off = np.zeros(len(y)) if self.offset is None else chunk[self.offset].to_numpy(np.float64)
        codes = _rows_of(self.group, chunk)
        keep = (codes >= 0) & (codes < G)
        codes = np.where(keep, codes, 0)
        offsets, Xg, YOg, Wg = _group_rows(codes, keep, G, X, np.column_stack([y, off]), w)
        Yg = np.ascontiguousarray(YOg[:, :1])
        Og = np.ascontiguousarray(YOg[:, 1])
        m = Xg.shape[0]
        valid = np.isfinite(Xg).all(axis=1) & np.isfinite(Yg[:, 0]) & np.isfinite(Og) & (Wg > 0)
        if fam == k.FAMILY_BINOMIAL:
            valid &= (Yg[:, 0] >= 0) & (Yg[:, 0] <= 1)
        elif fam == k.FAMILY_POISSON:
            valid &= Yg[:, 0] >= 0
        counts = np.diff(offsets)
        part = self.init()
        active = (counts > 0).astype(np.uint8)
        kept = np.ones((G, p), np.uint8)
        Z = np.empty((m, 1))
        weff = np.empty(m)
        k._glm_accumulate(
            Xg, Yg, Og, Wg, offsets, 0, fam, self.init_, 1, active, kept, valid,
            np.ascontiguousarray(self.coef, dtype=np.float64), Z, weff, part.W, part.zbar,
            part.xbar, part.A, part.rhs, part.dev, part.extreme,
        )  # fmt: skip
        # groups with rows but no usable row: the kernel leaves W = 0 and NaN means
        part.xbar[part.W == 0] = np.nan
        return self.merge(state, part)

    def merge(self, a: GLMState, b: GLMState) -> GLMState:
        W = a.W + b.W
        with np.errstate(invalid="ignore", divide="ignore"):
            fb = np.where(W > 0, b.W / np.where(W > 0, W, 1.0), 0.0)
        fa = 1.0 - fb
        ax = np.where(a.W[:, None] > 0, a.xbar, 0.0)
        bx = np.where(b.W[:, None] > 0, b.xbar, 0.0)
        dx = bx - ax
        dz = b.zbar - a.zbar
        wab = a.W * fb  # Wa Wb / W
        both = (a.W > 0) & (b.W > 0)
        wab = np.where(both, wab, 0.0)
        xbar = np.where(W[:, None] > 0, ax * fa[:, None] + bx * fb[:, None], np.nan)
        zbar = np.where(W > 0, a.zbar * fa + b.zbar * fb, 0.0)
        A = a.A + b.A + wab[:, None, None] * dx[:, :, None] * dx[:, None, :]
        rhs = a.rhs + b.rhs + (wab * dz)[:, None] * dx
        return GLMState(W, zbar, xbar, A, rhs, a.dev + b.dev, a.extreme + b.extreme)

    def finalize(self, state: GLMState) -> GLMState:
        """The merged working statistics (the input of the engine's ``_glm_update``)."""
        return state


# --------------------------------------------------------------------------- outcome histograms


class OutcomeHistograms:
    """Per group, counts of the target in frozen bins (the outcome profiles' histograms, and
    drift reference histograms on frozen edges). Exact: integer counts, merge = addition.

    Parameters
    ----------
    target : str
    edges : ndarray (B + 1,)
        Increasing bin edges; values outside ``[edges[0], edges[-1]]`` are clipped into the
        first/last bin; non-finite values are not counted.
    group : str or callable
    n_groups : int
    """

    def __init__(self, target: str, edges: np.ndarray, group: Rows, n_groups: int) -> None:
        self.target = target
        self.edges = edges
        self.group = group
        self.n_groups = n_groups

    def init(self) -> np.ndarray:
        return np.zeros((self.n_groups, len(self.edges) - 1), np.int64)

    def update(self, state: np.ndarray, chunk: pd.DataFrame) -> np.ndarray:
        if len(chunk) == 0:
            return state
        y = chunk[self.target].to_numpy(np.float64)
        g = _rows_of(self.group, chunk)
        ok = np.isfinite(y) & (g >= 0) & (g < self.n_groups)
        B = len(self.edges) - 1
        b = np.clip(np.searchsorted(self.edges, y[ok], side="right") - 1, 0, B - 1)
        state += np.bincount(g[ok] * B + b, minlength=self.n_groups * B).reshape(state.shape)
        return state

    def merge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def finalize(self, state: np.ndarray) -> np.ndarray:
        """Counts ``(n_groups, B)`` int64."""
        return state


# --------------------------------------------------------------------------- residual quantiles


@dataclass
class SketchesByGroup:
    sketches: dict[int, KLLSketch] = field(default_factory=dict)


class ResidualQuantiles:
    """Per group (segment / node), a KLL sketch of the residuals ``target - prediction``: the
    quantiles of the prediction intervals, over chunks, in memory bounded per group (about
    ``k * log(n / k)`` values, a few KB) whatever the rows. Quantiles are within the KLL rank
    error (1.33 % at ``k = 200``) of the whole-data ones.

    Parameters
    ----------
    target, prediction : str or callable
        Column names, or callables ``chunk -> (n,)`` values.
    group : str or callable
    k : int, default=200
    """

    def __init__(
        self,
        target: str,
        prediction: str | Callable[[pd.DataFrame], np.ndarray],
        group: Rows,
        *,
        k: int = 200,
    ) -> None:
        self.target = target
        self.prediction = prediction
        self.group = group
        self.k = k

    def init(self) -> SketchesByGroup:
        return SketchesByGroup()

    def update(self, state: SketchesByGroup, chunk: pd.DataFrame) -> SketchesByGroup:
        if len(chunk) == 0:
            return state
        y = chunk[self.target].to_numpy(np.float64)
        pred = (
            np.asarray(self.prediction(chunk), dtype=np.float64)
            if callable(self.prediction)
            else chunk[self.prediction].to_numpy(np.float64)
        )
        r = y - pred
        g = _rows_of(self.group, chunk)
        ok = np.isfinite(r) & (g >= 0)
        g, r = g[ok], r[ok]
        order = np.argsort(g, kind="stable")
        g, r = g[order], r[order]
        cuts = np.flatnonzero(np.diff(g)) + 1
        for s, e in zip(np.r_[0, cuts], np.r_[cuts, g.size], strict=True):
            if e > s:
                key = int(g[s])
                sk = state.sketches.get(key)
                if sk is None:
                    sk = state.sketches[key] = KLLSketch(self.k)
                sk.update(r[s:e])
        return state

    def merge(self, a: SketchesByGroup, b: SketchesByGroup) -> SketchesByGroup:
        out = SketchesByGroup()
        for key in sorted(set(a.sketches) | set(b.sketches)):
            s = KLLSketch(self.k)
            for side in (a, b):
                if key in side.sketches:
                    s.merge(side.sketches[key])
            out.sketches[key] = s
        return out

    def finalize(self, state: SketchesByGroup) -> dict[int, KLLSketch]:
        """Group id -> its residual sketch (``quantiles``, ``rank``, ``n``)."""
        return state.sketches


# --------------------------------------------------------------------------- evaluation sums

_EVAL_FIELDS = ("n", "sum_abs", "sum_sq", "sum_err", "sum_y", "sum_y2", "covered")


class EvaluationSums:
    """Sums for MAE, RMSE, bias, R^2 and interval coverage, overall or per group; exact
    counts, float64 sums (merge = addition).

    Parameters
    ----------
    target, prediction : str
    group : str or callable, optional
        Per-group sums (``n_groups`` rows); default one row (everything).
    n_groups : int, default=1
    interval : (str, str), optional
        Columns of the interval's low and high ends, for coverage.
    """

    def __init__(
        self,
        target: str,
        prediction: str,
        *,
        group: Rows | None = None,
        n_groups: int = 1,
        interval: tuple[str, str] | None = None,
    ) -> None:
        self.target = target
        self.prediction = prediction
        self.group = group
        self.n_groups = n_groups
        self.interval = interval

    def init(self) -> np.ndarray:
        return np.zeros((self.n_groups, len(_EVAL_FIELDS)))

    def update(self, state: np.ndarray, chunk: pd.DataFrame) -> np.ndarray:
        if len(chunk) == 0:
            return state
        y = chunk[self.target].to_numpy(np.float64)
        p = chunk[self.prediction].to_numpy(np.float64)
        g = np.zeros(len(y), np.int64) if self.group is None else _rows_of(self.group, chunk)
        ok = np.isfinite(y) & np.isfinite(p) & (g >= 0) & (g < self.n_groups)
        y, p, g = y[ok], p[ok], g[ok]
        e = y - p
        cov = np.zeros(len(y))
        if self.interval is not None:
            lo = chunk[self.interval[0]].to_numpy(np.float64)[ok]
            hi = chunk[self.interval[1]].to_numpy(np.float64)[ok]
            cov = ((y >= lo) & (y <= hi)).astype(np.float64)
        vals = (np.ones(len(y)), np.abs(e), e * e, e, y, y * y, cov)
        for j, v in enumerate(vals):
            state[:, j] += np.bincount(g, weights=v, minlength=self.n_groups)
        return state

    def merge(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return a + b

    def finalize(self, state: np.ndarray) -> dict[str, np.ndarray]:
        """Per group: ``n``, ``mae``, ``rmse``, ``bias`` (mean of prediction - target),
        ``r2`` and ``coverage`` (NaN where ``n = 0``), each ``(n_groups,)``."""
        s = {f: state[:, j] for j, f in enumerate(_EVAL_FIELDS)}
        n = s["n"]
        with np.errstate(invalid="ignore", divide="ignore"):
            nn = np.where(n > 0, n, np.nan)
            sst = s["sum_y2"] - s["sum_y"] ** 2 / nn
            return {
                "n": n.astype(np.int64),
                "mae": s["sum_abs"] / nn,
                "rmse": np.sqrt(s["sum_sq"] / nn),
                "bias": -s["sum_err"] / nn,
                "r2": 1.0 - s["sum_sq"] / sst,
                "coverage": s["covered"] / nn,
            }
