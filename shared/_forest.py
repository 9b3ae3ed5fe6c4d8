"""GIL-free prediction of XGBoost tree ensembles from plain arrays (private to ``shared``).

:meth:`Forest.from_booster` reads an ``xgboost.Booster`` once, at model load, from its JSON
model (``booster.save_raw(raw_format="json")``) into flat arrays, and :meth:`Forest.predict`
answers what ``booster.inplace_predict(x)`` answers, **bit for bit**, with a numba kernel that
releases the GIL. Only ``gbtree`` models with scalar leaves, at most :data:`MAX_LEAVES` leaves
per tree and the objectives ``binary:logistic`` or ``multi:softprob`` are compiled; for
anything else (``gblinear``, ``dart``, other objectives, vector leaves, unknown split types,
bigger trees), and whenever the load-time check below fails, :meth:`Forest.predict` calls
``booster.inplace_predict`` itself, so the answer never differs from XGBoost's. The decision is
made once, at load time (:attr:`Forest.fallback`).

XGBoost semantics reproduced
----------------------------
Established empirically against XGBoost 3.2's ``inplace_predict`` (and the leaf indices of
``predict(pred_leaf=True)``); they match ``src/predictor/predict_fn.h``,
``src/common/categorical.h``, ``src/predictor/cpu_predictor.cc`` and ``src/common/math.h``:

* **Input.** Values are float32 (other real dtypes are rounded to float32 first, as XGBoost's
  array adapter does). NaN is missing; ``+-inf`` are ordinary values.
* **Numeric split.** ``x < split_condition`` goes to the left child, anything else (including
  ``+inf``) to the right child; a missing value goes to the default child (``default_left``).
* **Categorical split** (``split_type == 1``). The node holds a set of category codes
  (``categories[categories_segments[j]:][:categories_sizes[j]]`` for node
  ``categories_nodes[j]``); a value whose code **is in the set goes right**, every other value
  goes left. The code is the value truncated toward zero (``2.9 -> 2``, ``-0.0 -> 0``); a
  negative value, a value at or above ``2**24`` and ``+-inf`` are invalid categories and go
  **left**, like codes never used in training. NaN takes the default child. One-hot splits
  (``max_cat_to_onehot``) are stored the same way, with a one-element set.
* **Accumulation.** For output group ``g`` the margin starts at the base margin and adds the
  leaf value of each tree of that group (``tree_info``) in tree order, in float32.
* **Base margin.** ``binary:logistic``: ``learner_model_param.base_score`` is a probability
  ``p`` and the base margin is ``-logf(1.0f / p - 1.0f)`` in float32 (C's ``logf``).
  ``multi:softprob``: ``base_score`` holds one value per class (as XGBoost 3.2 writes it),
  already a margin, used as is (a single value is broadcast).
* **Transform.** ``binary:logistic``: ``1 / (expf(min(-m, 88.7f)) + 1 + 1e-16f)`` in float32
  (``common::Sigmoid``). ``multi:softprob``: ``w = max_k m_k``, ``e_k = expf(m_k - w)``, their
  sum accumulated in float64 and rounded to float32, ``p_k = e_k / sum`` in float32
  (``common::Softmax``).

numba's float32 ``np.exp``/``np.log`` call the C library's ``expf``/``logf``, as XGBoost does
(numpy's SIMD ``exp``/``log`` differ in the last bit), so base margin and transforms are
computed in numba. Because all of this is XGBoost's implementation rather than a documented
contract, :meth:`Forest.from_booster` also predicts a probe batch built from the model's own
split values (each threshold and the float just below it, ``+-inf``, NaN, codes in and beside
each category set, invalid codes) with the kernel and with ``inplace_predict``, and keeps
XGBoost unless the margins are bit-identical and the probabilities agree to ``1e-6``.

Algorithm
---------
The leaves of each tree are numbered left to right, so the leaves below any node form two
adjacent ranges (its left and right subtrees). Rows go in blocks of :data:`BLOCK_ROWS`; for
each tree, a bit mask per row starts with every leaf set, and **every** split of the tree
clears, for each row, the leaves of the subtree the row does not take there. Splits off the
row's path only clear leaves that are unreachable anyway, so exactly one bit survives: the exit
leaf, whose number is ``popcount(mask - 1)`` [1]_. A split is thus one pass over a contiguous
column of the block (compare, select, and) that the compiler vectorises, with no data-dependent
loads or branches, instead of a walk with a chain of dependent loads per row. Categorical
columns are expanded per block into one-hot 32-bit words over the feature's *slots* (slot 0 =
NaN, slot ``c + 1`` = code ``c``; invalid codes and codes above the model's largest category
set no bit), and a categorical split tests ``words & set != 0`` over the non-zero words of its
set. Masks are uint32 when every tree has at most 32 leaves, else uint64.

References
----------
.. [1] Lucchese, Nardini, Orlando, Perego, Tonellotto, Venturini (2015). QuickScorer: a fast
   algorithm to rank documents with additive ensembles of regression trees. SIGIR.
.. [2] Chen, Guestrin (2016). XGBoost: a scalable tree boosting system. KDD.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from fractions import Fraction
from typing import Any

import numpy as np
from numba import njit, types
from numba.extending import overload

logger = logging.getLogger(__name__)

#: Objectives the kernel reproduces; anything else is predicted by XGBoost.
SUPPORTED_OBJECTIVES = ("binary:logistic", "multi:softprob")

#: Most leaves per tree the bit-mask kernel takes (uint64 masks).
MAX_LEAVES = 64

#: Rows per block: its columns (``4 * BLOCK_ROWS`` bytes each; 14 KiB for 14 features) stay in L1.
BLOCK_ROWS = 256

#: Rows of the load-time probe batch.
PROBE_ROWS = 512

#: Split kinds (``node_kind``).
NUMERIC_DEFAULT_LEFT, NUMERIC_DEFAULT_RIGHT, CATEGORICAL = 0, 1, 2

#: XGBoost's ``OutOfRangeCat()``: category codes at or above it are invalid.
_MAX_CATEGORY = 1 << 24
_SIGMOID, _SOFTMAX = 0, 1


# --------------------------------------------------------------------------------------------
# numba kernels
# --------------------------------------------------------------------------------------------


def _exit_leaf(mask):
    """Number of the exit leaf of a one-hot leaf mask: ``popcount(mask - 1) & 63``."""
    return (int(mask) - 1).bit_count() & 63


@overload(_exit_leaf, jit_options={"cache": True, "nogil": True})
def _exit_leaf_numba(mask):
    # SWAR popcount in the mask's own width (numba would widen uint32 arithmetic to 64 bits,
    # which AVX2 cannot multiply in vectors); the uint64 version ends with shifts, not a
    # multiply, for the same reason.
    if mask == types.uint32:
        one, m1, m2, m4, h01 = (
            np.uint32(1),
            np.uint32(0x55555555),
            np.uint32(0x33333333),
            np.uint32(0x0F0F0F0F),
            np.uint32(0x01010101),
        )

        def impl32(mask):
            v = np.uint32(mask - one)
            v = np.uint32(v - ((v >> one) & m1))
            v = np.uint32((v & m2) + ((v >> np.uint32(2)) & m2))
            v = np.uint32((v + (v >> np.uint32(4))) & m4)
            return np.int32((np.uint32(v * h01) >> np.uint32(24)) & np.uint32(63))

        return impl32
    if mask == types.uint64:
        one64, n1, n2, n4 = (
            np.uint64(1),
            np.uint64(0x5555555555555555),
            np.uint64(0x3333333333333333),
            np.uint64(0x0F0F0F0F0F0F0F0F),
        )

        def impl64(mask):
            v = mask - one64
            v = v - ((v >> one64) & n1)
            v = (v & n2) + ((v >> np.uint64(2)) & n2)
            v = (v + (v >> np.uint64(4))) & n4
            v = v + (v >> np.uint64(8))
            v = v + (v >> np.uint64(16))
            v = v + (v >> np.uint64(32))
            return np.int32(v & np.uint64(63))

        return impl64
    return None


@njit(cache=True, nogil=True)
def _margin_kernel(
    x,
    node_ptr,
    node_kind,
    node_a,
    node_b,
    node_thr,
    keep_left,
    keep_right,
    tree_full,
    term_col,
    term_word,
    cat_feature,
    cat_col,
    cat_width,
    leaf_ptr,
    leaf,
    tree_group,
    base_margin,
    out,
):
    """Margins ``out`` (n, K) float32 of a forest, in XGBoost's accumulation order.

    Shapes: T trees, S splits, Q categorical features.

    Parameters
    ----------
    x : float32 (n, F), C-contiguous
    node_ptr : int64 (T + 1,)
        Splits of tree ``t`` are ``node_ptr[t]:node_ptr[t + 1]``.
    node_kind : int8 (S,)
        :data:`NUMERIC_DEFAULT_LEFT` (right if ``x >= thr``), :data:`NUMERIC_DEFAULT_RIGHT`
        (right if ``not x < thr``) or :data:`CATEGORICAL`.
    node_a, node_b : int32 (S,)
        Numeric: ``node_a`` is the feature. Categorical: terms ``node_a:node_b``.
    node_thr : float32 (S,)
        Numeric threshold.
    keep_left, keep_right : uint32 or uint64 (S,)
        Leaf mask kept when the row goes left (right subtree cleared) / right.
    tree_full : same dtype (T,)
        All leaves of each tree.
    term_col, term_word : int32 / uint32 (terms,)
        A categorical split goes right when ``words[term_col] & term_word != 0`` for a term.
    cat_feature, cat_col, cat_width : int32 (Q,)
        Categorical feature ``cat_feature[q]`` owns word columns ``cat_col[q]`` onwards,
        ``cat_width[q]`` of them (slots ``0 .. 32 * width - 1``).
    leaf_ptr : int64 (T + 1,); leaf : float32 (leaves + MAX_LEAVES,)
        Leaf values of tree ``t``, left to right, from ``leaf[leaf_ptr[t]]`` (zero padded:
        :func:`_exit_leaf` is below 64, so no mask can index outside the array).
    tree_group : int32 (T,); base_margin : float32 (K,)
    out : float32 (n, K)
    """
    n, n_features = x.shape
    n_groups = out.shape[1]
    n_trees = tree_group.shape[0]
    n_words = 0
    for q in range(cat_feature.shape[0]):
        n_words += cat_width[q]
    block = max(1, min(n, BLOCK_ROWS))
    xt = np.empty((n_features, block), dtype=np.float32)
    words = np.zeros((max(n_words, 1), block), dtype=np.uint32)
    acc = np.empty(block, dtype=tree_full.dtype)
    hit = np.empty(block, dtype=np.uint32)
    idx = np.empty(block, dtype=np.int32)
    margin = np.empty((n_groups, block), dtype=np.float32)
    for i0 in range(0, n, block):
        m = min(block, n - i0)
        # the block, column-major; categorical columns also as one-hot slot words
        for j in range(m):
            for f in range(n_features):
                xt[f, j] = x[i0 + j, f]
        for q in range(cat_feature.shape[0]):
            c0 = cat_col[q]
            width = cat_width[q]
            col = xt[cat_feature[q]]
            for w in range(width):
                words[c0 + w, :m] = 0
            for j in range(m):
                v = col[j]
                slot = -1
                if v != v:
                    slot = 0
                elif v >= 0.0 and v < 16777216.0:
                    c = int(v) + 1  # truncation toward zero, as XGBoost's AsCat
                    if c < 32 * width:
                        slot = c
                if slot >= 0:
                    words[c0 + (slot >> 5), j] = np.uint32(1) << np.uint32(slot & 31)
        for g in range(n_groups):
            for j in range(m):
                margin[g, j] = base_margin[g]
        for t in range(n_trees):
            full = tree_full[t]
            for j in range(m):
                acc[j] = full
            for k in range(node_ptr[t], node_ptr[t + 1]):
                kl = keep_left[k]
                kr = keep_right[k]
                kind = node_kind[k]
                if kind == 0:
                    col = xt[node_a[k]]
                    th = node_thr[k]
                    for j in range(m):
                        acc[j] &= kr if col[j] >= th else kl
                elif kind == 1:
                    col = xt[node_a[k]]
                    th = node_thr[k]
                    for j in range(m):
                        acc[j] &= kl if col[j] < th else kr
                else:
                    for j in range(m):
                        hit[j] = 0
                    for e in range(node_a[k], node_b[k]):
                        wc = words[term_col[e]]
                        bits = term_word[e]
                        for j in range(m):
                            hit[j] |= wc[j] & bits
                    for j in range(m):
                        acc[j] &= kr if hit[j] != 0 else kl
            lb = leaf_ptr[t]
            mg = margin[tree_group[t]]
            for j in range(m):
                idx[j] = _exit_leaf(acc[j])
            for j in range(m):
                mg[j] += leaf[lb + idx[j]]
        for j in range(m):
            for g in range(n_groups):
                out[i0 + j, g] = margin[g, j]


@njit(cache=True, nogil=True)
def _transform_kernel(margin, transform, out):
    """XGBoost's float32 ``Sigmoid`` (``transform == 0``, K = 1) or ``Softmax`` of ``margin``
    (n, K) into ``out`` (n, K)."""
    n, k = margin.shape
    one = np.float32(1.0)
    eps = np.float32(1e-16)
    cap = np.float32(88.7)
    if transform == 0:
        for i in range(n):
            z = -margin[i, 0]
            if cap < z:
                z = cap
            out[i, 0] = one / (np.exp(z) + one + eps)
    else:
        for i in range(n):
            w = margin[i, 0]
            for j in range(1, k):
                w = max(margin[i, j], w)
            s = 0.0
            for j in range(k):
                e = np.exp(margin[i, j] - w)
                out[i, j] = e
                s += e
            s32 = np.float32(s)
            for j in range(k):
                out[i, j] = out[i, j] / s32


@njit(cache=True, nogil=True)
def _logistic_base_margin(p):
    """``-logf(1.0f / p - 1.0f)`` in float32 (XGBoost's ``ProbToMargin`` of the logistic)."""
    one = np.float32(1.0)
    return -np.log(one / p - one)


# --------------------------------------------------------------------------------------------
# model conversion
# --------------------------------------------------------------------------------------------


def _floats32(values: list[Any]) -> np.ndarray:
    """Decimal numbers (JSON items parsed as strings) to the float32 nearest to each.

    Rounding through float64 is exact except when the float64 lands on a float32 tie; those
    (rare) items are decided on the exact decimal value.
    """
    text = [str(v) for v in values]
    d = np.array([float(s) for s in text], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        f = d.astype(np.float32)
        g = np.nextafter(f, np.where(d > f, np.float32(np.inf), np.float32(-np.inf)))
        mid = (f.astype(np.float64) + g.astype(np.float64)) / 2.0  # exact in float64
        tie = np.isfinite(f) & (d != f) & (d == mid)
    for i in np.flatnonzero(tie).tolist():
        exact, half = Fraction(text[i]), Fraction(float(mid[i]))
        if exact != half and (exact > half) == (float(g[i]) > float(f[i])):
            f[i] = g[i]  # the decimal is on g's side of the tie (exact ties stay at even f)
    return f


def _vector(text: Any) -> list[str]:
    """``"[1E0,2E0]"`` or ``"1E0"`` (how XGBoost writes ``base_score``) to its items."""
    return [s.strip() for s in str(text).strip().strip("[]").split(",") if s.strip()]


class _Unsupported(Exception):
    """The model uses something the kernel does not reproduce (the message says what)."""


@dataclasses.dataclass(frozen=True)
class _Tables:
    """The arrays of :func:`_margin_kernel` (see its docstring), plus what :meth:`Forest.probe`
    draws from."""

    node_ptr: np.ndarray
    node_kind: np.ndarray
    node_a: np.ndarray
    node_b: np.ndarray
    node_thr: np.ndarray
    keep_left: np.ndarray
    keep_right: np.ndarray
    tree_full: np.ndarray
    term_col: np.ndarray
    term_word: np.ndarray
    cat_feature: np.ndarray
    cat_col: np.ndarray
    cat_width: np.ndarray
    leaf_ptr: np.ndarray
    leaf: np.ndarray
    tree_group: np.ndarray
    base_margin: np.ndarray
    transform: int
    split_values: list[np.ndarray]  # per feature: numeric thresholds (float32)
    category_values: list[np.ndarray]  # per feature: category codes used in splits (int64)

    def kernel_args(self) -> tuple[np.ndarray, ...]:
        return (
            self.node_ptr,
            self.node_kind,
            self.node_a,
            self.node_b,
            self.node_thr,
            self.keep_left,
            self.keep_right,
            self.tree_full,
            self.term_col,
            self.term_word,
            self.cat_feature,
            self.cat_col,
            self.cat_width,
            self.leaf_ptr,
            self.leaf,
            self.tree_group,
            self.base_margin,
        )


def _base_margin(objective: str, param: dict[str, Any], n_groups: int) -> np.ndarray:
    base = _floats32(_vector(param["base_score"]))
    if objective == "binary:logistic":
        if base.size != 1:
            raise _Unsupported(f"binary:logistic with {base.size} base scores")
        return np.array([_logistic_base_margin(base[0])], dtype=np.float32)
    if base.size == 1:
        base = np.repeat(base, n_groups)
    if base.size != n_groups:
        raise _Unsupported(f"{base.size} base scores for {n_groups} classes")
    return base.astype(np.float32)


def _tables(model: dict[str, Any]) -> _Tables:
    """Kernel arrays of a parsed JSON model (floats as strings); raises :class:`_Unsupported`."""
    learner = model["learner"]
    objective = learner["objective"]["name"]
    if objective not in SUPPORTED_OBJECTIVES:
        raise _Unsupported(f"objective {objective!r}")
    gb = learner["gradient_booster"]
    if gb.get("name") != "gbtree":
        raise _Unsupported(f"booster {gb.get('name')!r}")
    param = learner["learner_model_param"]
    if int(param.get("num_target", "1")) != 1:
        raise _Unsupported(f"num_target {param['num_target']}")
    n_features = int(param["num_feature"])
    if not 1 <= n_features < 2**31:
        raise _Unsupported(f"num_feature {n_features}")
    n_class = int(param.get("num_class", "0"))
    if objective == "multi:softprob" and n_class < 2:
        raise _Unsupported(f"multi:softprob with num_class {n_class}")
    n_groups = 1 if objective == "binary:logistic" else n_class
    base_margin = _base_margin(objective, param, n_groups)
    trees = gb["model"]["trees"]
    tree_info = [int(g) for g in gb["model"]["tree_info"]]
    if len(tree_info) != len(trees) or any(not 0 <= g < n_groups for g in tree_info):
        raise _Unsupported("tree_info does not match the output groups")

    # pass 1: per tree, splits in pre-order with their leaf ranges (leaves left to right)
    parsed = []
    max_leaves = 1
    max_code = [-1] * n_features  # largest category code used in a split, per feature
    is_cat = [False] * n_features
    for t, tree in enumerate(trees):
        if int(tree.get("tree_param", {}).get("size_leaf_vector", "1")) > 1:
            raise _Unsupported("vector leaves (multi-target trees)")
        left, right = tree["left_children"], tree["right_children"]
        feature, default_left = tree["split_indices"], tree["default_left"]
        split_type = tree["split_type"]
        cond = _floats32(tree["split_conditions"])
        sets = {
            int(nd): (int(s), int(z))
            for nd, s, z in zip(
                tree["categories_nodes"],
                tree["categories_segments"],
                tree["categories_sizes"],
                strict=True,
            )
        }
        leaves: list[float] = []
        # (kind, feature, threshold or default_left, members, left/right range)
        splits: list[tuple[int, int, Any, np.ndarray | None, tuple[int, int], tuple[int, int]]] = []
        order = []  # pre-order: leaves come left to right
        todo = [0]
        while todo:
            nd = todo.pop()
            order.append(nd)
            if int(left[nd]) != -1:
                todo.append(int(right[nd]))
                todo.append(int(left[nd]))
        first: dict[int, int] = {}
        last: dict[int, int] = {}
        for nd in order:  # pre-order visits leaves left to right
            if int(left[nd]) == -1:
                first[nd] = last[nd] = len(leaves)
                leaves.append(cond[nd])
        for nd in reversed(order):  # children before parents
            if int(left[nd]) != -1:
                first[nd] = first[int(left[nd])]
                last[nd] = last[int(right[nd])]
        if len(leaves) > MAX_LEAVES:
            raise _Unsupported(f"tree {t} has {len(leaves)} leaves > {MAX_LEAVES}")
        max_leaves = max(max_leaves, len(leaves))
        for nd in order:
            if int(left[nd]) == -1:
                continue
            f = int(feature[nd])
            if not 0 <= f < n_features:
                raise _Unsupported(f"split on feature {f} of {n_features}")
            lo, hi = int(left[nd]), int(right[nd])
            ranges = ((first[lo], last[lo]), (first[hi], last[hi]))
            st = int(split_type[nd])
            if st == 0:
                kind = NUMERIC_DEFAULT_LEFT if int(default_left[nd]) else NUMERIC_DEFAULT_RIGHT
                splits.append((kind, f, cond[nd], None, *ranges))
            elif st == 1:
                if nd not in sets:
                    raise _Unsupported(f"categorical split {nd} of tree {t} without a set")
                s, z = sets[nd]
                members = np.asarray(tree["categories"][s : s + z], dtype=np.int64)
                if members.size and (members.min() < 0 or members.max() >= _MAX_CATEGORY):
                    raise _Unsupported("a category code outside [0, 2**24)")
                if members.size:
                    max_code[f] = max(max_code[f], int(members.max()))
                is_cat[f] = True
                splits.append((CATEGORICAL, f, bool(int(default_left[nd])), members, *ranges))
            else:
                raise _Unsupported(f"split type {st}")
        parsed.append((splits, leaves))

    # one-hot word columns of the categorical features: slot 0 = NaN, slot c + 1 = code c
    cat_features = [f for f in range(n_features) if is_cat[f]]
    cat_col_of, cat_width, col = {}, [], 0
    for f in cat_features:
        width = (max_code[f] + 1) // 32 + 1  # slots 0 .. max_code + 1
        cat_col_of[f] = col
        cat_width.append(width)
        col += width

    mask_dtype = np.uint32 if max_leaves <= 32 else np.uint64
    all_ones = (1 << (np.dtype(mask_dtype).itemsize * 8)) - 1

    def span(r: tuple[int, int]) -> int:
        return ((1 << (r[1] + 1)) - 1) ^ ((1 << r[0]) - 1)

    node_ptr, kind_l, a_l, b_l, thr_l, kl_l, kr_l, full_l = [0], [], [], [], [], [], [], []
    term_col: list[int] = []
    term_word: list[int] = []
    leaf_ptr, leaf_l = [0], []
    split_values: list[list[float]] = [[] for _ in range(n_features)]
    category_values: list[list[int]] = [[] for _ in range(n_features)]
    for splits, leaves in parsed:
        for kind, f, extra, codes_, left_range, right_range in splits:
            kind_l.append(kind)
            kl_l.append(all_ones ^ span(right_range))
            kr_l.append(all_ones ^ span(left_range))
            if kind == CATEGORICAL:
                assert codes_ is not None  # categorical splits carry their member codes
                word = np.zeros(cat_width[cat_features.index(f)], dtype=np.uint64)
                slots = [0] if not extra else []  # NaN goes right unless default_left
                slots += (codes_ + 1).tolist()
                for sl in slots:
                    word[sl >> 5] |= np.uint64(1 << (sl & 31))
                a_l.append(len(term_col))
                for w in np.flatnonzero(word).tolist():
                    term_col.append(cat_col_of[f] + w)
                    term_word.append(int(word[w]))
                b_l.append(len(term_col))
                thr_l.append(0.0)
                category_values[f].extend(codes_.tolist())
            else:
                a_l.append(f)
                b_l.append(0)
                thr_l.append(extra)
                split_values[f].append(extra)
        node_ptr.append(len(kind_l))
        full_l.append((1 << len(leaves)) - 1)
        leaf_l.extend(leaves)
        leaf_ptr.append(len(leaf_l))
    leaf = np.zeros(len(leaf_l) + MAX_LEAVES, dtype=np.float32)
    leaf[: len(leaf_l)] = np.asarray(leaf_l, dtype=np.float32)
    return _Tables(
        node_ptr=np.asarray(node_ptr, dtype=np.int64),
        node_kind=np.asarray(kind_l, dtype=np.int8),
        node_a=np.asarray(a_l, dtype=np.int32),
        node_b=np.asarray(b_l, dtype=np.int32),
        node_thr=np.asarray(thr_l, dtype=np.float32),
        keep_left=np.asarray(kl_l, dtype=mask_dtype),
        keep_right=np.asarray(kr_l, dtype=mask_dtype),
        tree_full=np.asarray(full_l, dtype=mask_dtype),
        term_col=np.asarray(term_col, dtype=np.int32),
        term_word=np.asarray(term_word, dtype=np.uint32),
        cat_feature=np.asarray(cat_features, dtype=np.int32),
        cat_col=np.asarray([cat_col_of[f] for f in cat_features], dtype=np.int32),
        cat_width=np.asarray(cat_width, dtype=np.int32),
        leaf_ptr=np.asarray(leaf_ptr, dtype=np.int64),
        leaf=leaf,
        tree_group=np.asarray(tree_info, dtype=np.int32),
        base_margin=base_margin,
        transform=_SIGMOID if objective == "binary:logistic" else _SOFTMAX,
        split_values=[np.unique(np.asarray(v, dtype=np.float32)) for v in split_values],
        category_values=[np.unique(np.asarray(v, dtype=np.int64)) for v in category_values],
    )


# --------------------------------------------------------------------------------------------
# the forest
# --------------------------------------------------------------------------------------------


class Forest:
    """An XGBoost booster's trees as plain arrays, predicted by a GIL-free numba kernel.

    Build with :meth:`from_booster`; :meth:`predict` is a drop-in for
    ``booster.inplace_predict(x)`` (same shape, dtype and values).

    Attributes
    ----------
    booster : xgboost.Booster
        The source model (predicts when :attr:`fallback` is set, and for inputs that are not
        2-D real numpy arrays with :attr:`n_features` columns).
    objective : str
        ``learner.objective.name`` of the model.
    n_features : int
        Columns the model expects.
    n_groups : int
        Outputs per row: 1 for ``binary:logistic``, ``num_class`` for ``multi:softprob``.
    fallback : str or None
        Why predictions go through ``booster.inplace_predict`` (an unsupported objective,
        booster, leaf type, split type or tree size, an unreadable model, or a failed load-time
        check), or None when the kernel answers.

    Examples
    --------
    >>> import xgboost as xgb
    >>> x = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32)
    >>> booster = xgb.train({"objective": "binary:logistic", "max_depth": 2, "nthread": 1},
    ...                     xgb.DMatrix(x, label=x[:, 0] > 0), 5)
    >>> forest = Forest.from_booster(booster)
    >>> forest.fallback is None
    True
    >>> bool(np.array_equal(forest.predict(x), booster.inplace_predict(x)))
    True
    """

    def __init__(
        self,
        booster: Any,
        objective: str,
        n_features: int,
        n_groups: int,
        tables: _Tables | None,
        fallback: str | None,
    ) -> None:
        self.booster = booster
        self.objective = objective
        self.n_features = n_features
        self.n_groups = n_groups
        self._tables = tables
        self.fallback = fallback

    @classmethod
    def from_booster(cls, booster: Any, *, check: bool = True) -> Forest:
        """Convert a booster once (at model load).

        Parameters
        ----------
        booster : xgboost.Booster
            A trained model; it is not modified.
        check : bool, default True
            Predict :meth:`probe` with the kernel and with ``inplace_predict`` and keep
            XGBoost unless the margins are bit-identical and the probabilities agree to 1e-6.
            This also compiles the kernels (numba caches them on disk, so later processes
            load them).

        Returns
        -------
        Forest
            :attr:`fallback` says whether, and why, XGBoost still predicts.
        """
        model = json.loads(bytes(booster.save_raw(raw_format="json")), parse_float=str)
        learner = model.get("learner", {})
        objective = str(learner.get("objective", {}).get("name", "?"))
        param = learner.get("learner_model_param", {})
        n_features = int(param.get("num_feature", 0))
        n_groups = int(param.get("num_class", 0)) if objective == "multi:softprob" else 1
        try:
            tables = _tables(model)
        except _Unsupported as exc:
            logger.info("XGBoost model predicted by XGBoost: %s is not compiled", exc)
            return cls(booster, objective, n_features, n_groups, None, f"unsupported: {exc}")
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            logger.warning(
                "XGBoost model predicted by XGBoost: cannot read its JSON model (%s: %s)",
                type(exc).__name__,
                exc,
            )
            return cls(
                booster,
                objective,
                n_features,
                n_groups,
                None,
                f"unreadable model: {type(exc).__name__}: {exc}",
            )
        forest = cls(booster, objective, n_features, n_groups, tables, None)
        if check:
            problem = forest._check()
            if problem is not None:
                logger.warning(
                    "XGBoost model predicted by XGBoost: the compiled forest "
                    "disagrees with it on the probe batch (%s)",
                    problem,
                )
                forest.fallback = f"load-time check failed: {problem}"
                forest._tables = None
        return forest

    # ------------------------------------------------------------------ prediction
    def margin(self, x: np.ndarray) -> np.ndarray:
        """Raw margins, like ``booster.inplace_predict(x, predict_type="margin")``.

        Parameters
        ----------
        x : ndarray of shape (n, n_features), real dtype
            Rounded to float32 (NaN = missing; categorical columns hold category codes).

        Returns
        -------
        ndarray of shape (n,) for ``binary:logistic``, (n, K) for ``multi:softprob``, float32
        """
        if self._tables is None or not self._accepts(x):
            return self.booster.inplace_predict(x, predict_type="margin")
        m = self._margin(x)
        return m[:, 0] if self.n_groups == 1 else m

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities, like ``booster.inplace_predict(x)`` (bit-identical).

        Parameters
        ----------
        x : ndarray of shape (n, n_features), real dtype
            Rounded to float32 (NaN = missing; categorical columns hold category codes).

        Returns
        -------
        ndarray, float32
            Shape (n,) for ``binary:logistic`` (the probability of class 1); (n, K) for
            ``multi:softprob`` (rows sum to 1 up to float32 rounding).

        Raises
        ------
        Exception
            Whatever ``inplace_predict`` raises for an input it rejects (e.g. another number
            of columns): such inputs are handed to XGBoost.
        """
        if self._tables is None or not self._accepts(x):
            return self.booster.inplace_predict(x)
        m = self._margin(x)
        p = np.empty_like(m)
        _transform_kernel(m, self._tables.transform, p)
        return p[:, 0] if self.n_groups == 1 else p

    def inplace_predict(self, x: np.ndarray) -> np.ndarray:
        """Same as :meth:`predict`: a Forest stands in for its booster wherever only
        ``inplace_predict(x)`` is called (:func:`segstream.shared.profiles.predict_pattern_proba`)."""
        return self.predict(x)

    def _accepts(self, x: Any) -> bool:
        # 0 rows go to XGBoost too: it answers shape (0,) whatever the objective
        return (
            type(x) is np.ndarray
            and x.ndim == 2
            and x.shape[1] == self.n_features
            and x.shape[0] > 0
            and x.dtype.kind in "fiub"
        )

    def _margin(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty((x.shape[0], self.n_groups), dtype=np.float32)
        if self._tables is None:  # callers check first; here for the type checker
            raise RuntimeError("forest tables are not built")
        _margin_kernel(x, *self._tables.kernel_args(), out)
        return out

    # ------------------------------------------------------------------ load-time check
    def probe(self, n: int = PROBE_ROWS, seed: int = 0) -> np.ndarray:
        """A float32 batch of shape (n, n_features) that exercises the model's splits.

        Each cell is drawn from: the feature's thresholds and the float32 just below each
        (both sides of ``x < t``); for categorical features the codes of its sets and their
        neighbours, fractional codes and the first code past the largest; NaN, ``+-inf``,
        ``+-0``, invalid codes (-1, -0.5, ``2**24``, 1e30) and standard normal noise.
        """
        t = self._tables
        if t is None:
            raise ValueError("probe needs a compiled forest")
        rng = np.random.default_rng(seed)
        x = np.empty((n, self.n_features), dtype=np.float32)
        special = np.array(
            [np.nan, np.inf, -np.inf, -1.0, -0.5, -0.0, 0.0, 0.5, 2.5, 16777216.0, 1e30],
            dtype=np.float32,
        )
        for f in range(self.n_features):
            thr = t.split_values[f]
            cats = t.category_values[f].astype(np.float32)
            pool = [special, rng.standard_normal(8).astype(np.float32)]
            if thr.size:
                pool += [thr, np.nextafter(thr, np.float32(-np.inf))]
            if cats.size:
                pool += [
                    cats,
                    cats + 1,
                    cats - 1,
                    cats + np.float32(0.75),
                    np.array([cats.max() + 1, cats.max() + 40], dtype=np.float32),
                ]
            pool_a = np.concatenate(pool)
            x[:, f] = pool_a[rng.integers(0, pool_a.size, n)]
        return x

    def _check(self) -> str | None:
        """None when kernel and XGBoost agree on :meth:`probe` (margins bit-identical,
        probabilities within 1e-6), else what differs."""
        x = self.probe()
        for rows in (x[:1], x[:2]):  # compiles the kernels (0 rows never reach them)
            self.predict(rows)
        want_m = np.asarray(self.booster.inplace_predict(x, predict_type="margin"))
        got_m = self.margin(x)
        if want_m.shape != got_m.shape or want_m.dtype != got_m.dtype:
            return (
                f"margins of shape {got_m.shape} {got_m.dtype}, XGBoost's "
                f"{want_m.shape} {want_m.dtype}"
            )
        if not np.array_equal(want_m, got_m, equal_nan=True):
            return f"margins differ by up to {np.nanmax(np.abs(want_m - got_m)):.3g}"
        want = np.asarray(self.booster.inplace_predict(x))
        got = self.predict(x)
        if want.shape != got.shape:
            return f"predictions of shape {got.shape}, XGBoost's {want.shape}"
        diff = float(np.max(np.abs(want.astype(np.float64) - got))) if want.size else 0.0
        if not diff <= 1e-6:
            return f"probabilities differ by up to {diff:.3g}"
        if diff > 0:
            logger.info(
                "compiled forest: probabilities within %.3g of XGBoost's, not bit-identical", diff
            )
        return None
