"""Generated offers in the Criteo display-advertising format."""

from __future__ import annotations

import numpy as np
import pandas as pd

from contract.hashing import stable_hash64


def to_criteo(frame: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """The clean canonical frame as Criteo columns (label, I1..I13, C1..C26).

    I1 price (rounded), I2 position, I3 hour, I4 weekday, I5 query terms, I6 day of
    window, I7..I13 uninformative counts (30% missing); C1 user, C2 item, C3..C5
    category l1..l3, C6 brand, C7 device, C8 country, C9 query (missing when empty),
    C10..C26 uninformative low-cardinality hashes (some missing). Categoricals are 32-bit
    hashes of ``column=value`` as 8 hex digits.
    """
    from features.criteo import CAT_COLUMNS, INT_COLUMNS

    n = len(frame)
    ts = frame["event_timestamp"]
    start = ts.min().normalize() if n else pd.Timestamp(0, tz="UTC")
    out = {"label": frame["purchased"].astype("int64").to_numpy()}
    ints = [frame["price"].round().to_numpy(), frame["position"].to_numpy(), ts.dt.hour.to_numpy(),
            ts.dt.weekday.to_numpy(), frame["query"].str.split().str.len().fillna(0).to_numpy(),
            (ts - start).dt.days.to_numpy()]
    for _ in range(7):
        noise = rng.poisson(rng.uniform(1, 30), n).astype(float)
        noise[rng.random(n) < 0.3] = np.nan
        ints.append(noise)
    for c, v in zip(INT_COLUMNS, ints):
        out[c] = np.asarray(v, dtype="float64")
    cats = [frame[c].astype(object).to_numpy() for c in
            ("user_id", "item_id", "category_l1", "category_l2", "category_l3", "brand", "device", "country")]
    cats.append(np.where(frame["query"].to_numpy() == "", None, frame["query"].to_numpy()))
    for k in range(len(CAT_COLUMNS) - len(cats)):
        noise = rng.integers(0, [3, 10, 50, 200][k % 4], n).astype(object)
        noise[rng.random(n) < 0.1 * (k % 3)] = None
        cats.append(noise)
    for c, v in zip(CAT_COLUMNS, cats):
        out[c] = _hex_hash(c, v)
    return pd.DataFrame(out)


def _hex_hash(column: str, values: np.ndarray) -> pd.Series:
    codes, uniques = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=True)
    keys = np.array([f"{column}={u}" for u in uniques], dtype=object)
    hashed = stable_hash64(keys) & np.uint64(0xFFFFFFFF)  # Criteo's ids are 32-bit
    hexes = np.array([f"{int(h):08x}" for h in hashed] + [None], dtype=object)
    return pd.Series(hexes[codes], dtype="string")  # code -1 (missing) picks the trailing None
