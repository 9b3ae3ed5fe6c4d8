"""Offline check of calibrated drift levels on the real Sep-Dec 2013 flights: daily PSI per
feature against the Jan-Aug reference, alerts at the default levels vs the training-calibrated
levels. Writes benchmarks/results/drift_calibration_sep_dec.json."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from segstream.shared.data import load_dataset
from segstream.shared.drift import DriftReference, psi, window_psi_levels
from segstream.shared.settings import load_settings
from segstream.training.pipeline import split_by_time

s = load_settings(str(Path(__file__).resolve().parent.parent / "config" / "flights.yaml"))
sc = s.event_schema
df = load_dataset(s)
tr, va, te = split_by_time(df, sc, s.training.train_end, s.training.validation_end)
feats = [f for f in sc.numeric_features if f not in s.monitor.drift_exclude]
ref = DriftReference.fit(
    {f: tr[f].to_numpy(float) for f in feats},
    {f: tr[f].to_numpy(object) for f in sc.categorical_features},
)


def win(frame):
    return frame[sc.time_field].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(
        "datetime64[ns]"
    ).astype(np.int64) // (86400 * 10**9)


lv = window_psi_levels(
    ref,
    {f: tr[f].to_numpy(float) for f in feats},
    {f: tr[f].to_numpy(object) for f in sc.categorical_features},
    None,
    win(tr),
    300,
)
ref = DriftReference(ref.numeric, ref.categorical, ref.prediction, {}, lv, 86400)
live = pd.concat([va, te])
w = win(live)
out = {}
for f in feats + sc.categorical_features:
    r = ref.numeric.get(f) or ref.categorical.get(f)
    vals = live[f].to_numpy(float if f in feats else object)
    ps = []
    for u in np.unique(w):
        m = w == u
        if m.sum() < 300:
            continue
        ps.append(psi(r.expected, np.bincount(r.bin(vals[m]), minlength=r.n_bins)))
    ps = np.array(ps)
    wl, cl = ref.calibrated_levels(f, 0.1, 0.25)
    out[f] = {
        "calibrated_levels": [round(wl, 3), round(cl, 3)],
        "days": len(ps),
        "default_warning_or_more": int((ps >= 0.1).sum()),
        "default_critical": int((ps >= 0.25).sum()),
        "calibrated_warning_or_more": int((ps >= wl).sum()),
        "calibrated_critical": int((ps >= cl).sum()),
        "by_month_calibrated_alerts": {},
    }
    months = pd.Series(np.unique(w)[[(w == u).sum() >= 300 for u in np.unique(w)]]).map(
        lambda d: pd.Timestamp(d * 86400, unit="s").strftime("%Y-%m")
    )
    out[f]["by_month_calibrated_alerts"] = (
        pd.Series(ps >= wl).groupby(months.to_numpy()).sum().astype(int).to_dict()
    )
print(json.dumps(out, indent=1))
with open(
    Path(__file__).resolve().parent / "results" / "drift_calibration_sep_dec.json", "w"
) as fh:
    json.dump(out, fh, indent=1)
