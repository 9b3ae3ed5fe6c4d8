"""Group-by regression: one weighted linear model per group, all groups in one numba pass.

The core, :func:`fit_groups`, works on plain arrays (integer group ids, a design matrix, one or
more targets, weights, an optional row selection) and returns a :class:`GroupFitResult` with
per group and target: intercept and slopes, their standard errors, weighted RMS, scaled MAD,
rows used and rejected, condition number and a status code. :func:`make_parallel_fit` is a
drop-in for ALICE O2DPG's ``GroupByRegressor.make_parallel_fit`` (same parameters, same output
column names).

How a group is fitted
---------------------
1. Rows are laid out group by group with a counting sort (O(n), no comparison sort).
2. ``min_stat`` (per predictor, as in O2DPG): a predictor with fewer than ``min_stat[j]`` rows
   having both it and the target finite is dropped from that group's fit; its slope is NaN.
3. Rows whose target or any kept predictor is NaN/inf are ignored for that fit.
4. Weighted sufficient statistics are accumulated *centred* (corrected two-pass sums), the
   cross-product matrix is Jacobi-scaled (unit diagonal) and solved by Cholesky. When
   Cholesky fails or the 1-norm condition number of the scaled matrix exceeds
   ``cond_fallback`` (default 1e6) the group is re-solved by Householder QR of its own rows;
   when QR finds dependent columns (``|R_jj| < 1e-10`` on unit-norm columns) the status is
   ``singular``. Centring and scaling make 1e12 offsets and 1e-12 units harmless.
5. Robust methods iterate inside the same kernel (see ``method``).

Statuses (``STATUS_CODES``): ``ok`` (0), ``too_few_rows`` (1: fewer usable rows than
parameters or ``min_rows``, or every predictor dropped by ``min_stat``), ``singular`` (2:
collinear or constant predictors, overflow), ``not_converged`` (3: the robust iteration or the
active-set solver hit its limit; the last iterate is reported), ``pooled`` (4: with
``shrinkage``, a node that is ``too_few_rows`` or ``singular`` on its own but has a partial-pooling
estimate borrowed from its parent; finite coefficients that are mostly the parent's, not a fit
of the node's data). Coefficients of ``too_few_rows`` and ``singular`` fits are NaN, never 0.
A shrunk node that could be fitted on its own keeps its own status (``ok`` or
``not_converged``).

References
----------
.. [1] ALICE O2DPG, ``UTILS/dfextensions/groupby_regression/groupby_regression.py``
   (``GroupByRegressor.make_parallel_fit``), https://github.com/AliceO2Group/O2DPG
.. [2] P. J. Huber, "Robust estimation of a location parameter", Ann. Math. Statist. 35 (1964);
   P. J. Huber, *Robust Statistics*, Wiley (1981).
.. [3] C. L. Lawson and R. J. Hanson, *Solving Least Squares Problems*, Prentice-Hall (1974),
   ch. 23 (NNLS); R. Bro and S. de Jong, "A fast non-negativity-constrained least squares
   algorithm", J. Chemometrics 11 (1997).
.. [4] T. F. Chan, G. H. Golub and R. J. LeVeque, "Algorithms for computing the sample
   variance", Amer. Statist. 37 (1983).
.. [5] C. N. Morris, "Parametric empirical Bayes inference: theory and applications",
   JASA 78 (1983); R. DerSimonian and N. Laird, "Meta-analysis in clinical trials",
   Controlled Clinical Trials 7 (1986) (moment estimator of the between-group variance).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import numba
import numpy as np

from segstream.shared.component import ExportedComponent
from segstream.shared.errors import DataError, SchemaError
from segstream.training import _groupby_kernels as _k
from segstream.training import glm_kernels as _gk

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS",
    "STATUS_CODES",
    "GroupFitResult",
    "fit_groups",
    "make_parallel_fit",
]

STATUS_CODES: dict[str, int] = {
    "ok": _k.OK,
    "too_few_rows": _k.TOO_FEW_ROWS,
    "singular": _k.SINGULAR,
    "not_converged": _k.NOT_CONVERGED,
    "pooled": _k.POOLED,
    "separation": _gk.SEPARATION,
    "one_class": _gk.ONE_CLASS,
    "too_few_events": _gk.TOO_FEW_EVENTS,
}
METHODS: dict[str, int] = {
    "ols": _k.METHOD_OLS,
    "huber": _k.METHOD_HUBER,
    "sigma_clip": _k.METHOD_SIGMA_CLIP,
}
_SIGN_CODES = {"+": 1, "-": -1, "free": 0, None: 0, 0: 0, 1: 1, -1: -1, "": 0}
EXPORT_FORMAT = 1


# --------------------------------------------------------------------------- result


@dataclasses.dataclass(frozen=True, eq=False)
class GroupFitResult:
    """Per-group, per-target linear fits.

    ``G`` groups, ``T`` targets, ``p`` predictors; coefficient axis ``k = p + 1`` is
    ``[intercept, slope_0, ..., slope_{p-1}]`` in the order of ``feature_names``.

    Attributes
    ----------
    groups : ndarray of int64, shape (G,)
        Sorted group ids (every id with at least one selected row).
    coef : ndarray of float64, shape (G, T, k)
        Intercept and slopes in the units of the data; NaN where not fitted or dropped.
    stderr : ndarray of float64, shape (G, T, k)
        Standard errors ``sqrt(sigma^2 diag((X'WX)^-1))`` with the intercept column included and
        ``sigma^2 = sum(w r^2) / (n_used - n_estimated)``; NaN when there are no residual
        degrees of freedom. For ``huber``, ``w`` are the final IRLS weights; for shrunk fits,
        the posterior ``sigma^2 (X'WX + Lambda)^-1``.
    rms : ndarray of float64, shape (G, T)
        Weighted RMS of the residuals, ``sqrt(sum w r^2 / sum w)`` over the rows of the final
        fit (prior weights).
    mad : ndarray of float64, shape (G, T)
        ``1.4826 * median(|r|)`` over the rows of the final fit (residuals of a fit with
        intercept, so centre 0, as in statsmodels' RLM and O2DPG).
    n_used, n_rejected, n_iter : ndarray of int64, shape (G, T)
        Rows in the final fit; rows clipped (``sigma_clip``) or down-weighted (``huber``);
        robust iterations/refits performed.
    cond : ndarray of float64, shape (G, T)
        1-norm condition number of the centred, unit-diagonal weighted cross-product matrix of
        the kept predictors (1 for a single predictor, inf for singular, NaN when not fitted).
    status : ndarray of int8, shape (G, T)
        See ``STATUS_CODES``.
    x_mean : ndarray of float64, shape (G, p)
        Weighted mean of each predictor over the group's selected rows where it is finite
        (used to impute a missing feature at scoring).
    n_rows : ndarray of int64, shape (G,)
        Selected rows per group (O2DPG's ``bin_count``).
    parent : ndarray of int64, shape (G,)
        Index (into ``groups``) of each group's parent, -1 for roots or when no hierarchy given.
    feature_names, target_names : tuple of str
    method : str
    params : dict
        The fitting parameters (JSON-serialisable).
    family : {"gaussian", "binomial", "poisson"}
        ``binomial``/``poisson``: ``coef`` are the coefficients of the linear predictor
        (logit of the probability / log of the expected count), ``stderr`` the Fisher standard
        errors ``sqrt(diag((X'WX)^-1))`` at the final IRLS weights (dispersion 1), ``rms``
        and ``mad`` are NaN, ``n_rejected`` 0 and ``n_iter`` the IRLS iterations.
    deviance : ndarray of float64, shape (G, T), or None
        GLMs: residual deviance ``sum w d(y, mu)`` at the final coefficients (NaN where not
        fitted); None for ``gaussian``.
    n_events : ndarray of float64, shape (G, T, 2), or None
        GLMs: binomial, the usable rows with outcome 0 and with outcome 1; Poisson, the usable
        rows and the sum of their counts. None for ``gaussian``.
    """

    groups: np.ndarray
    coef: np.ndarray
    stderr: np.ndarray
    rms: np.ndarray
    mad: np.ndarray
    n_used: np.ndarray
    n_rejected: np.ndarray
    n_iter: np.ndarray
    cond: np.ndarray
    status: np.ndarray
    x_mean: np.ndarray
    n_rows: np.ndarray
    parent: np.ndarray
    feature_names: tuple
    target_names: tuple
    method: str
    params: dict
    family: str = "gaussian"
    deviance: np.ndarray | None = None
    n_events: np.ndarray | None = None

    @property
    def intercept(self) -> np.ndarray:
        """Intercepts, shape (G, T)."""
        return self.coef[:, :, 0]

    @property
    def slopes(self) -> np.ndarray:
        """Slopes, shape (G, T, p)."""
        return self.coef[:, :, 1:]

    def status_names(self) -> np.ndarray:
        """Status as strings, shape (G, T), dtype object."""
        names = np.empty(len(STATUS_CODES), dtype=object)
        for k, v in STATUS_CODES.items():
            names[v] = k
        return names[self.status.astype(np.int64)]

    def group_index(self, group_ids) -> np.ndarray:
        """Row index into ``groups`` for each id, -1 for unknown ids; shape (n,), int64."""
        ids = np.asarray(group_ids)
        pos = np.searchsorted(self.groups, ids)
        pos = np.clip(pos, 0, max(len(self.groups) - 1, 0))
        hit = (
            (len(self.groups) > 0) & (self.groups[pos] == ids)
            if len(self.groups)
            else np.zeros(ids.shape, bool)
        )
        return np.where(hit, pos, -1).astype(np.int64)

    def predict(self, group_ids, X, target: int | str = 0, offset=None) -> np.ndarray:
        """Predictions ``intercept + sum(slope * x)`` for each row (numpy reference); for GLMs
        the mean ``g^-1(offset + intercept + sum(slope * x))``: a probability (binomial) or
        an expected count (Poisson).

        Parameters
        ----------
        group_ids : array_like of int, shape (n,)
        X : array_like of float, shape (n, p)
            Predictors in ``feature_names`` order; a NaN value is replaced by the group's
            ``x_mean``; a predictor whose slope is NaN (dropped by ``min_stat``) is not part
            of that group's model and contributes nothing.
        target : int or str
        offset : array_like of float, shape (n,), optional
            Added to the linear predictor (e.g. log-exposure of a Poisson model). Default 0.

        Returns
        -------
        ndarray of float64, shape (n,)
            NaN for unknown groups and for groups without a fit.
        """
        t = self.target_names.index(target) if isinstance(target, str) else int(target)
        X = np.asarray(X, dtype=np.float64).reshape(len(np.asarray(group_ids)), -1)
        gi = self.group_index(group_ids)
        known = gi >= 0
        g = np.where(known, gi, 0)
        c = self.coef[g, t, :]
        xm = self.x_mean[g]
        Xf = np.where(np.isfinite(X), X, xm)
        terms = np.where(np.isnan(c[:, 1:]), 0.0, c[:, 1:] * Xf)
        out = c[:, 0] + terms.sum(axis=1)
        if offset is not None:
            out = out + np.asarray(offset, dtype=np.float64).reshape(-1)
        if self.family == "binomial":
            out = 0.5 * (1.0 + np.tanh(0.5 * out))  # logistic, no overflow
        elif self.family == "poisson":
            out = np.exp(out)
        return np.where(known, out, np.nan)

    def fallback_index(self, target: int | str = 0, serve: Sequence[str] = ("ok",)) -> np.ndarray:
        """For every group, the index of the nearest group on its path to the root (itself
        first, then ``parent``, ...) whose status is in ``serve``; -1 when there is none.

        Returns
        -------
        ndarray of int64, shape (G,)
        """
        t = self.target_names.index(target) if isinstance(target, str) else int(target)
        codes = [STATUS_CODES[s] for s in serve]
        good = np.isin(self.status[:, t], codes)
        out = np.where(good, np.arange(len(self.groups)), -1).astype(np.int64)
        cur = self.parent.copy()
        todo = ~good
        for _ in range(len(self.groups) + 1):
            todo &= cur >= 0
            if not todo.any():
                break
            hit = todo & good[np.maximum(cur, 0)]
            out[hit] = cur[hit]
            todo &= ~hit
            cur = np.where(todo, self.parent[np.maximum(cur, 0)], -1)
        return out

    def export(self) -> ExportedComponent:
        """Plain arrays + JSON meta for the bundle; rebuilt by :mod:`segstream.shared.linear`.

        Returns
        -------
        shared.component.ExportedComponent
            ``kind="segment_models"``; arrays ``groups (G,) int64``, ``coef (G,T,k)``,
            ``stderr (G,T,k)``, ``rms``, ``mad``, ``cond (G,T) float64``, ``n_used``,
            ``n_rejected (G,T) int64``, ``status (G,T) int8``, ``x_mean (G,p)``,
            ``n_rows (G,) int64``, ``parent (G,) int64``; meta ``format``, ``feature_names``,
            ``target_names``, ``method``, ``status_codes``, ``coef_layout``, ``params``.
        """
        arrays = {
            "groups": self.groups.astype(np.int64),
            "coef": self.coef.astype(np.float64),
            "stderr": self.stderr.astype(np.float64),
            "rms": self.rms.astype(np.float64),
            "mad": self.mad.astype(np.float64),
            "cond": self.cond.astype(np.float64),
            "n_used": self.n_used.astype(np.int64),
            "n_rejected": self.n_rejected.astype(np.int64),
            "status": self.status.astype(np.int8),
            "x_mean": self.x_mean.astype(np.float64),
            "n_rows": self.n_rows.astype(np.int64),
            "parent": self.parent.astype(np.int64),
        }
        if self.family != "gaussian":
            # the linear scorer (shared/linear.py) must not read these as identity-link models
            arrays["deviance"] = np.asarray(self.deviance, dtype=np.float64)
            arrays["n_events"] = np.asarray(self.n_events, dtype=np.float64)
        meta = {
            "format": EXPORT_FORMAT,
            "feature_names": list(self.feature_names),
            "target_names": list(self.target_names),
            "method": self.method,
            "status_codes": dict(STATUS_CODES),
            "coef_layout": ["intercept"] + [f"slope:{f}" for f in self.feature_names],
            "params": self.params,
        }
        if self.family != "gaussian":
            meta["family"] = self.family
            meta["link"] = {"binomial": "logit", "poisson": "log"}[self.family]
            return ExportedComponent(kind="segment_glms", arrays=arrays, meta=meta)
        return ExportedComponent(kind="segment_models", arrays=arrays, meta=meta)


# --------------------------------------------------------------------------- validation


def _as_numeric(a, name: str, ndim: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise SchemaError(
            f"{name}: expected a numeric array, got dtype {arr.dtype} (convert or encode the "
            f"column first)"
        )
    if arr.ndim not in ndim:
        raise SchemaError(
            f"{name}: expected {' or '.join(map(str, ndim))}-D, got shape {arr.shape}"
        )
    return np.ascontiguousarray(arr, dtype=np.float64)


def _factorize(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes int64 (n,), labels int64 (G,) sorted, rows per label int64 (G,)) — O(n) and
    parallel when the id range is compact."""
    n = ids.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    if ids.dtype.kind == "u" and ids.max() > np.iinfo(np.int64).max:
        raise DataError("group_ids: values above 2**63-1 are not supported")
    ids = ids.astype(np.int64, copy=False)
    n_parts = _n_parts(n)
    lo, hi = _k._id_range(ids, n_parts)
    span = int(hi) - int(lo) + 1
    if span <= 4 * n + 1024:
        codes = np.empty(n, dtype=np.int64)
        labels, sizes = _k._dense_codes(ids, lo, np.zeros((n_parts, span), dtype=np.int64), codes)
        return codes, labels, sizes
    labels, codes, sizes = np.unique(ids, return_inverse=True, return_counts=True)
    return codes.astype(np.int64).reshape(-1), labels.astype(np.int64), sizes.astype(np.int64)


def _n_parts(n: int) -> int:
    """Row slices for the parallel passes over the rows: one per thread from 100k rows."""
    return numba.get_num_threads() if n >= 100_000 else 1


def _parse_sign(sign, feature_names: Sequence[str]) -> np.ndarray:
    p = len(feature_names)
    out = np.zeros(p, dtype=np.int64)
    if sign is None:
        return out
    if isinstance(sign, dict):
        unknown = set(sign) - set(feature_names)
        if unknown:
            raise ValueError(f"sign: unknown predictor(s) {sorted(unknown)}")
        items = [(feature_names.index(k), v) for k, v in sign.items()]
    else:
        seq = list(sign)
        if len(seq) != p:
            raise ValueError(f"sign: expected {p} entries (one per predictor), got {len(seq)}")
        items = list(enumerate(seq))
    for j, v in items:
        if v not in _SIGN_CODES:
            raise ValueError(f"sign[{feature_names[j]!r}]: expected '+', '-' or None, got {v!r}")
        out[j] = _SIGN_CODES[v]
    return out


def _prepare(group_ids, X, y, weights, selection):
    gid = np.asarray(group_ids)
    if gid.ndim != 1:
        raise SchemaError(f"group_ids: expected 1-D, got shape {gid.shape}")
    if gid.dtype == object or gid.dtype.kind not in "iu":
        raise SchemaError(
            f"group_ids: expected an integer array, got dtype {gid.dtype} (factorise labels, "
            f"e.g. with pandas.factorize, or use make_parallel_fit)"
        )
    n = gid.shape[0]
    Xa = _as_numeric(X, "X", (1, 2))
    if Xa.ndim == 1:
        Xa = Xa.reshape(-1, 1)
    ya = _as_numeric(y, "y", (1, 2))
    if ya.ndim == 1:
        ya = ya.reshape(-1, 1)
    for name, arr in (("X", Xa), ("y", ya)):
        if arr.shape[0] != n:
            raise DataError(f"{name}: has {arr.shape[0]} rows but group_ids has {n}")
    if selection is None:
        sel = np.ones(n, dtype=bool)
    else:
        sel = np.asarray(selection)
        if sel.dtype != bool:
            raise SchemaError(f"selection: expected a boolean mask, got dtype {sel.dtype}")
        if sel.shape != (n,):
            raise DataError(f"selection: has shape {sel.shape}, expected ({n},)")
    if weights is None:
        w = np.ones(n, dtype=np.float64)
        keep = sel.copy()
    else:
        w = _as_numeric(weights, "weights", (1,))
        if w.shape[0] != n:
            raise DataError(f"weights: has {w.shape[0]} rows but group_ids has {n}")
        keep = np.empty(n, dtype=bool)
        n_bad, first = _k._check_weights(w, sel, keep, _n_parts(n))
        if n_bad:
            raise DataError(
                f"weights: {int(n_bad)} selected row(s) have a negative or non-finite "
                f"weight (first at row {int(first)}: {w[first]!r}); weights must be finite and >= 0"
            )
    # keep: selected rows with a weight > 0 (the rows of the fits)
    return gid, Xa, ya, w, sel, keep


# --------------------------------------------------------------------------- core


def fit_groups(
    group_ids,
    X,
    y,
    weights=None,
    *,
    selection=None,
    method: str = "ols",
    min_stat=None,
    min_rows: int = 0,
    sign=None,
    huber_c: float = 1.345,
    sigma_cut: float = 4.0,
    max_iter: int = 50,
    tol: float = 1e-8,
    cond_fallback: float = 1e6,
    parent=None,
    shrinkage: float | str = 0.0,
    feature_names: Sequence[str] | None = None,
    target_names: Sequence[str] | None = None,
    family: str = "gaussian",
    offset=None,
    min_events: int | None = None,
) -> GroupFitResult:
    """Fit one weighted linear model or GLM (with intercept) per group and target.

    Parameters
    ----------
    group_ids : array_like of int, shape (n,)
        Group of each row; any integers (negative, sparse, unsorted). With ``parent`` they are
        node ids of a tree, ``0 <= id < len(parent)``.
    X : array_like of float, shape (n, p) or (n,)
        Predictors (any units; NaN/inf = missing).
    y : array_like of float, shape (n,) or (n, T)
        Target(s); each target is fitted separately (its own NaN pattern).
    weights : array_like of float, shape (n,), optional
        Prior (inverse-variance) weights, finite and >= 0; rows with weight 0 are not used.
        Default 1.
    selection : array_like of bool, shape (n,), optional
        Rows to use; others are ignored entirely.
    method : {"ols", "huber", "sigma_clip"}
        ``ols``: weighted least squares. ``huber``: IRLS with Huber's weight
        ``min(1, c / |e|)``, ``e = r sqrt(w) / s``, scale ``s = 1.4826 median(|r sqrt(w)|)``
        re-estimated every iteration (statsmodels ``RLM(M=HuberT(c)).fit(scale_est='mad')``
        convention, exactly so for unit weights), started from the WLS fit, stopping when
        the largest change of a coefficient is ``<= tol`` times the largest coefficient, or
        after ``max_iter`` iterations (then status ``not_converged``). ``sigma_clip``: WLS,
        then repeatedly refit on the rows with ``|r sqrt(w)| <= sigma_cut * s`` (``s`` the
        scaled MAD of the current inliers; rejected rows may come back) until the inlier set
        no longer changes or ``max_iter`` refits (then ``not_converged``); a clip that would
        leave fewer than the required rows is not applied. With fewer than ``2 * (p + 1)``
        rows the Huber/MAD estimate need not be unique: an exact fit through ``p + 1`` rows
        can make the median residual 0, and the iteration stops (converged) at such a fit;
        which subset it lands on depends on the path (statsmodels' RLM lands on another one).
    min_stat : int or sequence of int (p,), optional
        Per predictor: minimum number of rows of the group with that predictor and the target
        finite; below it the predictor is dropped from the group's fit (slope NaN). Default 1
        (drop only predictors never observed in the group).
    min_rows : int
        Minimum usable rows for a fit (in addition to ``n >= number of parameters``).
    sign : sequence of {'+', '-', None} (p,) or dict name -> sign, optional
        Sign constraints on slopes, solved exactly (active-set NNLS on the sign-flipped
        centred normal equations); equals ``scipy.optimize.lsq_linear`` with bounds. A slope
        held at 0 by its constraint has standard error NaN.
    huber_c, sigma_cut : float
        Huber tuning constant (in units of the scale) and clipping threshold (in sigmas).
    max_iter : int
        Maximum IRLS iterations (``huber``) or refits (``sigma_clip``).
    tol : float
        Relative convergence tolerance of ``huber``.
    cond_fallback : float
        Condition number above which the normal-equation solve is replaced by QR of the rows.
    parent : array_like of int, shape (n_nodes,), optional
        Tree over node ids: ``parent[v]`` is the parent node of ``v`` or -1 for a root. Every
        ancestor of a row's node is fitted too, on the union of its descendants' rows, and
        ``GroupFitResult.parent`` links each fitted node to its parent.
    shrinkage : float >= 0 or "eb"
        Partial pooling toward the parent, applied top-down (parents are shrunk first). Each
        node minimises ``sum w r^2 + sum_j Lambda_j (theta_j - theta_parent_j)^2`` in the
        parametrisation ``theta = (c, b)``, ``c`` = prediction at the node's weighted mean of
        the predictors and ``b`` the slopes (so ``Lambda -> inf`` gives exactly the parent's
        intercept and slopes, ``Lambda = 0`` the independent fit). A float is a fixed
        strength in *pseudo-rows*: ``Lambda_c = lambda``, ``Lambda_bj = lambda * var_w(x_j)``
        (overall weighted variance of predictor j), i.e. the parent counts as ``lambda``
        extra rows. ``"eb"`` chooses it per coefficient by closed-form empirical Bayes:
        ``Lambda_j = sigma_g^2 / tau_j^2`` with ``tau_j^2 = max(0, (sum d_j^2/V_j - K) /
        sum 1/V_j)`` (DerSimonian-Laird moment estimator around a known centre; Morris
        1983 parametric empirical Bayes), ``d_j`` the difference
        between a node's independent estimate and its parent's and ``V_j`` its sampling
        variance, over all node/parent pairs that both fitted ``ok``. Nodes too thin to
        fit on their own (n < parameters or ``min_rows``, or singular) get a shrunk fit when
        ``Lambda > 0`` (borrowing ``sigma^2`` from the parent) and status ``pooled`` -- not
        ``ok``: callers that need an estimate backed by the node's own rows select
        ``status == ok``. Shrunk nodes that could be fitted on their own keep their status.
        ``rms``/``mad``/``n_used`` of shrunk nodes are recomputed over all their usable rows.
    feature_names, target_names : sequence of str, optional
        Names for export; default ``x0..``, ``y0..``.
    family : {"gaussian", "binomial", "poisson"}
        ``gaussian``: the linear models above. ``binomial``: weighted logistic regression
        (logit link) of 0/1 outcomes; ``poisson``: Poisson regression (log link) of counts
        >= 0. GLMs are fitted by IRLS (McCullagh & Nelder 1989; the same estimates and Fisher
        standard errors as statsmodels ``GLM``, dispersion 1) from per-group working
        sufficient statistics, with the linear path's solve (``sign``, ``min_stat``,
        ``min_rows``, QR fallback, ``cond_fallback``), started at statsmodels' starting means,
        halving a step that raises the deviance, converged when the Newton decrement
        ``d' X'WX d <= tol (|deviance| + 0.1)`` (``d`` the step), else ``not_converged``
        after ``max_iter`` iterations (last iterate kept). Only ``method="ols"`` applies;
        ``shrinkage`` (a float; not ``"eb"``) is penalised IRLS toward the parent, level by
        level, with the penalty above on the linear predictor's coefficients and ``lambda``
        pseudo-rows of average information (see :func:`segstream.training.glm._shrink_levels`). Statuses besides ``ok``/``too_few_rows``/``singular``/
        ``not_converged``: ``one_class`` (binomial: every usable outcome equal; Poisson: every
        count 0 -- the estimate would be infinite), ``too_few_events`` (rows of the rarer class
        / sum of the counts below ``min_events``), ``separation`` (the maximum-likelihood
        estimate does not exist: (quasi-)complete separation, confirmed by an exact
        linear-programming check (Konis 2007) on the groups whose IRLS ended with fitted
        probabilities within 1e-5 of 0 or 1 / Poisson means below 1e-5). All three have NaN
        coefficients, never infinite ones, so scoring falls back to an ancestor
        (:meth:`GroupFitResult.fallback_index`).
    offset : array_like of float, shape (n,), optional
        Known term added to the linear predictor (Poisson: ``log(exposure)``); a row with a
        non-finite offset is not used. ``gaussian``: ``y - offset`` is fitted. Default 0.
    min_events : int, optional
        GLMs only: minimum rows of the rarer outcome (binomial) or minimum sum of the counts
        (Poisson) for a fit, else ``too_few_events``. Default: the number of parameters
        (1 + kept predictors).

    Returns
    -------
    GroupFitResult

    Raises
    ------
    SchemaError
        Non-numeric ``X``/``y``/``weights``, non-integer ``group_ids``, wrong dimensions.
    DataError
        Mismatched lengths; negative or non-finite weights on selected rows; ``parent`` with a
        cycle or ids out of range.
    ValueError
        Unknown ``method`` or ``family``, bad ``sign``, ``min_stat`` or ``shrinkage``, a
        ``method`` or ``shrinkage`` the family does not support; ``binomial`` outcomes other
        than 0/1 or negative ``poisson`` counts (the message lists the values found).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> g = np.repeat([10, 20], 50)
    >>> x = rng.normal(size=(100, 1))
    >>> y = np.where(g == 10, 1.0 + 2.0 * x[:, 0], -1.0 + 0.5 * x[:, 0])
    >>> res = fit_groups(g, x, y)
    >>> np.round(res.coef[:, 0, :], 6).tolist()
    [[1.0, 2.0], [-1.0, 0.5]]
    >>> res.status_names()[:, 0].tolist()
    ['ok', 'ok']
    """
    from segstream.training import glm as _glm

    if method not in METHODS:
        raise ValueError(f"method: expected one of {sorted(METHODS)}, got {method!r}")
    if family not in _glm.FAMILIES:
        raise ValueError(f"family: expected one of {sorted(_glm.FAMILIES)}, got {family!r}")
    is_glm = family != "gaussian"
    if is_glm and method != "ols":
        raise ValueError(
            f"method: family={family!r} is fitted by IRLS and takes method='ols', got {method!r}"
        )
    if is_glm and isinstance(shrinkage, str):
        raise ValueError(
            f"shrinkage: 'eb' is not supported with family={family!r} yet (use a float >= 0)"
        )
    if is_glm and int(max_iter) < 1:
        raise ValueError(f"max_iter: family={family!r} needs at least 1 iteration")
    gid, Xa, ya, w, sel, keep = _prepare(group_ids, X, y, weights, selection)
    n, p = Xa.shape
    off = None
    if offset is not None:
        off = _as_numeric(offset, "offset", (1,))
        if off.shape[0] != n:
            raise DataError(f"offset: has {off.shape[0]} rows but group_ids has {n}")
        if not is_glm:
            ya = ya - off[:, None]
    if is_glm:
        _glm.check_glm_target(ya, keep, family)
        if off is None:
            off = np.zeros(n)
    T = ya.shape[1]
    feature_names = (
        tuple(feature_names) if feature_names is not None else tuple(f"x{j}" for j in range(p))
    )
    target_names = (
        tuple(target_names) if target_names is not None else tuple(f"y{t}" for t in range(T))
    )
    if len(feature_names) != p:
        raise ValueError(f"feature_names: expected {p} names, got {len(feature_names)}")
    if len(target_names) != T:
        raise ValueError(f"target_names: expected {T} names, got {len(target_names)}")
    if min_stat is None:
        ms = np.ones(p, dtype=np.int64)
    else:
        ms = np.asarray(min_stat, dtype=np.int64).reshape(-1)
        if ms.size == 1 and p != 1:
            ms = np.full(p, int(ms[0]), dtype=np.int64)
        if ms.size != p:
            raise ValueError(f"min_stat: expected 1 or {p} values, got {ms.size}")
        ms = np.maximum(ms, 1)
    sgn = _parse_sign(sign, list(feature_names))
    if not (huber_c > 0) or not (sigma_cut > 0) or not (tol > 0) or int(max_iter) < 0:
        raise ValueError("huber_c, sigma_cut and tol must be > 0 and max_iter >= 0")
    shrink_eb = isinstance(shrinkage, str)
    if shrink_eb and shrinkage != "eb":
        raise ValueError(f"shrinkage: expected a float >= 0 or 'eb', got {shrinkage!r}")
    if not shrink_eb and not (float(shrinkage) >= 0):
        raise ValueError(f"shrinkage: expected a float >= 0 or 'eb', got {shrinkage!r}")
    do_shrink = parent is not None and (shrink_eb or float(shrinkage) > 0)

    # ---- hierarchy: replicate rows to every ancestor node
    tree_parent = None
    if parent is not None:
        tree_parent = np.asarray(parent)
        if tree_parent.ndim != 1 or tree_parent.dtype.kind not in "iu":
            raise SchemaError("parent: expected a 1-D integer array (parent node id, -1 = root)")
        tree_parent = tree_parent.astype(np.int64)
        n_nodes = tree_parent.shape[0]
        if ((tree_parent < -1) | (tree_parent >= n_nodes)).any():
            raise DataError(f"parent: ids must be -1 or in [0, {n_nodes})")
        if n and (gid.min() < 0 or gid.max() >= n_nodes):
            raise DataError(f"group_ids: with a parent tree, ids must be in [0, {n_nodes})")
        depth = _tree_depth(tree_parent)
        rows_list = [np.arange(n)]
        ids_list = [gid.astype(np.int64)]
        anc = tree_parent[gid.astype(np.int64)] if n else np.zeros(0, np.int64)
        base_rows = np.arange(n)
        while anc.size:
            has = anc >= 0
            if not has.any():
                break
            rows_list.append(base_rows[has])
            ids_list.append(anc[has])
            base_rows = base_rows[has]
            anc = tree_parent[anc[has]]
        rows = np.concatenate(rows_list)
        gid = np.concatenate(ids_list)
        Xa, ya, w, sel, keep = Xa[rows], ya[rows], w[rows], sel[rows], keep[rows]
        if is_glm:
            off = off[rows]
        n = gid.shape[0]

    codes, labels, sizes = _factorize(gid)
    G = labels.shape[0]
    n_rows = sizes if sel.all() else np.bincount(codes[sel], minlength=G).astype(np.int64)
    ip = np.array([METHODS[method], int(max_iter), int(min_rows), int(do_shrink)], dtype=np.int64)
    fp = np.array([huber_c, sigma_cut, tol, cond_fallback, 1e-14, 1e-10], dtype=np.float64)
    n_chunks = int(max(1, min(G, 64)))
    if is_glm:
        return _fit_groups_glm(
            codes, keep, G, labels, n_rows, tree_parent, Xa, ya, w, off, ms, sgn, fp,
            n_chunks, family, min_rows, min_events, max_iter, tol, cond_fallback,
            feature_names, target_names, float(shrinkage) if do_shrink else 0.0,
        )  # fmt: skip
    out = _fit_rows(codes, keep, G, Xa, ya, w, ms, sgn, ip, fp, n_chunks, do_shrink)
    (coef, se, rms, mad, cond, n_used, n_rej, n_iter, status, x_mean, stats) = out

    pidx = np.full(G, -1, dtype=np.int64)
    if tree_parent is not None and G:
        pl = tree_parent[labels]
        pos = np.searchsorted(labels, pl)
        pos = np.clip(pos, 0, G - 1)
        pidx = np.where((pl >= 0) & (labels[pos] == pl), pos, -1).astype(np.int64)

    params: dict[str, Any] = {
        "min_stat": ms.tolist(),
        "min_rows": int(min_rows),
        "sign": sgn.tolist(),
        "huber_c": float(huber_c),
        "sigma_cut": float(sigma_cut),
        "max_iter": int(max_iter),
        "tol": float(tol),
        "cond_fallback": float(cond_fallback),
        "shrinkage": shrinkage if shrink_eb else float(shrinkage),
        "hierarchical": tree_parent is not None,
    }
    if do_shrink and G:
        if shrink_eb:
            prec, tau2 = _eb_precision(
                coef, se, status, pidx, stats[4], stats[5], stats[6], stats[10]
            )
            params["eb_tau2"] = tau2.tolist()
        else:
            lam = float(shrinkage)
            keep_rows = keep
            var = np.zeros(p)
            for j in range(p):
                xj = Xa[keep_rows, j]
                fin = np.isfinite(xj)
                ww = w[keep_rows][fin]
                if ww.sum() > 0:
                    mu = np.average(xj[fin], weights=ww)
                    var[j] = np.average((xj[fin] - mu) ** 2, weights=ww)
            prec = np.tile(np.concatenate([[lam], lam * var]), (T, 1))
        order_td = np.argsort(depth[labels], kind="stable").astype(np.int64)
        (Xg, Yg, Wg, offsets, st_W, st_ybar, st_xbar, st_A, st_rhs, _st_syy, st_sig2, st_kept) = (
            stats
        )
        done = _k._shrink_topdown(
            order_td,
            pidx,
            prec,
            bool(shrink_eb),
            coef,
            se,
            status,
            st_W,
            st_ybar,
            st_xbar,
            st_A,
            st_rhs,
            st_sig2,
            st_kept,
            1e-14,
        )
        _k._residual_stats(Xg, Yg, Wg, offsets, coef, done, rms, mad, n_used)
        n_rej[done] = 0
        cond[done] = np.nan

    return GroupFitResult(
        groups=labels,
        coef=coef,
        stderr=se,
        rms=rms,
        mad=mad,
        n_used=n_used,
        n_rejected=n_rej,
        n_iter=n_iter,
        cond=cond,
        status=status,
        x_mean=x_mean,
        n_rows=n_rows,
        parent=pidx,
        feature_names=feature_names,
        target_names=target_names,
        method=method,
        params=params,
    )


def _parent_index(tree_parent, labels):
    """Index (into ``labels``) of each fitted node's parent, -1 for roots / no tree."""
    G = labels.shape[0]
    pidx = np.full(G, -1, dtype=np.int64)
    if tree_parent is not None and G:
        pl = tree_parent[labels]
        pos = np.clip(np.searchsorted(labels, pl), 0, G - 1)
        pidx = np.where((pl >= 0) & (labels[pos] == pl), pos, -1).astype(np.int64)
    return pidx


def _fit_groups_glm(
    codes,
    keep,
    G,
    labels,
    n_rows,
    tree_parent,
    Xa,
    ya,
    w,
    off,
    ms,
    sgn,
    fp,
    n_chunks,
    family,
    min_rows,
    min_events,
    max_iter,
    tol,
    cond_fallback,
    feature_names,
    target_names,
    shrinkage,
):
    """``fit_groups`` for ``family`` binomial/poisson (see :mod:`segstream.training.glm`)."""
    from segstream.training import glm as _glm

    T = ya.shape[1]
    me = -1 if min_events is None else int(min_events)
    pidx = _parent_index(tree_parent, labels)
    depth = _tree_depth(tree_parent)[labels] if tree_parent is not None else np.zeros(G, np.int64)
    out = _glm.fit_glm_rows(
        codes, keep, G, Xa, ya, w, off, ms, sgn, family, int(min_rows), me, int(max_iter),
        float(tol), fp, n_chunks, shrinkage, pidx, depth,
    )  # fmt: skip
    params: dict[str, Any] = {
        "family": family,
        "min_stat": ms.tolist(),
        "min_rows": int(min_rows),
        "min_events": min_events,
        "sign": sgn.tolist(),
        "max_iter": int(max_iter),
        "tol": float(tol),
        "cond_fallback": float(cond_fallback),
        "shrinkage": float(shrinkage),
        "hierarchical": tree_parent is not None,
    }
    return GroupFitResult(
        groups=labels,
        coef=out["coef"],
        stderr=out["se"],
        rms=np.full((G, T), np.nan),
        mad=np.full((G, T), np.nan),
        n_used=out["n_used"],
        n_rejected=np.zeros((G, T), np.int64),
        n_iter=out["n_iter"],
        cond=out["cond"],
        status=out["status"],
        x_mean=out["x_mean"],
        n_rows=n_rows,
        parent=pidx,
        feature_names=feature_names,
        target_names=target_names,
        method="irls",
        params=params,
        family=family,
        deviance=out["deviance"],
        n_events=out["n_events"],
    )


def _group_rows(codes, keep, G, Xa, ya, w):
    """Kept rows laid out group by group: ``(offsets (G+1,), Xg, Yg, Wg)``.

    Rows that already arrive grouped (every row kept, codes non-decreasing) are used in place;
    otherwise a stable counting sort (O(n), one parallel scatter pass) copies them into arrays
    allocated here with numpy.
    """
    offsets = np.empty(G + 1, dtype=np.int64)
    if _k._is_grouped(codes, keep):
        _k._grouped_offsets(codes, G, offsets)
        return offsets, Xa, ya, w
    n_parts = _n_parts(codes.shape[0])
    start = np.zeros((n_parts, G), dtype=np.int64)
    _k._part_counts(codes, keep, start)
    _k._part_offsets(start, offsets)
    m = int(offsets[-1])
    Xg = np.empty((m, Xa.shape[1]))
    Yg = np.empty((m, ya.shape[1]))
    Wg = np.empty(m)
    _k._scatter_rows(codes, keep, Xa, ya, w, start, Xg, Yg, Wg)
    return offsets, Xg, Yg, Wg


def _fit_rows(codes, keep, G, Xa, ya, w, ms, sgn, ip, fp, n_chunks, store):
    """Every method: rows laid out by group (counting sort), then every group on its own
    contiguous rows in one parallel pass. Plain OLS takes the inline fast kernel; groups it
    declines (non-finite values, dropped predictors, too few rows, ill-conditioned) and every
    other case go through the general per-group fit."""
    p = Xa.shape[1]
    T = ya.shape[1]
    if (
        G
        and T == 1
        and ip[_k.IP_METHOD] == _k.METHOD_OLS
        and not store
        and not sgn.any()
        and not _k._is_grouped(codes, keep)
    ):
        return _fit_rows_ols_unsorted(codes, keep, G, Xa, ya, w, ms, sgn, ip, fp, n_chunks)
    offsets, Xg, Yg, Wg = _group_rows(codes, keep, G, Xa, ya, w)
    m = Xg.shape[0]
    x_mean = np.empty((G, p))
    coef = np.empty((G, T, p + 1))
    se = np.empty((G, T, p + 1))
    rms = np.empty((G, T))
    mad = np.empty((G, T))
    cond = np.empty((G, T))
    n_used = np.zeros((G, T), np.int64)
    n_rej = np.zeros((G, T), np.int64)
    n_iter = np.zeros((G, T), np.int64)
    status = np.zeros((G, T), np.int8)
    sG, sp = (G, p) if store else (1, max(p, 1))
    st_W = np.zeros((sG, T))
    st_ybar = np.zeros((sG, T))
    st_xbar = np.zeros((sG, T, sp))
    st_A = np.zeros((sG, T, sp, sp))
    st_rhs = np.zeros((sG, T, sp))
    st_syy = np.zeros((sG, T))
    st_sig2 = np.zeros((sG, T))
    st_kept = np.zeros((sG, T, sp), np.uint8)
    todo = np.ones(G, dtype=np.uint8)
    if G and ip[_k.IP_METHOD] == _k.METHOD_OLS and not store and not sgn.any():
        _k._fit_ols_fast(
            Xg,
            Yg,
            Wg,
            offsets,
            ms,
            ip,
            fp,
            n_chunks,
            coef,
            se,
            rms,
            mad,
            cond,
            n_used,
            status,
            x_mean,
            todo,
        )
    if G and todo.any():
        _k._x_mean(Xg, Wg, offsets, n_chunks, todo, x_mean)
        _k._fit_all(
            Xg,
            Yg,
            Wg,
            offsets,
            ms,
            sgn,
            ip,
            fp,
            n_chunks,
            todo,
            np.empty(m),
            np.empty(m, dtype=np.bool_),
            np.empty(m),
            np.empty(m),
            coef,
            se,
            rms,
            mad,
            cond,
            n_used,
            n_rej,
            n_iter,
            status,
            st_W,
            st_ybar,
            st_xbar,
            st_A,
            st_rhs,
            st_syy,
            st_sig2,
            st_kept,
        )
    stats = (Xg, Yg, Wg, offsets, st_W, st_ybar, st_xbar, st_A, st_rhs, st_syy, st_sig2, st_kept)
    return coef, se, rms, mad, cond, n_used, n_rej, n_iter, status, x_mean, stats


def _fit_rows_ols_unsorted(codes, keep, G, Xa, ya, w, ms, sgn, ip, fp, n_chunks):
    """Plain OLS of one target on rows in random group order, without moving whole rows.

    Sufficient statistics are scatter-accumulated per group in one pass over the rows, every
    group is solved from them, and a second pass writes only the residuals (8 bytes a row) to
    group-ordered slots for the MAD (see ``_groupby_kernels``, "OLS, unsorted rows"). Groups
    the fast path declines are refitted by the general path on their own rows only."""
    p = Xa.shape[1]
    n_parts = _n_parts(codes.shape[0])
    tab = np.zeros((n_parts, G, _k.ols_table_width(p)))
    if p <= 4:
        _k._ols_suffstats_small(codes, keep, Xa, ya, w, tab)
    else:
        _k._ols_suffstats(codes, keep, Xa, ya, w, tab)
    x_mean = np.empty((G, p))
    coef = np.empty((G, 1, p + 1))
    se = np.empty((G, 1, p + 1))
    rms = np.empty((G, 1))
    mad = np.empty((G, 1))
    cond = np.empty((G, 1))
    n_used = np.zeros((G, 1), np.int64)
    n_rej = np.zeros((G, 1), np.int64)
    n_iter = np.zeros((G, 1), np.int64)
    status = np.zeros((G, 1), np.int8)
    todo = np.empty(G, dtype=np.uint8)
    rec = np.empty((G, 2 * p + 1))
    offsets = np.empty(G + 1, dtype=np.int64)
    need = max(p + 1, int(ip[_k.IP_MIN_ROWS]), int(ms.max()) if p else 1)
    _k._ols_solve_table(
        tab, p, need, fp, n_chunks, offsets, rec, coef, se, rms, cond, n_used, status, x_mean, todo
    )
    offsets[0] = 0
    np.cumsum(offsets[1:], out=offsets[1:])
    # first slot of row slice k's rows of each group: offsets + rows of the earlier slices
    pos = np.empty((n_parts, G), dtype=np.int64)
    pos[0] = offsets[:-1]
    for k in range(1, n_parts):
        pos[k] = pos[k - 1] + tab[k - 1, :, 0].astype(np.int64)
    swr2 = np.zeros((n_parts, G))
    resid = np.empty(int(offsets[-1]))
    _k._ols_residuals(codes, keep, Xa, ya, w, rec, pos, swr2, resid)
    _k._ols_finish(swr2, offsets, resid, p, n_chunks, se, rms, mad, todo)
    if todo.any():
        keep_redo = keep & (todo[codes] != 0)
        r_off, Xg, Yg, Wg = _group_rows(codes, keep_redo, G, Xa, ya, w)
        m = Xg.shape[0]
        sp = max(p, 1)
        st = [
            np.zeros((1, 1)),
            np.zeros((1, 1)),
            np.zeros((1, 1, sp)),
            np.zeros((1, 1, sp, sp)),
            np.zeros((1, 1, sp)),
            np.zeros((1, 1)),
            np.zeros((1, 1)),
            np.zeros((1, 1, sp), np.uint8),
        ]
        _k._x_mean(Xg, Wg, r_off, n_chunks, todo, x_mean)
        _k._fit_all(
            Xg,
            Yg,
            Wg,
            r_off,
            ms,
            sgn,
            ip,
            fp,
            n_chunks,
            todo,
            np.empty(m),
            np.empty(m, dtype=np.bool_),
            np.empty(m),
            np.empty(m),
            coef,
            se,
            rms,
            mad,
            cond,
            n_used,
            n_rej,
            n_iter,
            status,
            *st,
        )
    stats = (None,) * 12
    return coef, se, rms, mad, cond, n_used, n_rej, n_iter, status, x_mean, stats


def _tree_depth(parent: np.ndarray) -> np.ndarray:
    """Depth of every node (roots 0); DataError on a cycle."""
    n = parent.shape[0]
    depth = np.zeros(n, dtype=np.int64)
    anc = parent.copy()
    for _ in range(n + 1):
        live = anc >= 0
        if not live.any():
            return depth
        depth[live] += 1
        anc[live] = parent[anc[live]]
    raise DataError("parent: the tree contains a cycle")


def _eb_precision(coef, se, status, pidx, st_W, st_ybar, st_xbar, st_sig2):
    """Closed-form empirical-Bayes prior precisions 1/tau^2, shape (T, k), and tau^2."""
    _G, T, k = coef.shape
    prec = np.zeros((T, k))
    tau2_out = np.zeros((T, k))
    child = np.flatnonzero(pidx >= 0)
    for t in range(T):
        c = child[(status[child, t] == _k.OK) & (status[pidx[child], t] == _k.OK)]
        if c.size == 0:
            prec[t] = 0.0  # nothing to learn the spread from: no pooling
            tau2_out[t] = np.inf
            continue
        P = pidx[c]
        xb = np.nan_to_num(st_xbar[c, t, :], nan=0.0)
        bP = coef[P, t, 1:]
        cP = coef[P, t, 0] + np.nansum(np.where(np.isnan(bP), 0.0, bP) * xb, axis=1)
        d = [st_ybar[c, t] - cP]
        V = [st_sig2[c, t] / st_W[c, t]]
        for j in range(k - 1):
            d.append(coef[c, t, 1 + j] - coef[P, t, 1 + j])
            V.append(se[c, t, 1 + j] ** 2)
        for j in range(k):
            dj = d[j]
            vj = V[j]
            ok = np.isfinite(dj) & np.isfinite(vj)
            if not ok.any():
                prec[t, j] = 0.0
                tau2_out[t, j] = np.inf
                continue
            # DerSimonian-Laird moment estimator around a known centre (E d = 0):
            # E[sum d^2 / V] = K + tau^2 sum 1/V
            vv = np.maximum(vj[ok], 1e-300)
            K = vv.size
            Q = float(np.sum(dj[ok] ** 2 / vv))
            tau2 = max((Q - K) / float(np.sum(1.0 / vv)), 1e-12 * float(np.median(vv)) + 1e-300)
            tau2_out[t, j] = tau2
            prec[t, j] = 1.0 / tau2
    return prec, tau2_out


# --------------------------------------------------------------------------- O2DPG wrapper


def make_parallel_fit(
    df,
    gb_columns,
    fit_columns,
    linear_columns,
    median_columns,
    weights,
    suffix,
    selection,
    addPrediction: bool = False,
    cast_dtype: str | None = None,
    n_jobs: int = 1,
    min_stat=(10, 10),
    sigmaCut: float = 4.0,
    fitter: str = "auto",
    batch_size="auto",
    diag: bool = False,
    diag_prefix: str = "diag_",
):
    """Drop-in for O2DPG ``GroupByRegressor.make_parallel_fit`` (same signature and columns).

    Parameters
    ----------
    df : pandas.DataFrame
    gb_columns : list of str
        Columns defining the groups (any hashable dtype; combined).
    fit_columns : list of str
        Targets.
    linear_columns : list of str
        Predictors.
    median_columns : list of str
        Columns whose per-group median (over the selected rows) is reported as
        ``{col}{suffix}``.
    weights : str or None
        Weight column (finite, >= 0).
    suffix : str
    selection : pandas.Series or array of bool, shape (len(df),)
    addPrediction : bool
        Add ``{target}{suffix}`` = intercept + sum slope * x to the returned ``df``.
    cast_dtype : str, optional
        Cast slope/intercept/rms/mad columns (as O2DPG).
    n_jobs, batch_size : ignored
        Accepted for compatibility; the numba kernel uses its own threads.
    min_stat : int or list of int
        Per-predictor minimum of rows (as O2DPG); ``min(min_stat)`` is also the minimum number
        of rows for a group fit.
    sigmaCut : float
        Outlier cut in **sigma** units (``sigmaCut * 1.4826 * MAD``), iterated to
        convergence; ``None`` or ``inf`` disables clipping.
    fitter : {"auto", "robust", "ols", "huber", "sigma_clip"}
        ``"ols"``: least squares with the sigma cut (``method="sigma_clip"``).
        ``"robust"``/``"auto"``/``"huber"``: Huber IRLS (``method="huber"``), the numba
        replacement of O2DPG's ``HuberRegressor``. Callables (custom sklearn-style fitters)
        are not supported.
    diag : bool
        Add ``{diag_prefix}n_refits``, ``frac_rejected``, ``cond_xtx``, ``n_rows`` (of the
        first target) to the group table.

    Returns
    -------
    df_out : pandas.DataFrame
        ``df`` (with prediction columns when ``addPrediction``).
    dfGB : pandas.DataFrame
        One row per group: ``gb_columns``, ``{t}_slope_{x}{suffix}``, ``{t}_err_{x}{suffix}``,
        ``{t}_intercept{suffix}``, ``{t}_rms{suffix}``, ``{t}_mad{suffix}``, ``{m}{suffix}``,
        ``bin_count{suffix}``, plus ``{t}_err_intercept{suffix}``, ``{t}_status{suffix}``,
        ``{t}_n_used{suffix}``, ``{t}_n_rejected{suffix}``.

    Raises
    ------
    SchemaError
        Missing or non-numeric columns.
    DataError
        Bad weights, selection of the wrong length.
    ValueError
        Unsupported ``fitter``.

    Notes
    -----
    Intentional differences from O2DPG: groups that cannot be fitted are reported with NaN
    (never 0) and kept in the table (O2DPG drops groups with fewer than ``min_stat[0]/2`` rows);
    the sigma cut is in sigma units and iterated (O2DPG refits once on ``|r| <= sigmaCut *
    median|r|``); ``mad`` is scaled by 1.4826; ``rms`` and ``mad`` are weighted / over the rows
    of the final fit; standard errors include the intercept and the weights; ``min_stat`` is
    counted per target; a predictor dropped by ``min_stat`` does not make the prediction NaN
    (it is not part of that group's model).
    """
    import pandas as pd

    if callable(fitter):
        raise ValueError("fitter: custom fitter classes are not supported; use 'ols' or 'robust'")
    fmap = {
        "auto": "huber",
        "robust": "huber",
        "huber": "huber",
        "ols": "sigma_clip",
        "sigma_clip": "sigma_clip",
    }
    if fitter not in fmap:
        raise ValueError(f"fitter: expected one of {sorted(fmap)}, got {fitter!r}")
    method = fmap[fitter]
    if method == "sigma_clip" and (sigmaCut is None or not np.isfinite(sigmaCut)):
        method = "ols"
    gb_columns = [gb_columns] if isinstance(gb_columns, str) else list(gb_columns)
    fit_columns = list(fit_columns)
    linear_columns = list(linear_columns)
    median_columns = list(median_columns or [])
    need = gb_columns + fit_columns + linear_columns + median_columns
    if weights is not None:
        need.append(weights)
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise SchemaError(f"make_parallel_fit: column(s) not found in the data frame: {missing}")
    for c in fit_columns + linear_columns + median_columns + ([weights] if weights else []):
        if not (
            (pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]))
            or pd.api.types.is_bool_dtype(df[c])
        ):
            raise SchemaError(
                f"make_parallel_fit: column {c!r} is not numeric (dtype {df[c].dtype})"
            )
    sel = np.ones(len(df), bool) if selection is None else np.asarray(selection, dtype=bool)
    if sel.shape != (len(df),):
        raise DataError(f"selection: has shape {sel.shape}, expected ({len(df)},)")
    ms = np.atleast_1d(np.asarray(min_stat, dtype=np.int64))
    if ms.size == 1:
        ms = np.full(len(linear_columns), int(ms[0]))
    elif ms.size < len(linear_columns):
        raise ValueError(f"min_stat: expected {len(linear_columns)} values, got {ms.size}")
    ms = ms[: len(linear_columns)]
    codes = df.groupby(gb_columns, sort=True, dropna=False).ngroup().to_numpy(np.int64)
    res = fit_groups(
        codes,
        df[linear_columns].to_numpy(np.float64),
        df[fit_columns].to_numpy(np.float64),
        None if weights is None else df[weights].to_numpy(np.float64),
        selection=sel,
        method=method,
        min_stat=ms,
        min_rows=int(ms.min()) if ms.size else 0,
        sigma_cut=float(sigmaCut) if sigmaCut is not None and np.isfinite(sigmaCut) else 4.0,
        feature_names=linear_columns,
        target_names=fit_columns,
    )
    # one representative row per fitted group for the key columns
    first = pd.Series(np.arange(len(df)))[sel].groupby(codes[sel]).first()
    keys = df.iloc[first.loc[res.groups].to_numpy()][gb_columns].reset_index(drop=True)
    cols: dict[str, Any] = {}
    for ti, tname in enumerate(fit_columns):
        for j, x in enumerate(linear_columns):
            cols[f"{tname}_slope_{x}"] = res.coef[:, ti, 1 + j]
            cols[f"{tname}_err_{x}"] = res.stderr[:, ti, 1 + j]
        cols[f"{tname}_intercept"] = res.coef[:, ti, 0]
        cols[f"{tname}_err_intercept"] = res.stderr[:, ti, 0]
        cols[f"{tname}_rms"] = res.rms[:, ti]
        cols[f"{tname}_mad"] = res.mad[:, ti]
        cols[f"{tname}_status"] = res.status_names()[:, ti]
        cols[f"{tname}_n_used"] = res.n_used[:, ti]
        cols[f"{tname}_n_rejected"] = res.n_rejected[:, ti]
    if median_columns:
        med = df.loc[sel, median_columns].groupby(codes[sel]).median()
        for m in median_columns:
            cols[m] = med[m].reindex(res.groups).to_numpy()
    if diag:
        cols[f"{diag_prefix}n_refits"] = res.n_iter[:, 0] if fit_columns else 0
        with np.errstate(invalid="ignore", divide="ignore"):
            used_all = res.n_used[:, 0] + res.n_rejected[:, 0]
            cols[f"{diag_prefix}frac_rejected"] = np.where(
                used_all > 0, res.n_rejected[:, 0] / np.maximum(used_all, 1), np.nan
            )
        cols[f"{diag_prefix}cond_xtx"] = res.cond[:, 0]
        cols[f"{diag_prefix}n_rows"] = res.n_used[:, 0]
    cols["bin_count"] = res.n_rows.astype(np.int32)
    body = pd.DataFrame(cols)
    if cast_dtype is not None:
        for c in body.columns:
            if (
                any(s in c for s in ("slope", "intercept", "rms", "mad"))
                and body[c].dtype.kind == "f"
            ):
                body[c] = body[c].astype(cast_dtype)
    body = body.rename(columns={c: f"{c}{suffix}" for c in body.columns})
    dfGB = pd.concat([keys, body], axis=1)
    df_out = df
    if addPrediction:
        df_out = df.merge(dfGB, on=gb_columns, how="left")
        for tname in fit_columns:
            pred = df_out[f"{tname}_intercept{suffix}"].to_numpy(np.float64).copy()
            for x in linear_columns:
                slope = df_out[f"{tname}_slope_{x}{suffix}"].to_numpy(np.float64)
                pred += np.where(np.isnan(slope), 0.0, slope * df_out[x].to_numpy(np.float64))
            df_out[f"{tname}{suffix}"] = pred
    return df_out, dfGB
