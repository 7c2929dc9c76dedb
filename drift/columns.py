"""The tables the monitor tests for drift, and the compact summary of an Evidently run.

Monitored columns are the model's inputs, named as in the feature spec:

- dense features: numerical columns (Evidently picks the test: Kolmogorov-Smirnov up to
  1,000 reference rows, normed Wasserstein distance above);
- sparse features with few distinct ids (device, country, position, hour, categories, ...):
  categorical columns of their ids (chi-squared / Z-test up to 1,000 rows, Jensen-Shannon
  distance above);
- sparse features with many distinct ids (user, item, brand, query bags: more than
  ``max_categories`` ids in the reference): a per-id distribution test is meaningless there,
  because most ids are seen a handful of times and two samples of the same population
  already differ in almost every id. Such a feature is tested through its **popularity
  bucket** instead: ids are ranked by how often they occur in one half of the reference
  window (the ranking half), and every row of the other half (the reference sample) and
  of the current window gets the bucket of its id: which tenth of the ranking half's rows
  the id's occurrences fall in (``00-10%`` = the most popular ids that together make up
  the first tenth of the rows, ...), or ``unseen`` when the ranking half never saw it.
  Ranking on a separate half keeps both compared samples independent of the ranking, so
  with no drift they have the same bucket distribution (``unseen`` included), whatever the
  cardinality; when popularity moves to other ids (the generator's item drift), current
  rows move to the tail buckets and to ``unseen``. The bucket column is a categorical
  column with 11 values, tested like the other categorical features.

Features can be left out (``exclude``): ``day_of_week`` by default, since a window of fewer
than seven days cannot have the weekday mix of a longer one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from contract.spec import FeatureSpec

UNSEEN = "unseen"
RARE = "rare"              # categories pooled because the reference sample has too few rows of them
N_BUCKETS = 10
BUCKETS: tuple[str, ...] = tuple(f"{10 * k:02d}-{10 * (k + 1)}%" for k in range(N_BUCKETS)) + (UNSEEN,)


@dataclass(frozen=True)
class MonitoredColumns:
    """Which model inputs are tested, and how."""

    numerical: tuple[str, ...]     # dense features
    categorical: tuple[str, ...]   # sparse features tested on their ids
    popularity: tuple[str, ...]    # sparse features tested on their ids' popularity bucket
    excluded: tuple[str, ...]      # features of the spec that are not tested

    @property
    def features(self) -> list[str]:
        """Every tested feature, in spec order within each kind."""
        return [*self.numerical, *self.categorical, *self.popularity]

    def kind(self, name: str) -> str:
        if name in self.numerical:
            return "numerical"
        if name in self.categorical:
            return "categorical"
        if name in self.popularity:
            return "popularity_bucket"
        raise KeyError(name)


def id_keys(frame: "pd.DataFrame", feature: str, multi_hot: bool) -> "pd.Series":
    """The ids of a sparse feature as hashable keys: the id, or a bag's sorted ids joined by spaces."""
    import pandas as pd

    col = frame[feature]
    if not multi_hot:
        return pd.Series(col.to_numpy(dtype=np.int64), index=frame.index)
    keys = [" ".join(map(str, sorted(np.asarray(b if b is not None else (), dtype=np.int64).tolist())))
            for b in col.tolist()]
    return pd.Series(keys, index=frame.index, dtype=object)


def popularity_buckets(ranking: "pd.Series", keys: "pd.Series") -> "pd.Series":
    """The popularity bucket (one of :data:`BUCKETS`) of each key, ranked on ``ranking``.

    Ids are ordered by their count in ``ranking`` (most frequent first, ties by id so the
    order is deterministic); an id falls in bucket k when the rows of the ids before it make
    up between k/10 and (k+1)/10 of ``ranking``. Keys absent from ``ranking`` are ``unseen``.
    """
    import pandas as pd

    if len(ranking) == 0:
        raise ValueError("the ranking sample of a popularity bucket is empty")
    counts = ranking.value_counts()
    order = pd.DataFrame({"key": counts.index, "n": counts.to_numpy()})
    order = order.sort_values(["n", "key"], ascending=[False, True], kind="stable")
    before = (np.cumsum(order["n"].to_numpy()) - order["n"].to_numpy()) / float(len(ranking))
    bucket = np.minimum((before * N_BUCKETS).astype(np.int64), N_BUCKETS - 1)
    label = pd.Series(np.asarray(BUCKETS, dtype=object)[bucket], index=order["key"].to_numpy())
    return keys.map(label).fillna(UNSEEN).astype(object)


def pool_rare(reference: "pd.Series", current: "pd.Series", min_rows: int) -> tuple["pd.Series", "pd.Series"]:
    """Categories seen fewer than ``min_rows`` times in ``reference`` (or never) become :data:`RARE`.

    Evidently's chi-squared test (its choice up to 1,000 rows) expects every category to be
    seen in the reference: one current-only category, common among hours, countries or ids
    in small windows, gives p = 0 and a drift verdict on data without drift. Pooling the rare
    ones keeps every expected count at ``min_rows`` or more (5 is the textbook rule).
    """
    counts = reference.value_counts()
    keep = set(counts.index[counts >= min_rows])
    return (reference.where(reference.isin(keep), RARE).astype(object),
            current.where(current.isin(keep), RARE).astype(object))


@dataclass(frozen=True)
class WindowSample:
    """The rows of both windows the drift tests read (model-ready columns).

    ``ranking_rows`` need only the sparse features' columns; ``labels_complete``: every row
    of both windows (not only the sampled ones) has its label.
    """

    ref_rows: "pd.DataFrame"       # the reference sample
    ranking_rows: "pd.DataFrame"   # reference rows outside the sample: they rank the ids
    cur_rows: "pd.DataFrame"       # the current sample
    labels_complete: bool


def check_windows(reference_rows: int, current_rows: int) -> None:
    """ValueError unless the windows hold enough rows for the tests."""
    if reference_rows < 2:
        raise ValueError(f"the reference window has {reference_rows} row(s); the drift tests need at least 2")
    if current_rows < 1:
        raise ValueError("the current window has no rows")


def sample_positions(reference_rows: int, current_rows: int, max_rows: int, rng: np.random.Generator,
                     max_ranking_rows: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reference sample, ranking rows, current sample): sorted row positions in each window.

    The reference sample is at most ``max_rows`` and at most half of the window; the rest of
    the window ranks the ids, at most ``max_ranking_rows`` of it (drawn at random; None: all).
    The current sample is at most ``max_rows``. Positions alone, so a reader can take the
    rows from files a batch at a time (memory set by the sample sizes, not the windows).
    """
    check_windows(reference_rows, current_rows)
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    ref_index = np.arange(reference_rows)
    n_ref = min(max_rows, reference_rows // 2)
    picked = np.sort(rng.choice(ref_index, size=n_ref, replace=False))
    ranking = np.setdiff1d(ref_index, picked)
    current = (np.arange(current_rows) if current_rows <= max_rows
               else np.sort(rng.choice(current_rows, size=max_rows, replace=False)))
    if max_ranking_rows is not None and len(ranking) > max_ranking_rows:
        ranking = np.sort(rng.choice(ranking, size=max_ranking_rows, replace=False))
    return picked, ranking, current


def monitored_tables(reference: "pd.DataFrame", current: "pd.DataFrame", spec: "FeatureSpec", *,
                     max_rows: int, max_categories: int, exclude: tuple[str, ...],
                     rng: np.random.Generator, min_category_rows: int = 5,
                     max_ranking_rows: int | None = None) -> tuple["pd.DataFrame", "pd.DataFrame",
                                                                   MonitoredColumns, "pd.DataFrame", "pd.DataFrame"]:
    """Samples both windows (in memory) and builds the tables Evidently compares.

    Args:
        reference: the model-ready reference window (features, label, pass-through columns).
        current: the model-ready current window.
        spec: the feature spec both windows follow.
        max_rows: rows kept of each window (the reference keeps at most half of its rows:
            the other half ranks the ids of the popularity-bucket features).
        max_categories: a sparse feature with more distinct ids than this in the ranking
            half is tested through popularity buckets.
        exclude: features not tested.
        rng: the sampling generator (seeded by the caller).
        min_category_rows: categories with fewer reference rows are pooled (:func:`pool_rare`).
        max_ranking_rows: at most this many rows rank the ids (None: all the rest).

    Returns:
        (reference table, current table, the columns and how they are tested, the sampled
        model-ready reference rows, the sampled model-ready current rows): the tables hold one
        column per tested feature, plus the label when both windows have it on every row; the
        sampled rows are what the model scores, row for row with the tables.
    """
    check_exclude(spec, exclude)
    picked, ranking, cur = sample_positions(len(reference), len(current), max_rows, rng, max_ranking_rows)
    labels = all(spec.label in w.columns and w[spec.label].notna().all() for w in (reference, current))
    sample = WindowSample(reference.iloc[picked].reset_index(drop=True),
                          reference.iloc[ranking].reset_index(drop=True),
                          current.iloc[cur].reset_index(drop=True), labels)
    return tables_from_sample(sample, spec, max_categories=max_categories, exclude=exclude,
                              min_category_rows=min_category_rows)


def check_exclude(spec: "FeatureSpec", exclude: tuple[str, ...]) -> None:
    """ValueError when ``exclude`` names something that is not a feature of ``spec``."""
    unknown = sorted(set(exclude) - {f.name for f in (*spec.dense, *spec.sparse)})
    if unknown:
        raise ValueError(f"monitor.exclude names {unknown}, which are not features of the spec "
                         f"(dense {[f.name for f in spec.dense]}, sparse {[f.name for f in spec.sparse]})")


def tables_from_sample(sample: WindowSample, spec: "FeatureSpec", *, max_categories: int,
                       exclude: tuple[str, ...], min_category_rows: int = 5) -> tuple[
                           "pd.DataFrame", "pd.DataFrame", MonitoredColumns, "pd.DataFrame", "pd.DataFrame"]:
    """The tables Evidently compares, from the sampled rows (:func:`monitored_tables`'s result)."""
    import pandas as pd

    check_exclude(spec, exclude)
    ranking_rows, ref_rows, cur_rows = sample.ranking_rows, sample.ref_rows, sample.cur_rows
    numerical = tuple(f.name for f in spec.dense if f.name not in exclude)
    categorical: list[str] = []
    popularity: list[str] = []
    ref_table = pd.DataFrame({n: ref_rows[n].to_numpy(dtype=np.float64) for n in numerical})
    cur_table = pd.DataFrame({n: cur_rows[n].to_numpy(dtype=np.float64) for n in numerical})
    for f in spec.sparse:
        if f.name in exclude:
            continue
        rank_keys = id_keys(ranking_rows, f.name, f.multi_hot)
        ref_keys, cur_keys = id_keys(ref_rows, f.name, f.multi_hot), id_keys(cur_rows, f.name, f.multi_hot)
        if f.multi_hot or rank_keys.nunique() > max_categories:
            popularity.append(f.name)
            ref_table[f.name] = popularity_buckets(rank_keys, ref_keys).to_numpy()
            cur_table[f.name] = popularity_buckets(rank_keys, cur_keys).to_numpy()
        else:
            categorical.append(f.name)
            # ids as text: Evidently treats the column as categorical whatever its values
            ref_table[f.name] = ref_keys.astype(str).to_numpy()
            cur_table[f.name] = cur_keys.astype(str).to_numpy()
    for name in (*categorical, *popularity):
        ref_table[name], cur_table[name] = pool_rare(ref_table[name], cur_table[name], min_category_rows)
    # labels take days to arrive: target drift and quality only once every current row has one
    if sample.labels_complete:
        ref_table[spec.label] = ref_rows[spec.label].to_numpy(dtype=np.int64)
        cur_table[spec.label] = cur_rows[spec.label].to_numpy(dtype=np.int64)
    excluded = tuple(f.name for f in (*spec.dense, *spec.sparse) if f.name in exclude)
    return (ref_table, cur_table, MonitoredColumns(numerical, tuple(categorical), tuple(popularity), excluded),
            ref_rows, cur_rows)


def json_float(x: Any) -> float | None:
    """A float for JSON: None where the value is missing or not finite."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def column_drift(snapshot: dict) -> dict[str, dict[str, Any]]:
    """Per column: Evidently's drift method, score, threshold and verdict, from ``snapshot.dict()``.

    The verdict is the status of Evidently's own "Value Drift" test of the column (what the
    HTML report shows), so the summary and the report agree by construction.
    """
    scores: dict[str, dict[str, Any]] = {}
    for m in snapshot["metrics"]:
        cfg = m["config"]
        if cfg.get("type", "").endswith(":ValueDrift"):
            scores[cfg["column"]] = {"method": cfg.get("method"), "score": json_float(m["value"]),
                                     "threshold": json_float(cfg.get("threshold")), "drifted": None}
    for t in snapshot.get("tests", []):
        cfg = t.get("metric_config", {}).get("params", {})
        col = cfg.get("column")
        if cfg.get("type", "").endswith(":ValueDrift") and col in scores:
            scores[col]["drifted"] = t["status"].upper() == "FAIL"
    missing = [c for c, s in scores.items() if s["drifted"] is None]
    if missing:
        raise ValueError(f"the Evidently run has no drift test result for column(s) {missing}; "
                         "run the report with include_tests=True")
    return scores


def metric_value(snapshot: dict, type_suffix: str, **config: Any) -> Any:
    """The value of the first metric of that type whose config has these entries (None if absent)."""
    for m in snapshot["metrics"]:
        cfg = m["config"]
        if cfg.get("type", "").endswith(f":{type_suffix}") and all(cfg.get(k) == v for k, v in config.items()):
            return m["value"]
    return None
