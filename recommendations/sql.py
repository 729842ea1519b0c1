"""All raw SQL of the recommendations app, in one module. Every statement runs on PostgreSQL and SQLite (where they
differ, both spellings are here); tests/recommendations/test_sql.py runs each function on both. Some exist only on
PostgreSQL, for concurrent ingestion (SQLite writes one transaction at a time and needs none of them): the locks
user_item_pairs_lock, fold_lock_try, fold_lock_wait and pending_folds_lock (no-ops elsewhere), and
user_deltas_upsert (jsonb); and the events' partition DDL, at the end (tests/recommendations/test_partitions.py).

Why SQL and not the ORM, each time: on the request paths (ingestion, serving) compiling the ORM's queries cost more
CPU than the statements themselves (~1 ms per single-event ingest, 1.5 ms per recommendation), bulk_update's CASE
WHEN per field cost more again, and an additive upsert (ON CONFLICT DO UPDATE with expressions over `excluded`) has
no ORM spelling. Everything else in the app uses the ORM."""

import functools
import io
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from uuid import UUID

import numpy as np
from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from recommendations import features
from recommendations.models import (
    USER_STATE_FIELDS,
    CatalogState,
    EndUser,
    EventReceipt,
    Impression,
    Interaction,
    Item,
    ItemFeatures,
    PendingFold,
    UserFeatures,
    UserItemFirstSeen,
    utc_datetime,
)

# --- Ingestion: users, items, events -------------------------------------------------------------

_USER_TABLE = EndUser._meta.db_table
_ITEM_TABLE = Item._meta.db_table
_ITEM_FEATURES_TABLE = ItemFeatures._meta.db_table


def user_lookup(*, external_ids: set[str]) -> dict[str, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT external_id, id FROM {_USER_TABLE} WHERE external_id IN ({_placeholders(external_ids)})",
            list(external_ids),
        )
        return dict(cursor.fetchall())


def users_insert(*, external_ids: list[str]) -> dict[str, int]:
    """Insert users in key order (so concurrent batches lock in the same order); returns those written."""
    attributes = EndUser._meta.get_field("attributes").get_db_prep_save({}, connection)
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    params = [value for external_id in external_ids for value in (external_id, attributes, now)]
    values = ", ".join(["(%s, %s, %s)"] * len(external_ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_USER_TABLE} (external_id, attributes, created_at) VALUES {values} "
            "ON CONFLICT (external_id) DO NOTHING RETURNING external_id, id",
            params,
        )
        return dict(cursor.fetchall())


def _placeholders(values) -> str:
    return ", ".join(["%s"] * len(values))


def item_lookup(*, external_ids: set[str]) -> dict[str, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT external_id, id FROM {_ITEM_TABLE} WHERE external_id IN ({_placeholders(external_ids)})",
            list(external_ids),
        )
        return dict(cursor.fetchall())


_INSERTED_COLUMNS = (
    "event_id",
    "user_id",
    "item_id",
    "event_type",
    "value",
    "timestamp",
    "recommendation_id",
    "context",
    "received_at",
)
_INTERACTION_INSERT_SQL = (
    f"INSERT INTO {Interaction._meta.db_table} ({', '.join(_INSERTED_COLUMNS)}) VALUES {{values}} "
    "RETURNING id, user_id, item_id"
)


def interactions_insert(
    *, events: list, users: dict[str, int], items: dict[str, int]
) -> tuple[list, list[tuple[int, int, int]]]:
    """Insert those of the events whose event_id is new (event_receipts_insert: not stored before, nor repeated
    earlier in the batch) in one statement; returns the events written and (key, user, item) of each row stored."""
    received = timezone.now()
    fresh_ids = event_receipts_insert(
        event_ids=[event.event_id for event in events if event.event_id is not None], received_at=received
    )
    fresh = []
    for event in events:
        if event.event_id is None:
            fresh.append(event)
        elif event.event_id in fresh_ids:
            fresh_ids.discard(event.event_id)  # a repeat later in the batch is the duplicate
            fresh.append(event)
    return fresh, (_interactions_write(fresh, users, items, received) if fresh else [])


def _interactions_write(events: list, users: dict, items: dict, received: datetime) -> list[tuple[int, int, int]]:
    fields = [Interaction._meta.get_field(name) for name in ("event_id", "recommendation_id", "context")]
    event_id_field, recommendation_field, context_field = fields
    adapt_time = connection.ops.adapt_datetimefield_value
    now = adapt_time(received)
    params: list = []
    for event in events:
        params += [
            event_id_field.get_db_prep_value(event.event_id, connection),
            users[event.user_id],
            items[event.item_id],
            event.event_type,
            event.value,
            adapt_time(event.timestamp),
            recommendation_field.get_db_prep_value(event.recommendation_id, connection),
            context_field.get_db_prep_value(event.context, connection),
            now,
        ]
    row = "(" + ", ".join(["%s"] * len(_INSERTED_COLUMNS)) + ")"
    with connection.cursor() as cursor:
        cursor.execute(_INTERACTION_INSERT_SQL.format(values=", ".join([row] * len(events))), params)
        return cursor.fetchall()


# --- Idempotency and first-seen pairs: the unique keys a table partitioned by time cannot hold -----

_RECEIPT_INSERT_SQL = (
    f"INSERT INTO {EventReceipt._meta.db_table} (event_id, received_at) VALUES {{values}} "
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)


def event_receipts_insert(*, event_ids: list[UUID], received_at: datetime) -> set[UUID]:
    """Record these event ids as received; returns those that were new. ON CONFLICT DO NOTHING waits for a
    concurrent writer of the same id and then skips it, so a duplicate needs neither a SELECT beforehand nor a
    retry; the ids go in key order, so two batches sharing ids wait for each other in one order, never in a cycle."""
    if not event_ids:
        return set()
    field = EventReceipt._meta.get_field("event_id")
    when = connection.ops.adapt_datetimefield_value(received_at)
    ordered = sorted(set(event_ids))
    params = [value for event_id in ordered for value in (field.get_db_prep_value(event_id, connection), when)]
    with connection.cursor() as cursor:
        cursor.execute(_RECEIPT_INSERT_SQL.format(values=", ".join(["(%s, %s)"] * len(ordered))), params)
        return {field.to_python(event_id) for (event_id,) in cursor.fetchall()}


_FIRST_SEEN_TABLE = UserItemFirstSeen._meta.db_table
_FIRST_SEEN_INSERT_SQL = (
    f"INSERT INTO {_FIRST_SEEN_TABLE} (user_id, item_id, first_event, first_seen) "
    f'SELECT e.user_id, e.item_id, e.id, e."timestamp" FROM {Interaction._meta.db_table} e WHERE e.id {{keys}} '
    "ORDER BY e.user_id, e.item_id ON CONFLICT (user_id, item_id) DO NOTHING RETURNING first_event"
)


def user_item_first_seen_insert(*, event_pks: Iterable[int]) -> set[int]:
    """Record, for each (user, item) pair of these stored events (the batch's first of each pair: its lowest key),
    the pair's first event, unless the pair is recorded; returns the keys recorded. Ingestion calls it in the
    transaction that stores the events, holding the pairs' locks (user_item_pairs_lock): a pair recorded here has
    no event of a lower key, committed or not. In pair order; the unique key skips a recorded pair."""
    keys = sorted(event_pks)
    if not keys:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(_FIRST_SEEN_INSERT_SQL.format(keys=_in_list(connection, keys)), _in_params(connection, keys))
        return {key for (key,) in cursor.fetchall()}


def user_item_first_seen_backfill(*, user_ids: list[int] | None = None, item_ids: list[int] | None = None) -> int:
    """Record every pair of the events of these users or items (all events when both are None) that is not recorded
    yet, at its lowest key: events written in bulk (an import) record none. Returns the pairs recorded."""
    scope, params = "", []
    if user_ids is not None or item_ids is not None:
        users, items = user_ids or [], item_ids or []
        scope = f"WHERE user_id {_in_list(connection, users)} OR item_id {_in_list(connection, items)}"
        params = _in_params(connection, users) + _in_params(connection, items)
    events = Interaction._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_FIRST_SEEN_TABLE} (user_id, item_id, first_event, first_seen) "
            f'SELECT e.user_id, e.item_id, e.id, e."timestamp" FROM {events} e '
            f"WHERE e.id IN (SELECT min(id) FROM {events} {scope} GROUP BY user_id, item_id) "
            f"AND NOT EXISTS (SELECT 1 FROM {_FIRST_SEEN_TABLE} s "
            "WHERE s.user_id = e.user_id AND s.item_id = e.item_id) "
            "ORDER BY e.user_id, e.item_id ON CONFLICT (user_id, item_id) DO NOTHING",
            params,
        )
        return cursor.rowcount


# --- Online features ----------------------------------------------------------------------------

_INTERACTION_TABLE = Interaction._meta.db_table
# The recorded first event as a scalar subquery (the pair's key makes it one row at most): PostgreSQL runs it as one
# probe of that key per event. Spelt EXISTS, the planner could hash the whole table instead, which it did while the
# table's statistics were stale (a fold's cost then grew with the table: bench/ingest.py's shared users, 3x).
_FOLD_EVENTS_SQL = (
    "SELECT f.user_id, f.item_id, f.event_type, f.value, f.timestamp, "
    f"COALESCE((SELECT s.first_event FROM {_FIRST_SEEN_TABLE} s "
    "WHERE s.user_id = f.user_id AND s.item_id = f.item_id) = f.id, FALSE) "
    f"FROM {_INTERACTION_TABLE} f WHERE f.id {{keys}} ORDER BY f.id"
)


def fold_event_rows(*, event_pks: list[int]) -> list[tuple]:
    """(user, item, type, value, timestamp, first) of these stored events, in key order; `first`: the event is its
    user's first (lowest key) with its item, as UserItemFirstSeen records it (so still exact once retention has
    dropped the pair's older events). One probe of that table's (user, item) key per event."""
    with connection.cursor() as cursor:
        cursor.execute(_FOLD_EVENTS_SQL.format(keys=_in_list(connection, event_pks)), _in_params(connection, event_pks))
        return [(*row[:5], bool(row[5])) for row in cursor.fetchall()]


def _in_list(db, values) -> str:
    """`IN (...)` for `values`: one array parameter on PostgreSQL (a fold may hold many batches' keys), placeholders
    elsewhere (SQLite folds one batch at a time)."""
    return "= ANY(%s)" if db.vendor == "postgresql" else f"IN ({_placeholders(values)})"


def _in_params(db, values) -> list:
    return [list(values)] if db.vendor == "postgresql" else list(values)


def item_categories(*, item_pks: list[int]) -> dict[int, list[str]]:
    """The categories of these items (read when their events are folded: a change reaches the next fold)."""
    categories_field = Item._meta.get_field("categories")
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, categories FROM {_ITEM_TABLE} WHERE id {_in_list(connection, item_pks)}",
            _in_params(connection, item_pks),
        )
        rows = cursor.fetchall()
    return {pk: categories_field.from_db_value(categories, None, connection) or [] for pk, categories in rows}


# --- Batches waiting for the fold (PendingFold) ----------------------------------------------------------

_PENDING_TABLE = PendingFold._meta.db_table
# The folder's lock: two int4 keys, a key space apart from the (user, item) pair locks' single bigint keys.
_FOLD_LOCK_KEYS = [0x72656373, 0x666F6C64]  # "recs", "fold"


def fold_lock_try() -> bool:
    """Take the folder's lock until the transaction ends unless another transaction holds it (then False at once,
    without waiting). Only its holder folds, so feature rows are written by one transaction at a time and nobody
    waits for them. PostgreSQL advisory lock; other backends write one transaction at a time (always True there)."""
    db = transaction.get_connection()
    if db.vendor != "postgresql":
        return True
    with db.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", _FOLD_LOCK_KEYS)
        return cursor.fetchone()[0]


def fold_lock_wait() -> None:
    """Take the folder's lock until the transaction ends, waiting for its holder's commit, FOLD_LOCK_WAIT_SECONDS
    at most (then OperationalError: a holder that hangs must not hold requests). A no-op where one transaction
    writes at a time."""
    db = transaction.get_connection()
    if db.vendor != "postgresql":
        return
    with db.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{FOLD_LOCK_WAIT_SECONDS * 1000:.0f}ms'")
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", _FOLD_LOCK_KEYS)
        cursor.execute("SET LOCAL lock_timeout TO DEFAULT")


FOLD_LOCK_WAIT_SECONDS = 5


def pending_fold_insert(*, event_pks: list[int]) -> None:
    """Leave a batch's stored events for the folder (in the transaction that stores them)."""
    event_ids = PendingFold._meta.get_field("event_ids").get_db_prep_save(list(event_pks), connection)
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_PENDING_TABLE} (event_ids, created_at) VALUES (%s, %s)",
            [event_ids, connection.ops.adapt_datetimefield_value(timezone.now())],
        )


def pending_folds_count() -> int:
    """How many batches wait (the table holds a few rows: those not yet folded)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {_PENDING_TABLE}")
        return cursor.fetchone()[0]


def pending_folds_take(*, limit: int) -> list[tuple[int, list[int]]]:
    """(id, event keys) of the oldest `limit` waiting batches, locked until the transaction ends (FOR UPDATE: a
    rebuild's table lock, pending_folds_lock, waits for this fold and this fold for it)."""
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, event_ids FROM {_PENDING_TABLE} ORDER BY id LIMIT %s{lock}", [limit])
        rows = cursor.fetchall()
    return [(pk, json.loads(event_ids) if isinstance(event_ids, str) else event_ids) for pk, event_ids in rows]


def pending_folds_delete(*, ids: list[int]) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {_PENDING_TABLE} WHERE id IN ({_placeholders(ids)})", ids)


def pending_folds_lock() -> None:
    """Until the transaction ends, no batch is left waiting and no other fold takes waiting batches (a rebuild: it
    folds what waits, then replays the log, with nothing arriving in between). PostgreSQL's EXCLUSIVE table lock,
    which plain reads pass; other backends write one transaction at a time (a no-op there)."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {_PENDING_TABLE} IN EXCLUSIVE MODE")


# The feature rows of one request are read and written in raw SQL: compiling the ORM's queries cost more
# CPU than the statements themselves (~1 ms per single-event request); bulk_update's CASE WHEN per field
# cost more again.
_USER_COLUMNS = UserFeatures._meta.concrete_fields
_USER_FEATURES_TABLE = UserFeatures._meta.db_table


def user_item_pairs_lock(*, pairs: Iterable[tuple[int, int]]) -> None:
    """Lock these (user, item) pairs until the transaction ends, in key order (so concurrent batches cannot
    deadlock on them). Ingestion takes them before it stores the events, so that a pair's events get their keys in
    the order their batches commit: a batch that records a pair in UserItemFirstSeen (user_item_first_seen_insert)
    holds its lowest key, committed or not, and the fold and the rebuild count the user at that event.
    PostgreSQL advisory locks; other backends write one transaction at a time and need none (a no-op there)."""
    db = transaction.get_connection()
    if db.vendor != "postgresql":
        return
    # One 64-bit key per pair; should two pairs share a key (ids beyond 2**32), they only wait for each other.
    keys = sorted({((user_id << 32) ^ item_id) & _KEY_MASK for user_id, item_id in pairs})
    keys = [key - (1 << 64) if key >= 1 << 63 else key for key in keys]  # as signed bigints
    with db.cursor() as cursor:
        cursor.execute("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) AS k", [keys])


_KEY_MASK = (1 << 64) - 1


def user_rows_fetch(*, user_ids: list[int]) -> dict[int, UserFeatures]:
    """The feature rows of `user_ids` that exist, decoded as the ORM decodes them (unlocked: read-fold-write is for
    backends that write one transaction at a time; PostgreSQL merges deltas with user_deltas_upsert instead)."""
    db = transaction.get_connection()  # resolved once: each attribute of django.db.connection is a lookup
    columns = ", ".join(field.column for field in _USER_COLUMNS)
    converters = [
        (index, convert, field.cached_col)
        for index, field in enumerate(_USER_COLUMNS)
        for convert in [*db.ops.get_db_converters(field.cached_col), *field.get_db_converters(db)]
    ]
    with db.cursor() as cursor:
        cursor.execute(
            f"SELECT {columns} FROM {_USER_FEATURES_TABLE} WHERE user_id IN ({_placeholders(user_ids)})", user_ids
        )
        fetched = cursor.fetchall()
    rows = {}
    for values in map(list, fetched):
        for index, convert, column in converters:
            values[index] = convert(values[index], column, db)
        row = UserFeatures.from_db(db.alias, None, values)
        rows[row.user_id] = row
    return rows


def user_rows_write(*, rows: list[UserFeatures]) -> None:
    """One upsert that replaces the stored rows with `rows` (folded from rows read by user_rows_fetch): only where
    one transaction writes at a time, or it would overwrite another transaction's fold."""
    _user_rows_upsert(_USER_REPLACE_SQL, rows)


def user_deltas_upsert(*, deltas: list[tuple[int, "features.UserState"]]) -> None:
    """Merge each (user key, UserState delta: a fold's events of the user folded into an empty state) into the
    stored row in one commutative upsert, without reading it first: sums add, first/last times take the min/max,
    per-type and per-category counts add key by key, category times take the latest, the recent items merge by time
    and keep the newest (features.user_apply's rules in SQL). PostgreSQL only (jsonb). The values go as they are
    (JSON as text, times as datetimes), without a model instance or the fields' preparation per row: a fold of
    shared users writes ~600 rows, and that preparation was the larger part of the fold's Python time."""
    now = timezone.now()
    params: list = []
    for user_id, delta in deltas:
        params += [
            user_id if kind == "user" else now if kind == "now" else _user_delta_value(kind, getattr(delta, name))
            for name, kind in _USER_DELTA_COLUMNS
        ]
    values = ", ".join(["(" + ", ".join(["%s"] * len(_USER_COLUMNS)) + ")"] * len(deltas))
    with connection.cursor() as cursor:
        cursor.execute(_USER_MERGE_SQL.format(values=values), params)


def _user_delta_value(kind: str, value):
    if kind == "json":
        return json.dumps(value)
    return utc_datetime(value) if kind == "time" else value


def _user_delta_kind(field) -> str:
    """How user_deltas_upsert sends a UserFeatures column: the row's key, the time of writing, or a UserState value."""
    if field.name in ("user", "updated_at"):
        return "user" if field.name == "user" else "now"
    return {"JSONField": "json", "DateTimeField": "time"}.get(field.get_internal_type(), "plain")


_USER_DELTA_COLUMNS = [(field.name, _user_delta_kind(field)) for field in _USER_COLUMNS]


def _user_rows_upsert(statement: str, rows: list[UserFeatures]) -> None:
    db = transaction.get_connection()
    now = timezone.now()
    params: list = []
    for row in rows:
        row.updated_at = now
        params += [field.get_db_prep_save(getattr(row, field.attname), db) for field in _USER_COLUMNS]
    values = ", ".join(["(" + ", ".join(["%s"] * len(_USER_COLUMNS)) + ")"] * len(rows))
    with db.cursor() as cursor:
        cursor.execute(statement.format(values=values), params)


def _json_merge_sql(column: str, combine: str) -> str:
    """A JSON object of numbers updated with the batch's, key by key: `combine` (SQL of `stored` and `batch`,
    NULL when absent) gives the new value of each of the batch's keys; the other keys stay. Only the batch's few
    keys are visited. numeric keeps what JSON wrote: 3 stays 3, 1.5e9 stays a float."""
    stored, batch = f"({_USER_FEATURES_TABLE}.{column}->>key)::numeric", "value::numeric"
    value = combine.format(stored=stored, batch=batch)
    return (
        f"{column} = {_USER_FEATURES_TABLE}.{column} || coalesce((SELECT jsonb_object_agg(key, {value}) "
        f"FROM jsonb_each_text(excluded.{column})), jsonb_build_object())"
    )


_COUNTS_ADD = "coalesce({stored}, 0) + {batch}"
_LATEST = "GREATEST({stored}, {batch})"  # GREATEST ignores NULL: a key new to the user takes the batch's time

# The stored recent items and the batch's, newest first, the stored first among equal times (as
# features.user_apply inserts a later event after those of the same time), cut to RECENT_ITEMS_KEPT. One sort;
# jsonb compares numbers as numbers.
_RECENT_MERGE_SQL = (
    "recent_items = (SELECT coalesce(to_jsonb((array_agg(entry ORDER BY entry->1 DESC, source, position))"
    f"[1:{features.RECENT_ITEMS_KEPT}]), '[]'::jsonb) FROM ("
    f"SELECT entry, 0 AS source, position FROM jsonb_array_elements({_USER_FEATURES_TABLE}.recent_items) "
    "WITH ORDINALITY AS stored(entry, position) UNION ALL "
    "SELECT entry, 1, position FROM jsonb_array_elements(excluded.recent_items) "
    "WITH ORDINALITY AS batch(entry, position)) AS candidates)"
)
_USER_INSERT_SQL = (
    f"INSERT INTO {_USER_FEATURES_TABLE} ({', '.join(field.column for field in _USER_COLUMNS)}) VALUES {{values}} "
    "ON CONFLICT (user_id) DO UPDATE SET "
)
_USER_REPLACE_SQL = _USER_INSERT_SQL + ", ".join(
    f"{field.column} = excluded.{field.column}" for field in _USER_COLUMNS if field.column != "user_id"
)
_USER_MERGE_SQL = _USER_INSERT_SQL + ", ".join(
    [
        f"{c} = {_USER_FEATURES_TABLE}.{c} + excluded.{c}"
        for c in ("event_count", "positive_count", "rating_count", "rating_sum")
    ]
    + [
        f"first_seen = LEAST({_USER_FEATURES_TABLE}.first_seen, excluded.first_seen)",
        f"last_seen = GREATEST({_USER_FEATURES_TABLE}.last_seen, excluded.last_seen)",
    ]
    + [_json_merge_sql("counts_by_type", _COUNTS_ADD), _json_merge_sql("category_counts", _COUNTS_ADD)]
    + [_json_merge_sql("category_last_seen", _LATEST), _RECENT_MERGE_SQL, "updated_at = excluded.updated_at"]
)


def _log_add_sql(column: str) -> str:
    """log(exp(a) + exp(b)) without overflow; the SQL twin of features.log_add."""
    old, new = f"{_ITEM_FEATURES_TABLE}.{column}", f"excluded.{column}"
    # Beyond a gap of 700 the smaller term is below double precision (and EXP would underflow on
    # PostgreSQL): the larger one is the sum, as math.exp's 0.0 makes it in features.log_add.
    return (
        f"{column} = CASE WHEN {old} IS NULL THEN {new} WHEN {new} IS NULL THEN {old} "
        f"WHEN {old} >= {new} + 700 THEN {old} WHEN {new} >= {old} + 700 THEN {new} "
        f"WHEN {old} >= {new} THEN {old} + LN(1 + EXP({new} - {old})) "
        f"ELSE {new} + LN(1 + EXP({old} - {new})) END"
    )


def _extreme_sql(column: str, comparison: str) -> str:
    old, new = f"{_ITEM_FEATURES_TABLE}.{column}", f"excluded.{column}"
    return f"{column} = CASE WHEN {old} IS NULL OR {new} {comparison} {old} THEN {new} ELSE {old} END"


_ITEM_UPSERT_SQL = (
    f"INSERT INTO {_ITEM_FEATURES_TABLE} (item_id, event_count, positive_count, rating_count, rating_sum, "
    "first_event_at, last_event_at, log_pop_7d, log_pop_30d, user_count, log_users_7d) VALUES {values} "
    "ON CONFLICT (item_id) DO UPDATE SET "
    + ", ".join(
        [
            f"{c} = {_ITEM_FEATURES_TABLE}.{c} + excluded.{c}"
            for c in ("event_count", "positive_count", "rating_count", "rating_sum", "user_count")
        ]
        + [_extreme_sql("first_event_at", "<"), _extreme_sql("last_event_at", ">")]
        + [_log_add_sql(c) for c in ("log_pop_7d", "log_pop_30d", "log_users_7d")]
    )
)


def item_deltas_upsert(*, deltas: list[tuple[int, "features.ItemState"]]) -> None:
    """Add each (item key, ItemState delta) to the item's ItemFeatures row in one statement (features.item_merge's
    arithmetic in SQL), so that a hot row is locked for one statement."""
    adapt = connection.ops.adapt_datetimefield_value
    params: list = []
    for item_id, delta in deltas:
        params += [
            item_id,
            delta.event_count,
            delta.positive_count,
            delta.rating_count,
            delta.rating_sum,
            adapt(utc_datetime(delta.first_event_at)),
            adapt(utc_datetime(delta.last_event_at)),
            delta.log_pop_7d,
            delta.log_pop_30d,
            delta.user_count,
            delta.log_users_7d,
        ]
    values = ", ".join(["(" + ", ".join(["%s"] * 11) + ")"] * len(deltas))
    with connection.cursor() as cursor:
        cursor.execute(_ITEM_UPSERT_SQL.format(values=values), params)


# --- Serving: the item snapshot ------------------------------------------------------------------

_SNAPSHOT_TIMES = ("first_event_at", "last_event_at")


def _snapshot_state_expressions(vendor: str) -> list[str]:
    """ITEM_STATE_COLUMNS of an item's features row `f` (times as UNIX seconds on PostgreSQL, ISO text on SQLite)."""
    epoch = "extract(epoch FROM f.{c})" if vendor == "postgresql" else "f.{c}"
    return [
        epoch.format(c=name) if name in _SNAPSHOT_TIMES else f"f.{ItemFeatures._meta.get_field(name).column}"
        for name in features.ITEM_STATE_COLUMNS
    ]


def item_snapshot_columns() -> list:
    """Every item and its online features as columns in Item key order: keys, external ids, active flags,
    categories (JSON text), then ITEM_STATE_COLUMNS (NaN or None where an item has no features row yet). Numbers
    are numpy arrays on PostgreSQL, lists on SQLite.

    On PostgreSQL each numeric column comes as one bytea of binary values (float8send, int8send, boolsend) that
    numpy reads as it is, and the two text columns as JSON arrays: the web process holds the GIL for a few
    short calls (~7 ms of CPU for 10,000 items) instead of iterating the rows in Python (~70 ms every
    ITEM_SNAPSHOT_SECONDS, during which the requests of the same process waited)."""
    source = f"FROM {_ITEM_TABLE} i LEFT JOIN {_ITEM_FEATURES_TABLE} f ON f.item_id = i.id"
    state = _snapshot_state_expressions(connection.vendor)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            binary = [
                "int8send(i.id)",
                "boolsend(i.active)",
                *(f"float8send(coalesce(({expression})::float8, 'NaN'))" for expression in state),
            ]
            texts = ["i.external_id", "i.categories::text"]
            cursor.execute(
                "SELECT "
                + ", ".join(
                    [f"string_agg({e}, ''::bytea ORDER BY i.id)" for e in binary]
                    + [f"json_agg({e} ORDER BY i.id)::text" for e in texts]
                )
                + f" {source}"
            )
            row = cursor.fetchone()
            if row[0] is None:  # no items
                return [[] for _ in range(4 + len(state))]
            pks, active, *numbers = (bytes(value) for value in row[: len(binary)])
            external_ids, categories = (json.loads(value) for value in row[len(binary) :])
            return [
                np.frombuffer(pks, dtype=">i8").astype(np.int64),
                external_ids,
                np.frombuffer(active, dtype=np.uint8).astype(bool),
                categories,
                *(np.frombuffer(column, dtype=">f8").astype(np.float64) for column in numbers),
            ]
        cursor.execute(f"SELECT i.id, i.external_id, i.active, i.categories, {', '.join(state)} {source} ORDER BY i.id")
        rows = cursor.fetchall()
    columns = [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(4 + len(state))]
    for name in _SNAPSHOT_TIMES:  # SQLite keeps times in UTC without a zone (Django's converter reads a datetime)
        column = columns[4 + features.ITEM_STATE_COLUMNS.index(name)]
        column[:] = [None if value is None else _sqlite_seconds(value) for value in column]
    return columns


def _sqlite_seconds(value: datetime | str) -> float:
    moment = value if isinstance(value, datetime) else parse_datetime(value)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


# --- Serving: a request's own reads --------------------------------------------------------------

# Every Item key the user has an event with, in the same statement as the user's row: the user's UserItemFirstSeen
# pairs, which every writer of events records (ingestion in its transaction, an import by the rebuild after it) and
# retention keeps. One probe of the pairs' unique index, where the events' DISTINCT visited every month partition
# (PostgreSQL CPU per call 0.11 against 0.16 ms with 5 partitions on ml-latest-small, growing with the months).
_SEEN_AGGREGATE = {
    "postgresql": "ARRAY(SELECT s.item_id FROM {table} s WHERE s.user_id = u.id)",
    "sqlite": "(SELECT json_group_array(s.item_id) FROM {table} s WHERE s.user_id = u.id)",
}
_USER_SQL = (
    f"SELECT u.id, {{seen}}, (SELECT c.deactivations FROM {CatalogState._meta.db_table} c), "
    f"{', '.join('f.' + UserFeatures._meta.get_field(name).column for name in USER_STATE_FIELDS)} "
    f"FROM {EndUser._meta.db_table} u LEFT JOIN {UserFeatures._meta.db_table} f ON f.user_id = u.id "
    f"WHERE u.external_id = %s"
)
_INACTIVE_SQL = f"SELECT id FROM {Item._meta.db_table} WHERE NOT active AND id IN ({{keys}})"


def served_user_row(*, external_id: str) -> tuple | None:
    """The served user's row: id, seen item keys, the catalogue's deactivations, then USER_STATE_FIELDS (None
    for an unknown user). On PostgreSQL the statement is prepared once per connection (planning it cost a third
    of its time: 0.40 against 0.26 ms a call on ml-latest-small), which assumes a session per connection, as Django's
    own connections are (not a transaction-mode pooler). Which session prepared it is per-connection state,
    so it is kept on Django's connection object (one per thread), compared with the DB-API connection it
    holds now: a reconnect is a new session, which prepares it again."""
    with connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            cursor.execute(_user_sql(connection.vendor), [external_id])
            return cursor.fetchone()
        session = connection.connection
        if getattr(connection, _PREPARED_ON, None) is not session:
            cursor.execute(f"PREPARE {_PREPARED_NAME}(text) AS {_user_sql(connection.vendor).replace('%s', '$1')}")
            setattr(connection, _PREPARED_ON, session)
        cursor.execute(f"EXECUTE {_PREPARED_NAME}(%s)", [external_id])
        return cursor.fetchone()


_PREPARED_NAME = "recsite_served_user"
_PREPARED_ON = "recsite_served_user_prepared_on"  # attribute of the connection: the session that prepared it


@functools.cache
def _user_sql(vendor: str) -> str:
    return _USER_SQL.format(seen=_SEEN_AGGREGATE[vendor].format(table=_FIRST_SEEN_TABLE))


def inactive_items(*, pks: list[int]) -> set[int]:
    """Which of these Item keys are inactive now."""
    if not pks:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(_INACTIVE_SQL.format(keys=", ".join(["%s"] * len(pks))), pks)
        return {pk for (pk,) in cursor.fetchall()}


IMPRESSION_COLUMNS = (
    "recommendation_id",
    "user_id",
    "served_at",
    "model_version",
    "routed_version",
    "strategy",
    "arm",
    "experiment_id",
    "shadow_of",
    "items",
    "scores",
)
_IMPRESSION_INSERT_SQL = (
    f"INSERT INTO {Impression._meta.db_table} ({', '.join(IMPRESSION_COLUMNS)}) VALUES {{values}} "
    "ON CONFLICT (recommendation_id) DO NOTHING"
)


_IMPRESSIONS_PER_STATEMENT = 500


def impressions_insert(*, rows: list[tuple]) -> None:
    """Store served lists (`rows` of IMPRESSION_COLUMNS: the ids as UUIDs, the time aware, items and scores as
    lists), up to 500 a statement (fewer where the backend limits parameters); a list whose recommendation_id is
    stored is skipped, so a flush retried after a partial failure writes each list once. The web process's
    impression flush: bulk_create spent ~50 us of Python a row preparing each field, with the GIL held, while the
    requests of the process waited for it."""
    limit = connection.features.max_query_params
    size = min(_IMPRESSIONS_PER_STATEMENT, limit // len(IMPRESSION_COLUMNS)) if limit else _IMPRESSIONS_PER_STATEMENT
    for start in range(0, len(rows), size):
        _impressions_write(rows[start : start + size])


def _impressions_write(rows: list[tuple]) -> None:
    uuid_field = Impression._meta.get_field("recommendation_id")
    adapt_time = connection.ops.adapt_datetimefield_value
    params: list = []
    for recommendation_id, user_id, served_at, model, routed, strategy, arm, experiment, shadow_of, *lists in rows:
        params += [
            uuid_field.get_db_prep_value(recommendation_id, connection),
            user_id,
            adapt_time(served_at),
            model,
            routed,
            str(strategy),  # a TextChoices member is a str whose str() is its value
            str(arm),
            experiment,
            None if shadow_of is None else uuid_field.get_db_prep_value(shadow_of, connection),
            *map(json.dumps, lists),  # items, scores
        ]
    row = "(" + ", ".join(["%s"] * len(IMPRESSION_COLUMNS)) + ")"
    with connection.cursor() as cursor:
        cursor.execute(_IMPRESSION_INSERT_SQL.format(values=", ".join([row] * len(rows))), params)


def database_ping() -> None:
    """One round trip to the database; raises when it is unreachable (the health check)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def statistics_refresh(*, models: list) -> None:
    """After a bulk load, let PostgreSQL plan with real row counts (serving's IN-list lookups otherwise fall back
    to sequential scans until autovacuum gets to the tables). Nothing to do on SQLite."""
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE " + ", ".join(model._meta.db_table for model in models))


# --- Event partitions (PostgreSQL only: other backends keep one plain table) ------------------------

_PARTITIONS_SQL = (
    "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
    "WHERE i.inhparent = %s::regclass"
)
_BOUNDS = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")
DEFAULT_PARTITION = f"{_INTERACTION_TABLE}_default"
# Partition DDL waits this long for its locks at most, then gives up until the next run, rather than queue ingestion
# and serving behind it for longer.
_DDL_LOCK_TIMEOUT = "5s"
_DETACH_LOCK_TIMEOUT = "1s"


def _referenced_tables_lock(cursor) -> None:
    """Lock the tables the events' foreign keys point to, as attaching or detaching a partition does (it adds or
    drops the partition's foreign keys), but first and in ingestion's order (items, then users, then events): taken
    last, while the partition DDL holds the events' default partition, they would wait for an ingest that holds
    them and waits for that partition. (Another order elsewhere, e.g. an import writing users first, can still
    deadlock with it: PostgreSQL then aborts one, and both sides retry.)"""
    cursor.execute(f"LOCK TABLE {_ITEM_TABLE}, {_USER_TABLE} IN SHARE ROW EXCLUSIVE MODE")


def event_partitions() -> dict[str, tuple[datetime, datetime] | None]:
    """The partitions of the events table: name → [start, end) of its range (None for the default one)."""
    with connection.cursor() as cursor:
        cursor.execute(_PARTITIONS_SQL, [_INTERACTION_TABLE])
        rows = cursor.fetchall()
    partitions = {}
    for name, bound in rows:
        found = _BOUNDS.search(bound)
        partitions[name] = found and (_timestamp(found[1]), _timestamp(found[2]))
    return partitions


def _timestamp(text: str) -> datetime:
    """A bound as pg_get_expr prints it, in the session's time zone (Django's connections use UTC)."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def event_partition_create(*, name: str, start: datetime, end: datetime) -> int:
    """Create partition `name` for [start, end), moving into it the rows the default partition holds for that range
    (a partition cannot be attached while they are there); returns how many were moved. The default partition is
    locked meanwhile (events of months without a partition wait); the table and its other partitions are not
    (ATTACH PARTITION takes a lock that lets reads and writes go on). One transaction."""
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{_DDL_LOCK_TIMEOUT}'")
        _referenced_tables_lock(cursor)
        # Taken before the move (ATTACH takes it anyway): no event may land in the default partition between the
        # move and the attach, or the attach would find it there and fail.
        cursor.execute(f"LOCK TABLE {DEFAULT_PARTITION} IN ACCESS EXCLUSIVE MODE")
        cursor.execute(f"CREATE TABLE {name} (LIKE {_INTERACTION_TABLE} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
        cursor.execute(
            f'WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE "timestamp" >= %s AND "timestamp" < %s RETURNING *) '
            f"INSERT INTO {name} SELECT * FROM moved",
            [start, end],
        )
        moved = cursor.rowcount
        cursor.execute(
            f"ALTER TABLE {_INTERACTION_TABLE} ATTACH PARTITION {name} FOR VALUES FROM (%s) TO (%s)", [start, end]
        )
    return moved


def event_partition_drop(*, name: str) -> None:
    """Detach and drop partition `name`, with its events (retention). One transaction."""
    with transaction.atomic(), connection.cursor() as cursor:
        # DETACH locks the whole table (CONCURRENTLY is refused beside a default partition): a short wait at most.
        cursor.execute(f"SET LOCAL lock_timeout = '{_DETACH_LOCK_TIMEOUT}'")
        _referenced_tables_lock(cursor)
        cursor.execute(f"ALTER TABLE {_INTERACTION_TABLE} DETACH PARTITION {name}")
        cursor.execute(f"DROP TABLE {name}")


def default_partition_delete_before(*, moment: datetime) -> int:
    """Delete the default partition's events before `moment` (retention of the months without a partition)."""
    with connection.cursor() as cursor:
        cursor.execute(f'DELETE FROM {DEFAULT_PARTITION} WHERE "timestamp" < %s', [moment])
        return cursor.rowcount


# --- Events written in bulk (imports) ------------------------------------------------------------------------------

_IMPORT_TABLE = "recommendations_import_events"
_IMPORT_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "value", "timestamp")


def interactions_import(*, rows: list[tuple], received_at: datetime) -> int:
    """Store events written in bulk (one chunk of an import: `rows` of `_IMPORT_COLUMNS`, distinct event ids, in the
    order their keys should follow) unless their ids were received; returns how many were stored. The receipts go
    first in id order, as in ingestion, so an id already received (an earlier import, a retried event) is skipped.

    On PostgreSQL the rows reach a temporary table by COPY and the receipts and events are written by two set-based
    statements, the events in the chunk's order (so their keys follow it, as one INSERT would give them): an INSERT
    with a VALUES list, as Django's bulk_create builds it parameter by parameter, cost the import more Python than
    the rows cost PostgreSQL (ml-latest-small: 21 of 44 s of storing). Elsewhere: the receipts, then executemany."""
    if not rows:
        return 0
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor != "postgresql":
            fresh = event_receipts_insert(event_ids=[row[0] for row in rows], received_at=received_at)
            return _interactions_insert_each(cursor, [row for row in rows if row[0] in fresh], received_at)
        # Emptied here, not only at commit: inside a caller's transaction (a test's) the last chunk's rows remain.
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS {_IMPORT_TABLE} (seq integer, event_id uuid, user_id bigint, "
            'item_id bigint, event_type varchar(16), value double precision, "timestamp" timestamptz) '
            "ON COMMIT DELETE ROWS"
        )
        cursor.execute(f"TRUNCATE {_IMPORT_TABLE}")
        cursor.copy_expert(f"COPY {_IMPORT_TABLE} FROM STDIN", _copy_text(rows))
        cursor.execute(
            f"WITH fresh AS (INSERT INTO {EventReceipt._meta.db_table} (event_id, received_at) "
            f"SELECT event_id, %s FROM {_IMPORT_TABLE} ORDER BY event_id "
            "ON CONFLICT (event_id) DO NOTHING RETURNING event_id) "
            f"INSERT INTO {_INTERACTION_TABLE} ({', '.join(_quoted(_IMPORT_COLUMNS))}, received_at) "
            f"SELECT {', '.join('t.' + c for c in _quoted(_IMPORT_COLUMNS))}, %s "
            f"FROM {_IMPORT_TABLE} t JOIN fresh USING (event_id) ORDER BY t.seq",
            [received_at, received_at],
        )
        return cursor.rowcount


def _quoted(columns: Iterable[str]) -> list[str]:
    return [f'"{column}"' for column in columns]


def _copy_text(rows: list[tuple]) -> io.StringIO:
    """COPY's text format: tab-separated, \\N for NULL; no field of an import row holds a tab, newline or
    backslash (uuids, integers, an event type, floats and ISO timestamps)."""
    lines = []
    for seq, (event_id, user_id, item_id, event_type, value, moment) in enumerate(rows):
        value_text = r"\N" if value is None else repr(float(value))
        lines.append(f"{seq}\t{event_id}\t{user_id}\t{item_id}\t{event_type}\t{value_text}\t{moment.isoformat()}\n")
    return io.StringIO("".join(lines))


def _interactions_insert_each(cursor, rows: list[tuple], received_at: datetime) -> int:
    event_id_prep = functools.partial(Interaction._meta.get_field("event_id").get_db_prep_value, connection=connection)
    adapt = connection.ops.adapt_datetimefield_value
    when = adapt(received_at)
    cursor.executemany(
        f"INSERT INTO {_INTERACTION_TABLE} ({', '.join(_quoted(_IMPORT_COLUMNS))}, received_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s)",
        [
            (event_id_prep(event_id), user_id, item_id, event_type, value, adapt(moment), when)
            for event_id, user_id, item_id, event_type, value, moment in rows
        ],
    )
    return len(rows)
