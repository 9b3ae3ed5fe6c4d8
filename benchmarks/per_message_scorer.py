"""The per-message scorer of the worker benchmark's baselines (faust, Quix Streams, in-process).

What a competent user of a per-record stream framework writes to serve a segstream bundle
without segstream's batch scorer: load the bundle once, copy its routing tree, per-node
segment-model coefficients, intercepts, interval offsets and category tables into plain
Python lists and dicts, then per message parse the JSON (orjson), walk the tree, take the dot
product, ask XGBoost for the pattern of that one row (``Booster.inplace_predict``, the
XGBoost docs' low-latency call) and build the output dict. No DataFrame per event and no call
into :class:`segstream.shared.scoring.Bundle`; the semantics (missing-value look-ahead,
fallback to the nearest ancestor with a model, mean imputation of missing regressors) follow
the bundle's, so :func:`parity` can check it against ``Bundle.score`` on a sample.

It runs inside the faust and Quix Streams baseline apps (the Quix venv sees this project's
packages through a ``.pth`` file) and in ``bench_worker.py`` itself.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import orjson

NAN = float("nan")


class PerMessageScorer:
    """A bundle copied into plain lists/dicts, scored one JSON message at a time.

    Parameters
    ----------
    bundle_dir : str
        A bundle directory; loaded (and verified) once with
        :func:`segstream.shared.scoring.load_bundle`, then only plain Python data and the
        XGBoost booster are kept.
    """

    def __init__(self, bundle_dir: str) -> None:
        from segstream.shared.scoring import load_bundle

        b = load_bundle(bundle_dir)
        r = b.router
        a = r.arrays
        self.model = b.model
        self.bundle_id = b.bundle_id
        self.interval_mass = b.interval_mass
        self.id_field = b.schema.id_field
        self.time_field = b.schema.time_field
        # routing: design columns, category tables, the tree as lists
        self.design = [(c.source, c.kind) for c in r.schema.columns]
        if any(k not in ("numeric", "key") for _, k in self.design):
            raise ValueError("per-message scorer handles numeric and key design columns only")
        self.cats = {
            k: {str(s): i for i, s in enumerate(v)} for k, v in r.schema.categories.items()
        }
        self.kind = a["node_kind"].tolist()
        self.feature = a["node_feature"].tolist()
        self.threshold = a["node_threshold"].tolist()
        self.right = a["node_right"].tolist()
        self.node_segment = a["node_segment"].tolist()
        self.node_weight = a["node_weight"].tolist()
        ptr, code, node = a["child_ptr"].tolist(), a["child_code"].tolist(), a["child_node"]
        self.children = [
            dict(zip(code[ptr[i] : ptr[i + 1]], node[ptr[i] : ptr[i + 1]].tolist(), strict=True))
            for i in range(len(self.kind))
        ]
        # segment models per node: (model node, coefficients, means, interval offsets)
        t = b.nodes
        depth = t.depth.tolist()
        seg_depth = [depth[n] for n in t.segment_node.tolist()]
        coef = b.linear.coef[:, 0, :].tolist()
        x_mean = b.linear.x_mean.tolist()
        self.features = list(b.linear_features)
        self.node_model = []
        for nd in range(len(self.kind)):
            mn = int(t.model_node[nd])
            gi = int(t.model_index[nd])
            self.node_model.append(
                (
                    depth[mn],
                    coef[gi],
                    x_mean[gi],
                    float(t.interval_lo[mn]),
                    float(t.interval_hi[mn]),
                )
            )
        self.seg_depth = seg_depth
        # pattern classifier: the XGBoost booster, one row per call
        p = b.profiles
        self.booster = p.booster
        self.n_patterns = p.n_patterns
        self.p_features = [
            (f, kind, {str(s): i for i, s in enumerate(p.categories[f])} if kind == "c" else None)
            for f, kind in zip(p.features, p.feature_types, strict=True)
        ]

    # ------------------------------------------------------------------ per message
    def _route(self, z: list[float]) -> tuple[int, int]:
        """(leaf, deepest node followed) of one design row."""
        kind, feature, threshold = self.kind, self.feature, self.threshold
        nd = 0
        while True:
            f = feature[nd]
            if f < 0:
                return nd, nd
            v = z[f]
            if v != v:  # missing: look ahead
                break
            if kind[nd] == 1:
                nd = nd + 1 if v <= threshold[nd] else self.right[nd]
                continue
            child = self.children[nd].get(int(v), -1) if v >= 0 else -1
            if child < 0:  # unknown key
                break
            nd = child
        return self._best_leaf(z, nd), nd

    def _best_leaf(self, z: list[float], start: int) -> int:
        """Leaf of largest training weight reachable when unknown splits go both ways."""
        stack = [start]
        best, best_w = -1, -math.inf
        while stack:
            nd = stack.pop()
            k = self.kind[nd]
            if k == 0:
                w = self.node_weight[nd]
                if (
                    best < 0
                    or w > best_w
                    or (w == best_w and self.node_segment[nd] < self.node_segment[best])
                ):
                    best, best_w = nd, w
            elif k == 1:
                v = z[self.feature[nd]]
                t = self.threshold[nd]
                if v <= t:
                    stack.append(nd + 1)
                elif v > t:
                    stack.append(self.right[nd])
                else:
                    stack += [self.right[nd], nd + 1]
            else:
                v = z[self.feature[nd]]
                child = self.children[nd].get(int(v), -1) if v == v and v >= 0 else -1
                if child >= 0:
                    stack.append(child)
                else:
                    stack += list(self.children[nd].values())[::-1]
        return best

    def score(self, event: dict[str, Any]) -> dict[str, Any]:
        """The prediction record (as a dict) of one parsed event."""
        z = []
        for src, kind in self.design:
            v = event.get(src)
            if kind == "numeric":
                z.append(_num(v))
            else:
                z.append(NAN if v is None else float(self.cats[src].get(str(v), -1)))
        leaf, nd = self._route(z)
        segment = self.node_segment[leaf]
        m_depth, coef, x_mean, lo, hi = self.node_model[nd]
        if math.isfinite(coef[0]):
            pred = coef[0]
            for j, f in enumerate(self.features):
                c = coef[1 + j]
                if c != c:
                    continue
                x = _num(event.get(f))
                if not math.isfinite(x):
                    x = x_mean[j]
                pred += c * x
        else:
            pred = NAN
        pattern, proba = 0, 1.0
        if self.booster is not None and self.n_patterns > 1:
            row = [
                _num(event.get(f))
                if kind == "q"
                else (
                    NAN if (v := event.get(f)) is None else float(table.get(str(v), NAN))  # type: ignore[union-attr]
                )
                for f, kind, table in self.p_features
            ]
            out = self.booster.inplace_predict(np.asarray([row], dtype=np.float32))
            if out.ndim == 1 and self.n_patterns == 2:
                p1 = float(out[0])
                probs = [1.0 - p1, p1]
            else:
                raw = [float(x) for x in out.reshape(-1)]
                s = sum(raw)
                probs = [x / s for x in raw]
            pattern = max(range(len(probs)), key=probs.__getitem__)
            proba = probs[pattern]
        return {
            "event_id": event[self.id_field],
            "model": self.model,
            "bundle_id": self.bundle_id,
            "segment": segment,
            "fallback_level": self.seg_depth[segment] - m_depth,
            "prediction": pred,
            "interval": [pred + lo, pred + hi],
            "interval_mass": self.interval_mass,
            "pattern": pattern,
            "pattern_proba": proba,
            "event_time": event.get(self.time_field),
            "scored_at": dt.datetime.now(dt.UTC).isoformat(),
        }

    def score_bytes(self, value: bytes) -> tuple[bytes, bytes]:
        """(key, JSON record) of one raw event: parse, score, serialise."""
        rec = self.score(orjson.loads(value))
        return rec["event_id"].encode(), orjson.dumps(rec)


def _num(v: Any) -> float:
    if v is None or isinstance(v, (bool, str)):
        return NAN
    return float(v)


def parity(bundle: Any, scorer: PerMessageScorer, values: list[bytes]) -> dict[str, Any]:
    """Compare the per-message scorer with ``Bundle.score`` on ``values`` (raw events).

    Only the events the worker's decoder accepts are compared (the others are DLQ records
    there). Returns the number compared and rejected, the largest absolute differences of the float outputs and the
    number of events whose segment, fallback level or pattern differ.
    """
    from segstream.services.worker.decode import EventDecoder

    d = EventDecoder(bundle.schema, 65_536).decode(values)
    ref = bundle.score(d.columns)
    recs = [scorer.score(orjson.loads(values[i])) for i in d.valid.tolist()]

    def maxdiff(a: np.ndarray, b: list[float]) -> float:
        x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        both_nan = np.isnan(x) & np.isnan(y)
        diff = np.where(both_nan, 0.0, np.abs(x - y))
        return float(np.nanmax(np.where(np.isnan(diff), np.inf, diff))) if len(diff) else 0.0

    return {
        "events": len(recs),
        "rejected_by_decoder": len(d.rejected),
        "max_abs_diff_prediction": maxdiff(ref["prediction"], [r["prediction"] for r in recs]),
        "max_abs_diff_interval_low": maxdiff(ref["interval_low"], [r["interval"][0] for r in recs]),
        "max_abs_diff_interval_high": maxdiff(
            ref["interval_high"], [r["interval"][1] for r in recs]
        ),
        "max_abs_diff_pattern_proba": maxdiff(
            ref["pattern_proba"], [r["pattern_proba"] for r in recs]
        ),
        "segment_mismatches": int(
            sum(int(a) != r["segment"] for a, r in zip(ref["segment"], recs, strict=True))
        ),
        "fallback_level_mismatches": int(
            sum(
                int(a) != r["fallback_level"]
                for a, r in zip(ref["fallback_level"], recs, strict=True)
            )
        ),
        "pattern_mismatches": int(
            sum(int(a) != r["pattern"] for a, r in zip(ref["pattern"], recs, strict=True))
        ),
    }
