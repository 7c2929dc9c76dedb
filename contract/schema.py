"""The canonical transaction schema (one row = one product offered to one user).

Every reader (generator, ingest of CSV/Parquet/Criteo) produces exactly these columns
with these dtypes; validation and the feature step rely on them.
"""

from __future__ import annotations

LABEL = "purchased"
TIMESTAMP = "event_timestamp"

# column -> pandas dtype after ingest ("datetime64[ns, UTC]" for the timestamp).
COLUMNS: dict[str, str] = {
    "event_id": "string",
    "event_timestamp": "datetime64[ns, UTC]",
    "user_id": "string",
    "item_id": "string",
    "query": "string",          # search terms, space separated; may be empty
    "category_l1": "string",
    "category_l2": "string",
    "category_l3": "string",
    "brand": "string",
    "price": "float64",         # >= 0, in the shop's currency
    "position": "Int64",        # >= 1, rank at which the item was shown
    "device": "string",
    "country": "string",
    "purchased": "Int64",       # label, 0/1 (nullable until validated)
}

KEY_COLUMNS: tuple[str, ...] = ("event_id", "event_timestamp", "user_id", "item_id", "purchased")

DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet", "app_ios", "app_android")
COUNTRIES: tuple[str, ...] = ("DE", "FR", "GB", "IT", "ES", "NL", "PL", "SE", "US", "CA")

# Sidecar written by the generator beside the data (never a feature): the planted
# purchase probability of each event, from which the oracle AUC is computed.
TRUTH_COLUMNS: dict[str, str] = {"event_id": "string", "purchase_prob": "float64"}

# Columns that must be present in a valid row (query may be empty or missing).
NON_NULL_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c != "query")

# Day partitions: `<dataset>/day=YYYY-MM-DD/part-*.parquet`; rows whose timestamp is
# missing or unparseable go to `day=unknown` (so validation can still quarantine them).
PARTITION = "day"
UNKNOWN_DAY = "unknown"


def arrow_schema():
    """The canonical columns as a ``pyarrow.Schema`` (what every part file stores)."""
    import pyarrow as pa

    types = {"string": pa.string(), "float64": pa.float64(), "Int64": pa.int64(),
             "datetime64[ns, UTC]": pa.timestamp("ns", tz="UTC")}
    return pa.schema([(c, types[t]) for c, t in COLUMNS.items()])


def with_canonical_dtypes(df):
    """``df[COLUMNS]`` cast to the canonical pandas dtypes (after reading Parquet back)."""
    out = df[list(COLUMNS)].copy()
    for c, t in COLUMNS.items():
        if str(out[c].dtype) != t:
            out[c] = out[c].astype(t)
    return out
