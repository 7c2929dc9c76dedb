"""The feature definitions as SQL, written once for every engine (DuckDB, Spark SQL).

Every statement is a plain ``SELECT`` (with ``WITH``) that both engines accept; an engine
materialises it its own way (DuckDB ``CREATE TABLE ... AS``, Spark a cached temporary
view). The few spellings that differ between the engines (integer division) come from a
:class:`Dialect`.

Inputs: a relation ``events`` with the columns of :data:`EVENT_COLUMNS`, where ``ts_ns`` is
the event time in nanoseconds since 1970-01-01 UTC, ``day`` its UTC day (days since
1970-01-01) and ``seq`` the tie-break of events at the same instant (later = larger).

Semantics (the daily snapshots of :mod:`features.compute`): the row of entity e stamped
day D is computed from e's events strictly before D. Rows exist for every (entity, day)
with an event of that entity and, for every entity, for the snapshot day (the day after
the last day of data). Trailing windows of w days cover days [D - w, D): window frames
``RANGE BETWEEN w PRECEDING AND 1 PRECEDING`` over one row per (entity, day).

The point-in-time join of an event on day D is then an equi-join on (entity, D): each
entity with an event on D has a row stamped D, and it is the latest row at or before the
event.

The user history (:func:`user_history`) follows the same grid: the row of user u stamped D
holds u's last ``length`` events strictly before D, newest first, as list columns. It is
built by equi-joins only (each grid row expands to its ``min(events before D, length)``
positions, joined on (user, rank of the event)), over only the last ``length`` events of each
(user, day) (no other event is ever among a later day's last ``length``), so its cost follows
its output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

WINDOWS = (7, 30)          # days; the feature views' field names carry them
DAY_NS = 86_400 * 10**9
HOUR_NS = 3_600 * 10**9

# the columns of the `events` relation every engine provides
EVENT_COLUMNS = ("event_id", "ts_ns", "seq", "day", "user_id", "item_id", "query", "category_l1",
                 "category_l2", "category_l3", "brand", "price", "position", "device", "country",
                 "purchased")

# feature view -> (entity key, feature columns in the view's order)
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "user_daily_stats": ("user_id", (
        "user_offers_7d", "user_purchases_7d", "user_offers_30d", "user_purchases_30d",
        "user_purchase_rate_30d", "user_avg_price_paid_30d", "user_fav_category_l1_30d",
        "user_days_since_purchase")),
    "item_daily_stats": ("item_id", (
        "item_offers_7d", "item_purchases_7d", "item_purchase_rate_7d",
        "item_offers_30d", "item_purchases_30d", "item_purchase_rate_30d")),
    "item_attributes": ("item_id", (
        "item_category_l1", "item_category_l2", "item_category_l3", "item_brand",
        "item_price", "item_price_band")),
}

# the user x category view: user_id, day, then per category level the categories the user
# was offered in the last 30 days (``ucat_<level>_keys``, text order) and, in parallel lists,
# the user's statistics in each (``ucat_<level>_<stat>_list``)
USER_CATEGORY = "user_category_stats"
UCAT_LEVELS = ("l1", "l2")
UCAT_STATS = ("offers_7d", "purchases_7d", "offers_30d", "purchases_30d", "purchase_rate_30d")
UCAT_COLUMNS = tuple(c for lv in UCAT_LEVELS
                     for c in (f"ucat_{lv}_keys", *(f"ucat_{lv}_{s}_list" for s in UCAT_STATS)))
# a model-ready row's values: the entry of its item's category (item_attributes' category_<level>)
UCAT_ROW_COLUMNS = tuple(f"ucat_{lv}_{s}" for lv in UCAT_LEVELS for s in UCAT_STATS)

# the user history view: user_id, day, then these list columns (newest event first)
HISTORY = "user_history"
HISTORY_COLUMNS = ("hist_item", "hist_cat", "hist_action", "hist_days")
MISSING = "<missing>"    # a history event's category when it has none (features.categorize.MISSING)

# the event columns the model-ready rows carry next to the feature values
ROW_COLUMNS = ("event_id", "ts_ns", "user_id", "item_id", "query", "device", "country",
               "position", "price", "purchased")


@dataclass(frozen=True)
class Dialect:
    """What the engines spell differently."""

    name: str
    int_div: str        # integer division operator of two BIGINTs (truncating)

    def floor_div(self, a: str, b: int) -> str:
        """SQL of floor(a / b) for a BIGINT expression ``a`` and a positive constant ``b``."""
        return (f"(CASE WHEN ({a}) >= 0 THEN ({a}) {self.int_div} {b} "
                f"ELSE -((-({a}) - 1) {self.int_div} {b}) - 1 END)")

    def positions(self, n: str) -> str:
        """A select-list generator of one row per j in 0 .. n-1 (BIGINT ``n`` >= 1)."""
        if self.name == "spark":
            return f"EXPLODE(SEQUENCE(CAST(0 AS BIGINT), ({n}) - 1))"
        return f"UNNEST(range({n}))"

    def sorted_records(self, fields: Sequence[tuple[str, str]]) -> str:
        """Aggregate: the group's rows as a list of records (name, expression) ``fields``,
        sorted by the first field (unique within a group). Unordered collection, then one
        sort per group: DuckDB's ``LIST(... ORDER BY ...)`` holds a sort buffer per group
        in memory and runs out of it where this spills."""
        if self.name == "spark":
            return "ARRAY_SORT(COLLECT_LIST(STRUCT(" + ", ".join(f"{e} AS {n}" for n, e in fields) + ")))"
        return "list_sort(LIST(struct_pack(" + ", ".join(f"{n} := {e}" for n, e in fields) + ")))"

    def list_field(self, records: str, name: str) -> str:
        """The list of field ``name`` of each record of the list ``records``."""
        if self.name == "spark":
            return f"TRANSFORM({records}, r -> r.{name})"
        return f"list_transform({records}, lambda r: r.{name})"

    def pick(self, keys: str, key: str, values: str) -> str:
        """The element of list ``values`` at the position of ``key`` in list ``keys`` (NULL
        where ``key`` or either list is NULL, or ``key`` is not in ``keys``)."""
        if self.name == "spark":
            return (f"CASE WHEN ARRAY_POSITION({keys}, {key}) > 0 "
                    f"THEN ELEMENT_AT({values}, CAST(ARRAY_POSITION({keys}, {key}) AS INT)) END")
        return f"list_extract({values}, list_position({keys}, {key}))"

    def empty_list(self, element: str) -> str:
        """An empty list of ``element`` (``STRING`` or ``BIGINT``)."""
        if self.name == "spark":
            return f"CAST(ARRAY() AS ARRAY<{element}>)"
        return f"CAST([] AS {'VARCHAR' if element == 'STRING' else element}[])"


DUCKDB = Dialect("duckdb", "//")
SPARK = Dialect("spark", "DIV")


def _double(x: float) -> str:
    """A DOUBLE literal both engines read to the same bits (a bare 0.03 is a DECIMAL)."""
    return f"CAST('{float(x)!r}' AS DOUBLE)"


def day_of(dialect: Dialect, ts_ns: str) -> str:
    """SQL of the UTC day (days since 1970-01-01) of nanoseconds since the epoch."""
    return dialect.floor_div(ts_ns, DAY_NS)


def events_view(dialect: Dialect, source: str, ts_ns: str, seq: str) -> str:
    """SQL of the ``events`` view both engines run over: the canonical columns of
    ``source`` with ``ts_ns`` (nanoseconds since the epoch), the row's ``seq`` and its day."""
    return f"""
CREATE OR REPLACE TEMP VIEW events AS
SELECT event_id, {ts_ns} AS ts_ns, {seq} AS seq, {day_of(dialect, ts_ns)} AS day,
       user_id, item_id, query, category_l1, category_l2, category_l3, brand,
       CAST(price AS DOUBLE) AS price, CAST(position AS BIGINT) AS position, device, country,
       CAST(purchased AS BIGINT) AS purchased
FROM {source}"""


def _window(w: int) -> str:
    return f"PARTITION BY k ORDER BY d RANGE BETWEEN {w} PRECEDING AND 1 PRECEDING"


def _smoothed(p: str, o: str, rate_prior: float, weight: float) -> str:
    """(purchases + prior * weight) / (offers + weight), in the order numpy evaluates it."""
    return (f"((CAST({p} AS DOUBLE) + {_double(rate_prior * weight)}) "
            f"/ (CAST({o} AS DOUBLE) + {_double(weight)}))")


def user_daily_stats(snapshot_day: int, rate_prior: float, weight: float, days_since_cap: int) -> str:
    """SELECT of the user view's rows: user_id, day, then the view's fields."""
    return f"""
WITH user_day AS (
    SELECT user_id AS k, day AS d, COUNT(*) AS o,
           SUM(COALESCE(purchased, 0)) AS p,
           SUM(COALESCE(price, {_double(0.0)}) * COALESCE(purchased, 0)) AS paid
    FROM events GROUP BY user_id, day
),
user_grid AS (
    SELECT k, d, o, p, paid FROM user_day
    UNION ALL
    SELECT k, {int(snapshot_day)} AS d, 0 AS o, 0 AS p, {_double(0.0)} AS paid FROM user_day GROUP BY k
),
user_win AS (
    SELECT k, d,
           COALESCE(SUM(o) OVER ({_window(7)}), 0) AS o7,
           COALESCE(SUM(p) OVER ({_window(7)}), 0) AS p7,
           COALESCE(SUM(o) OVER ({_window(30)}), 0) AS o30,
           COALESCE(SUM(p) OVER ({_window(30)}), 0) AS p30,
           COALESCE(SUM(paid) OVER ({_window(30)}), {_double(0.0)}) AS paid30,
           MAX(CASE WHEN p > 0 THEN d END) OVER (
               PARTITION BY k ORDER BY d ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS last_p
    FROM user_grid
),
user_cat_day AS (
    SELECT user_id AS k, category_l1 AS c, day AS d, COUNT(*) AS n
    FROM events WHERE category_l1 IS NOT NULL GROUP BY user_id, category_l1, day
),
user_cat_grid AS (
    SELECT kc.k, kc.c, g.d, 0 AS n, 1 AS q
    FROM (SELECT DISTINCT k, c FROM user_cat_day) kc JOIN user_grid g ON g.k = kc.k
    UNION ALL
    SELECT k, c, d, n, 0 AS q FROM user_cat_day
),
user_cat_win AS (
    SELECT k, c, d, q, SUM(n) OVER (PARTITION BY k, c ORDER BY d
                                    RANGE BETWEEN 30 PRECEDING AND 1 PRECEDING) AS n30
    FROM user_cat_grid
),
user_cat_best AS (
    SELECT k, d, MAX(n30) AS m FROM user_cat_win WHERE q = 1 AND n30 > 0 GROUP BY k, d
),
user_fav AS (
    -- the most offered category; ties to the first in text order
    SELECT w.k, w.d, MIN(w.c) AS c
    FROM user_cat_win w JOIN user_cat_best b ON w.k = b.k AND w.d = b.d AND w.n30 = b.m
    WHERE w.q = 1 GROUP BY w.k, w.d
)
SELECT w.k AS user_id, w.d AS day,
       CAST(w.o7 AS BIGINT) AS user_offers_7d,
       CAST(w.p7 AS BIGINT) AS user_purchases_7d,
       CAST(w.o30 AS BIGINT) AS user_offers_30d,
       CAST(w.p30 AS BIGINT) AS user_purchases_30d,
       {_smoothed("w.p30", "w.o30", rate_prior, weight)} AS user_purchase_rate_30d,
       CASE WHEN w.p30 > 0 THEN w.paid30 / CAST(w.p30 AS DOUBLE) ELSE {_double(0.0)} END
           AS user_avg_price_paid_30d,
       f.c AS user_fav_category_l1_30d,
       CAST(CASE WHEN w.last_p IS NULL THEN {int(days_since_cap)}
                 ELSE LEAST(w.d - w.last_p, {int(days_since_cap)}) END AS BIGINT) AS user_days_since_purchase
FROM user_win w LEFT JOIN user_fav f ON f.k = w.k AND f.d = w.d
"""


def item_daily_stats(snapshot_day: int, rate_prior: float, weight: float) -> str:
    """SELECT of the item statistics view's rows: item_id, day, then the view's fields."""
    return f"""
WITH item_day AS (
    SELECT item_id AS k, day AS d, COUNT(*) AS o, SUM(COALESCE(purchased, 0)) AS p
    FROM events GROUP BY item_id, day
),
item_grid AS (
    SELECT k, d, o, p FROM item_day
    UNION ALL
    SELECT k, {int(snapshot_day)} AS d, 0 AS o, 0 AS p FROM item_day GROUP BY k
),
item_win AS (
    SELECT k, d,
           COALESCE(SUM(o) OVER ({_window(7)}), 0) AS o7,
           COALESCE(SUM(p) OVER ({_window(7)}), 0) AS p7,
           COALESCE(SUM(o) OVER ({_window(30)}), 0) AS o30,
           COALESCE(SUM(p) OVER ({_window(30)}), 0) AS p30
    FROM item_grid
)
SELECT k AS item_id, d AS day,
       CAST(o7 AS BIGINT) AS item_offers_7d,
       CAST(p7 AS BIGINT) AS item_purchases_7d,
       {_smoothed("p7", "o7", rate_prior, weight)} AS item_purchase_rate_7d,
       CAST(o30 AS BIGINT) AS item_offers_30d,
       CAST(p30 AS BIGINT) AS item_purchases_30d,
       {_smoothed("p30", "o30", rate_prior, weight)} AS item_purchase_rate_30d
FROM item_win
"""


_ATTRS = ("category_l1", "category_l2", "category_l3", "brand")


def item_attributes(snapshot_day: int) -> str:
    """SELECT of the item attributes view's rows: the attributes of the item's last event
    (latest ``ts_ns``, then latest ``seq``) on its last day with events before the row's day."""
    attrs = ", ".join(_ATTRS)
    nulls = ", ".join(f"CAST(NULL AS STRING) AS {a}" for a in _ATTRS)
    lags = ",\n       ".join(f"LAG({a}) OVER (PARTITION BY k ORDER BY d) AS item_{a}" for a in _ATTRS)
    return f"""
WITH item_last AS (
    SELECT k, d, {attrs}, price FROM (
        SELECT item_id AS k, day AS d, {attrs}, price,
               ROW_NUMBER() OVER (PARTITION BY item_id, day ORDER BY ts_ns DESC, seq DESC) AS r
        FROM events
    ) ranked WHERE r = 1
),
item_attr_grid AS (
    SELECT k, d, {attrs}, price FROM item_last
    UNION ALL
    SELECT k, {int(snapshot_day)} AS d, {nulls}, CAST(NULL AS DOUBLE) AS price FROM item_last GROUP BY k
),
item_prev AS (
    SELECT k, d,
       {lags},
       LAG(price) OVER (PARTITION BY k ORDER BY d) AS item_price
    FROM item_attr_grid
)
SELECT k AS item_id, d AS day, item_category_l1, item_category_l2, item_category_l3, item_brand,
       item_price,
       CASE WHEN item_price IS NULL THEN NULL
            ELSE CAST(CAST(FLOOR(LOG2({_double(1.0)} + GREATEST(item_price, {_double(0.0)}))) AS BIGINT) AS STRING)
       END AS item_price_band
FROM item_prev
"""


def feature_tables(snapshot_day: int, rate_prior: float, weight: float, days_since_cap: int) -> dict[str, str]:
    """Feature view name -> the SELECT of its rows (key, ``day``, then the view's fields)."""
    return {
        "user_daily_stats": user_daily_stats(snapshot_day, rate_prior, weight, days_since_cap),
        "item_daily_stats": item_daily_stats(snapshot_day, rate_prior, weight),
        "item_attributes": item_attributes(snapshot_day),
    }


def user_category_stats(dialect: Dialect, snapshot_day: int, rate_prior: float, weight: float) -> str:
    """SELECT of the user x category view's rows: user_id, day, then :data:`UCAT_COLUMNS`.

    The row of user u stamped D (every day u has events, and the snapshot day) lists, per
    level (category_l1, category_l2), the categories u was offered in the 30 days before D
    (text order) and, in parallel lists, u's offers and purchases in each over the last 7 and
    30 days and the smoothed purchase rate over 30 days (as the user view's). Empty lists
    when u was offered nothing with a category in those 30 days. A model-ready row reads the
    entry of its item's category (:func:`model_rows`); a category not listed has no offers.
    """
    ctes, lists = [], []
    for lv in UCAT_LEVELS:
        col = f"category_{lv}"
        fields = [("c", "w.c"), *((st, f"w.{st}") for st in UCAT_STATS)]
        lists.append(",\n       ".join(
            f"CASE WHEN {lv}.records IS NULL THEN {dialect.empty_list(t)} "
            f"ELSE {dialect.list_field(f'{lv}.records', f)} END AS {name}"
            for name, f, t in [(f"ucat_{lv}_keys", "c", "STRING"),
                               *((f"ucat_{lv}_{st}_list", st, "DOUBLE" if st.startswith("purchase_rate") else "BIGINT")
                                 for st in UCAT_STATS)]))
        ctes.append(f"""
uc_{lv}_day AS (
    SELECT user_id AS k, {col} AS c, day AS d, COUNT(*) AS o, SUM(COALESCE(purchased, 0)) AS p
    FROM events WHERE {col} IS NOT NULL GROUP BY user_id, {col}, day
),
uc_{lv}_span AS (
    SELECT k, c, MIN(d) AS first_d, MAX(d) AS last_d FROM uc_{lv}_day GROUP BY k, c
),
uc_{lv}_grid AS (
    -- q = 1: a row of the user's grid, for every category offered to the user in the 30 days before it
    SELECT s.k, s.c, g.d, 0 AS o, 0 AS p, 1 AS q
    FROM uc_{lv}_span s JOIN uc_grid g ON g.k = s.k AND g.d > s.first_d AND g.d <= s.last_d + 30
    UNION ALL
    SELECT k, c, d, o, p, 0 AS q FROM uc_{lv}_day
),
uc_{lv}_win AS (
    SELECT k, c, d, q,
           COALESCE(SUM(o) OVER (PARTITION BY k, c ORDER BY d RANGE BETWEEN 7 PRECEDING AND 1 PRECEDING), 0) AS o7,
           COALESCE(SUM(p) OVER (PARTITION BY k, c ORDER BY d RANGE BETWEEN 7 PRECEDING AND 1 PRECEDING), 0) AS p7,
           COALESCE(SUM(o) OVER (PARTITION BY k, c ORDER BY d RANGE BETWEEN 30 PRECEDING AND 1 PRECEDING), 0) AS o30,
           COALESCE(SUM(p) OVER (PARTITION BY k, c ORDER BY d RANGE BETWEEN 30 PRECEDING AND 1 PRECEDING), 0) AS p30
    FROM uc_{lv}_grid
),
uc_{lv}_lists AS (
    SELECT w.k, w.d, {dialect.sorted_records(fields)} AS records
    FROM (SELECT k, c, d, CAST(o7 AS BIGINT) AS offers_7d, CAST(p7 AS BIGINT) AS purchases_7d,
                 CAST(o30 AS BIGINT) AS offers_30d, CAST(p30 AS BIGINT) AS purchases_30d,
                 {_smoothed("p30", "o30", rate_prior, weight)} AS purchase_rate_30d
          FROM uc_{lv}_win WHERE q = 1 AND o30 > 0) w
    GROUP BY w.k, w.d
)""")
    joins = "\n".join(f"LEFT JOIN uc_{lv}_lists {lv} ON {lv}.k = g.k AND {lv}.d = g.d" for lv in UCAT_LEVELS)
    cols = ",\n       ".join(lists)
    return f"""
WITH uc_grid AS (
    SELECT user_id AS k, day AS d FROM events GROUP BY user_id, day
    UNION
    SELECT user_id AS k, {int(snapshot_day)} AS d FROM events GROUP BY user_id
),{",".join(ctes)}
SELECT g.k AS user_id, g.d AS day,
       {cols}
FROM uc_grid g
{joins}
"""


def user_history(dialect: Dialect, snapshot_day: int, length: int) -> str:
    """SELECT of the user history view's rows: user_id, day, then :data:`HISTORY_COLUMNS`.

    The row of user u stamped D (every day u has events, and the snapshot day) lists u's
    last ``length`` events strictly before D, newest first (latest ``ts_ns``, then latest
    ``seq``): ``hist_item`` (item ids), ``hist_cat`` (category_l1, :data:`MISSING` where
    none), ``hist_action`` (0 offered, 1 purchased), ``hist_days`` (D minus the event's day,
    >= 1). Empty lists when u has no earlier event.
    """
    if int(length) < 1:
        raise ValueError(f"history length must be >= 1, got {length}")
    fields = [("pos", "p.j"), ("item", "n.item_id"), ("cat", f"COALESCE(n.category_l1, '{MISSING}')"),
              ("action", "CAST(COALESCE(n.purchased, 0) AS BIGINT)"), ("days", "CAST(p.d - n.day AS BIGINT)")]
    lists = {"hist_item": ("item", "STRING"), "hist_cat": ("cat", "STRING"),
             "hist_action": ("action", "BIGINT"), "hist_days": ("days", "BIGINT")}
    cols = ",\n       ".join(
        f"CASE WHEN h.records IS NULL THEN {dialect.empty_list(t)} ELSE {dialect.list_field('h.records', f)} END AS {c}"
        for c, (f, t) in lists.items())
    return f"""
WITH hist_day AS (
    SELECT user_id AS k, day AS d, COUNT(*) AS o FROM events GROUP BY user_id, day
),
hist_grid AS (
    SELECT k, d, o FROM hist_day
    UNION ALL
    SELECT k, {int(snapshot_day)} AS d, 0 AS o FROM hist_day GROUP BY k
),
hist_before AS (
    -- c: the user's kept events (below) before the row's day
    SELECT k, d, CAST(COALESCE(SUM(LEAST(o, CAST({int(length)} AS BIGINT))) OVER (PARTITION BY k ORDER BY d
                                         ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS BIGINT) AS c
    FROM hist_grid
),
hist_ranked AS (
    -- only the last `length` events of each (user, day) can be among the last `length`
    -- before a later day, so only they are kept; r: the rank of a kept event in its user's
    -- kept events, oldest first (the kept events before D are a prefix: ranks 1 .. c)
    SELECT k, day, item_id, category_l1, purchased,
           ROW_NUMBER() OVER (PARTITION BY k ORDER BY ts_ns, seq) AS r
    FROM (SELECT user_id AS k, day, ts_ns, seq, item_id, category_l1, purchased,
                 ROW_NUMBER() OVER (PARTITION BY user_id, day ORDER BY ts_ns DESC, seq DESC) AS rd
          FROM events) last_of_day
    WHERE rd <= {int(length)}
),
hist_pos AS (
    -- j = 0 .. min(c, length) - 1: the j-th latest event before the row's day has rank c - j
    SELECT k, d, c, {dialect.positions(f"LEAST(c, CAST({int(length)} AS BIGINT))")} AS j
    FROM hist_before WHERE c > 0
),
hist_lists AS (
    -- one record per history event, in position order (newest first)
    SELECT p.k, p.d, {dialect.sorted_records(fields)} AS records
    FROM hist_pos p JOIN hist_ranked n ON n.k = p.k AND n.r = p.c - p.j
    GROUP BY p.k, p.d
)
SELECT b.k AS user_id, b.d AS day,
       {cols}
FROM hist_before b LEFT JOIN hist_lists h ON h.k = b.k AND h.d = b.d
"""


def user_category_rows(day: int | None = None) -> str:
    """SELECT of the materialised user x category table in (user_id, day) order (the rows
    stamped ``day`` only, when given)."""
    where = f" WHERE day = {int(day)}" if day is not None else ""
    return f"SELECT user_id, day, {', '.join(UCAT_COLUMNS)} FROM {USER_CATEGORY}{where} ORDER BY user_id, day"


def history_rows(day: int | None = None) -> str:
    """SELECT of the materialised user history in (user_id, day) order (the rows stamped
    ``day`` only, when given)."""
    where = f" WHERE day = {int(day)}" if day is not None else ""
    return f"SELECT user_id, day, {', '.join(HISTORY_COLUMNS)} FROM {HISTORY}{where} ORDER BY user_id, day"


def all_rows(table: str) -> str:
    """SELECT of every row of a materialised table, in no particular order."""
    return f"SELECT * FROM {table}"


def table_rows(name: str) -> str:
    """SELECT of a materialised feature table in (key, day) order."""
    if name == HISTORY:
        return history_rows()
    if name == USER_CATEGORY:
        return user_category_rows()
    key, fields = TABLES[name]
    return f"SELECT {key}, day, {', '.join(fields)} FROM {name} ORDER BY {key}, day"


def model_rows(first_day: int, last_day: int, history: bool = False, history_table: str = HISTORY,
               user_category: bool = False, dialect: Dialect = DUCKDB,
               ts_range: tuple[int, int] | None = None) -> str:
    """SELECT of the events of days [first_day, last_day] (and with ``ts_range``, of the
    nanosecond timestamps [lo, hi) in them) joined with their feature rows
    (point in time: the rows stamped on the event's day), in (time, seq) order; with
    ``history``, also the user's :data:`HISTORY_COLUMNS` (from ``history_table``: the
    user history view's table :data:`HISTORY`, or a table of the same rows and columns
    whose lists hold ids); with ``user_category``, also :data:`UCAT_ROW_COLUMNS`: the user x
    category view's entry of the item's category (as item_attributes gives it; NULL where the
    user has none: no offers in it)."""
    cols = ", ".join(f"e.{c}" for c in ROW_COLUMNS)
    u = ", ".join(f"u.{c}" for c in TABLES["user_daily_stats"][1])
    i = ", ".join(f"i.{c}" for c in TABLES["item_daily_stats"][1])
    a = ", ".join(f"a.{c}" for c in TABLES["item_attributes"][1])
    h = "".join(f", h.{c}" for c in HISTORY_COLUMNS) if history else ""
    join_h = (f"\nLEFT JOIN {history_table} h ON h.user_id = e.user_id AND h.day = e.day" if history else "")
    uc = "".join(f", {dialect.pick(f'uc.ucat_{lv}_keys', f'a.item_category_{lv}', f'uc.ucat_{lv}_{st}_list')}"
                 f" AS ucat_{lv}_{st}"
                 for lv in UCAT_LEVELS for st in UCAT_STATS) if user_category else ""
    join_uc = (f"\nLEFT JOIN {USER_CATEGORY} uc ON uc.user_id = e.user_id AND uc.day = e.day"
               if user_category else "")
    in_range = f" AND e.ts_ns >= {int(ts_range[0])} AND e.ts_ns < {int(ts_range[1])}" if ts_range else ""
    return f"""
SELECT {cols}, {u}, {i}, {a}{h}{uc}
FROM events e
LEFT JOIN user_daily_stats u ON u.user_id = e.user_id AND u.day = e.day
LEFT JOIN item_daily_stats i ON i.item_id = e.item_id AND i.day = e.day
LEFT JOIN item_attributes a ON a.item_id = e.item_id AND a.day = e.day{join_h}{join_uc}
WHERE e.day >= {int(first_day)} AND e.day <= {int(last_day)}{in_range}
ORDER BY e.ts_ns, e.seq
"""


def data_summary() -> str:
    """SELECT of (events, events without a label, first day, last day)."""
    return ("SELECT COUNT(*) AS n, COUNT(*) - COUNT(purchased) AS unlabelled, "
            "MIN(day) AS first_day, MAX(day) AS last_day FROM events")


def typical_price() -> str:
    """SELECT of the median offer price, to the cent (NULL without prices): the price a
    request that gives none is scored at when the item's own price is unknown too."""
    return "SELECT ROUND(MEDIAN(price), 2) FROM events WHERE price IS NOT NULL"


def events_per_hour(dialect: Dialect = DUCKDB) -> str:
    """SELECT of (hour since the epoch, events) for every hour with events, in order."""
    hour = dialect.floor_div("ts_ns", HOUR_NS)
    return f"SELECT {hour} AS h, COUNT(*) AS n FROM events GROUP BY {hour} ORDER BY h"


def event_days() -> str:
    """SELECT of the distinct days with events, in order."""
    return "SELECT DISTINCT day FROM events ORDER BY day"


def row_count(table: str) -> str:
    """SELECT of the number of rows of a materialised table."""
    return f"SELECT COUNT(*) FROM {table}"


def entity_counts() -> str:
    """SELECT of (rows per feature table..., distinct users, distinct items)."""
    return ("SELECT (SELECT COUNT(*) FROM user_daily_stats), (SELECT COUNT(*) FROM item_daily_stats), "
            "(SELECT COUNT(*) FROM item_attributes), "
            "(SELECT COUNT(DISTINCT user_id) FROM user_daily_stats), "
            "(SELECT COUNT(DISTINCT item_id) FROM item_daily_stats)")
