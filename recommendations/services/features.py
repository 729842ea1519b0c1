"""The online feature store: folds accepted events into UserFeatures / ItemFeatures rows, inside the
ingest transaction, with the definitions of recommendations.features.

Freshness: synchronous. The rows are updated in the same transaction as the events, so a recommendation
request issued after the 201 sees them (0 s lag).

Contention: neither a hot item nor users shared by concurrent batches may serialize ingestion. On
PostgreSQL, item and user rows are each updated with one `INSERT ... ON CONFLICT DO UPDATE` for the whole
batch that merges the batch's deltas (pre-aggregated per row in Python with the shared definitions) into
the stored row: sums add, first/last times take the min/max, per-type and per-category counts add key by
key, the recent items merge by time and keep the newest. The merge is commutative, so no row is read
first; users then items, each in key order, as the last statements before commit, so a row is locked for
one statement plus the commit. (Other backends write one transaction at a time: there the user rows are
read, folded and written back.) bench/ingest.py measures the hot-item and shared-users cases.

Distinct users: an item counts a user once, at the user's first stored event with it (features.ItemState).
first_interactions finds those events with one index probe each; a transaction-scoped lock per (user,
item) pair, taken in key order before the events are stored, makes the answer exact when two batches of
the same user and item race (tests/reliability/test_bought_popularity.py) without making batches that
merely share users wait for each other.
"""

from collections import defaultdict
from datetime import datetime, timezone
from typing import Iterable

from django.db import connection, transaction
from django.db.models import Min, Q

from recommendations import features
from recommendations.models import EndUser, Interaction, Item, ItemFeatures, UserFeatures
from recommendations.selectors.serving import cursor_timestamp

_ITEM_TABLE = ItemFeatures._meta.db_table


def to_ts(moment: datetime) -> float:
    return moment.timestamp()


def from_ts(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc)


def user_state_from_row(row: UserFeatures) -> features.UserState:
    return features.UserState(
        event_count=row.event_count,
        counts_by_type=dict(row.counts_by_type),
        positive_count=row.positive_count,
        rating_count=row.rating_count,
        rating_sum=row.rating_sum,
        first_seen=row.first_seen and to_ts(row.first_seen),
        last_seen=row.last_seen and to_ts(row.last_seen),
        recent_items=[list(pair) for pair in row.recent_items],
        category_counts=dict(row.category_counts),
        category_last_seen=dict(row.category_last_seen),
    )


def _user_state_to_row(state: features.UserState, row: UserFeatures) -> None:
    row.event_count = state.event_count
    row.counts_by_type = state.counts_by_type
    row.positive_count = state.positive_count
    row.rating_count = state.rating_count
    row.rating_sum = state.rating_sum
    row.first_seen = from_ts(state.first_seen)
    row.last_seen = from_ts(state.last_seen)
    row.recent_items = state.recent_items
    row.category_counts = state.category_counts
    row.category_last_seen = state.category_last_seen


def item_state_from_row(row: ItemFeatures) -> features.ItemState:
    return features.ItemState(
        event_count=row.event_count,
        positive_count=row.positive_count,
        rating_count=row.rating_count,
        rating_sum=row.rating_sum,
        first_event_at=row.first_event_at and to_ts(row.first_event_at),
        last_event_at=row.last_event_at and to_ts(row.last_event_at),
        log_pop_7d=row.log_pop_7d,
        log_pop_30d=row.log_pop_30d,
        user_count=row.user_count,
        log_users_7d=row.log_users_7d,
    )


_USER_FIELDS = [
    "event_count",
    "counts_by_type",
    "positive_count",
    "rating_count",
    "rating_sum",
    "first_seen",
    "last_seen",
    "recent_items",
    "category_counts",
    "category_last_seen",
]


def user_item_pairs_lock(*, pairs: Iterable[tuple[int, int]]) -> None:
    """Lock these (user, item) pairs until the transaction ends, in key order (so concurrent batches cannot
    deadlock on them). Taken before the events are stored, so that first_interactions sees a concurrent batch
    with the same pair: it committed before, or it waits for this transaction. PostgreSQL advisory locks; other
    backends write one transaction at a time and need none."""
    db = transaction.get_connection()
    if db.vendor != "postgresql":
        return
    # One 64-bit key per pair; should two pairs share a key (ids beyond 2**32), they only wait for each other.
    keys = sorted({((user_id << 32) ^ item_id) & _KEY_MASK for user_id, item_id in pairs})
    keys = [key - (1 << 64) if key >= 1 << 63 else key for key in keys]
    with db.cursor() as cursor:
        cursor.execute("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(%s::bigint[]) AS k", [keys])


_KEY_MASK = (1 << 64) - 1


def online_features_update(*, events: list[features.Event], arrivals: list[features.Event],
                           item_categories: dict[int, list[str]]) -> None:
    """Fold `events` (already written, in the caller's transaction) into the online feature rows.
    `arrivals`: those that are their user's first with the item (first_interactions)."""
    _users_update(events, item_categories)
    _items_update(events, arrivals)


def _users_update(events: list[features.Event], item_categories: dict[int, list[str]]) -> None:
    """Fold the events into their users' rows: merged into the stored rows on PostgreSQL, else read and written."""
    db = transaction.get_connection()
    merge = db.vendor == "postgresql"
    user_ids = sorted({event.user_id for event in events})
    rows = {uid: UserFeatures(user_id=uid) for uid in user_ids} if merge else _user_rows_read(user_ids)
    states = {uid: user_state_from_row(row) for uid, row in rows.items()}
    for event in events:
        features.user_apply(states[event.user_id], event, item_categories.get(event.item_id, ()))
    for uid, row in rows.items():
        _user_state_to_row(states[uid], row)
    _user_rows_write([rows[uid] for uid in user_ids], merge=merge)


def _user_rows_read(user_ids: list[int]) -> dict[int, UserFeatures]:
    """The feature rows of these users, new ones for those who have none yet."""
    rows = _user_rows_fetch(user_ids)
    return {uid: rows.get(uid) or UserFeatures(user_id=uid) for uid in user_ids}


_INTERACTION_TABLE = Interaction._meta.db_table
_FIRST_SQL = (
    f"SELECT f.user_id, f.item_id, f.event_type, f.value, f.timestamp FROM {_INTERACTION_TABLE} f "
    f"WHERE f.id IN ({{keys}}) AND NOT EXISTS (SELECT 1 FROM {_INTERACTION_TABLE} o "
    "WHERE o.user_id = f.user_id AND o.item_id = f.item_id AND o.id < f.id)"
)


def first_interactions(*, event_pks: list[int]) -> list[features.Event]:
    """Those of these stored events that are the first (lowest key) of their user with their item.

    Exact under concurrency when the pairs were locked (user_item_pairs_lock) before the events were
    stored: then every other event of these pairs is committed, and visible here (read committed: each
    statement sees what was committed before it), or waits for this transaction. (The MovieLens import writes
    events without these locks and then rebuilds the features of what it touched.) One probe of the
    (user, item) index per event."""
    if not event_pks:
        return []
    with connection.cursor() as cursor:
        cursor.execute(_FIRST_SQL.format(keys=", ".join(["%s"] * len(event_pks))), event_pks)
        rows = cursor.fetchall()
    return [features.Event(user_id, item_id, event_type, value, cursor_timestamp(timestamp))
            for user_id, item_id, event_type, value, timestamp in rows]


# The feature rows of one request are read and written in raw SQL: compiling the ORM's queries cost more
# CPU than the statements themselves (~1 ms per single-event request); bulk_update's CASE WHEN per field
# cost more again.
_USER_COLUMNS = UserFeatures._meta.concrete_fields
_USER_TABLE = UserFeatures._meta.db_table


def _user_rows_fetch(user_ids: list[int]) -> dict[int, UserFeatures]:
    """The feature rows of `user_ids` that exist, decoded as the ORM decodes them."""
    db = transaction.get_connection()  # resolved once: each attribute of django.db.connection is a lookup
    columns = ", ".join(field.column for field in _USER_COLUMNS)
    placeholders = ", ".join(["%s"] * len(user_ids))
    converters = [
        (index, convert, field.cached_col)
        for index, field in enumerate(_USER_COLUMNS)
        for convert in [*db.ops.get_db_converters(field.cached_col), *field.get_db_converters(db)]
    ]
    with db.cursor() as cursor:
        cursor.execute(
            f"SELECT {columns} FROM {_USER_TABLE} WHERE user_id IN ({placeholders})", user_ids
        )
        fetched = cursor.fetchall()
    rows = {}
    for values in map(list, fetched):
        for index, convert, column in converters:
            values[index] = convert(values[index], column, db)
        row = UserFeatures.from_db(db.alias, None, values)
        rows[row.user_id] = row
    return rows


def _user_rows_write(rows: list[UserFeatures], *, merge: bool) -> None:
    """One upsert of `rows`, in key order. `merge`: rows hold the batch's deltas, merged into the stored rows
    (_USER_MERGE_SQL); otherwise they are the folded rows themselves, replacing the stored ones (only where
    one transaction writes at a time)."""
    db = transaction.get_connection()
    now = datetime.now(timezone.utc)
    params: list = []
    for row in rows:
        row.updated_at = now
        params += [field.get_db_prep_save(getattr(row, field.attname), db) for field in _USER_COLUMNS]
    values = ", ".join(["(" + ", ".join(["%s"] * len(_USER_COLUMNS)) + ")"] * len(rows))
    with db.cursor() as cursor:
        cursor.execute((_USER_MERGE_SQL if merge else _USER_REPLACE_SQL).format(values=values), params)


def _json_merge_sql(column: str, combine: str) -> str:
    """A JSON object of numbers updated with the batch's, key by key: `combine` (SQL of `stored` and `batch`,
    NULL when absent) gives the new value of each of the batch's keys; the other keys stay. Only the batch's few
    keys are visited. numeric keeps what JSON wrote: 3 stays 3, 1.5e9 stays a float."""
    stored, batch = f"({_USER_TABLE}.{column}->>key)::numeric", "value::numeric"
    value = combine.format(stored=stored, batch=batch)
    return (
        f"{column} = {_USER_TABLE}.{column} || coalesce((SELECT jsonb_object_agg(key, {value}) "
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
    f"SELECT entry, 0 AS source, position FROM jsonb_array_elements({_USER_TABLE}.recent_items) "
    "WITH ORDINALITY AS stored(entry, position) UNION ALL "
    "SELECT entry, 1, position FROM jsonb_array_elements(excluded.recent_items) "
    "WITH ORDINALITY AS batch(entry, position)) AS candidates)"
)

_USER_INSERT_SQL = (
    f"INSERT INTO {_USER_TABLE} ({', '.join(field.column for field in _USER_COLUMNS)}) VALUES {{values}} "
    "ON CONFLICT (user_id) DO UPDATE SET "
)
_USER_REPLACE_SQL = _USER_INSERT_SQL + ", ".join(
    f"{field.column} = excluded.{field.column}" for field in _USER_COLUMNS if field.column != "user_id"
)
_USER_MERGE_SQL = _USER_INSERT_SQL + ", ".join(
    [f"{c} = {_USER_TABLE}.{c} + excluded.{c}" for c in ("event_count", "positive_count", "rating_count", "rating_sum")]
    + [f"first_seen = LEAST({_USER_TABLE}.first_seen, excluded.first_seen)",
       f"last_seen = GREATEST({_USER_TABLE}.last_seen, excluded.last_seen)"]
    + [_json_merge_sql("counts_by_type", _COUNTS_ADD), _json_merge_sql("category_counts", _COUNTS_ADD)]
    + [_json_merge_sql("category_last_seen", _LATEST), _RECENT_MERGE_SQL, "updated_at = excluded.updated_at"]
)


def _items_update(events: list[features.Event], arrivals: list[features.Event]) -> None:
    by_item: dict[int, list[features.Event]] = defaultdict(list)
    for event in events:
        by_item[event.item_id].append(event)
    arrivals_by_item: dict[int, list[features.Event]] = defaultdict(list)
    for event in arrivals:
        arrivals_by_item[event.item_id].append(event)
    deltas = [(item, features.item_delta(by_item[item], arrivals_by_item[item])) for item in sorted(by_item)]
    adapt = connection.ops.adapt_datetimefield_value
    params: list = []
    for item_id, delta in deltas:
        params += [
            item_id,
            delta.event_count,
            delta.positive_count,
            delta.rating_count,
            delta.rating_sum,
            adapt(from_ts(delta.first_event_at)),
            adapt(from_ts(delta.last_event_at)),
            delta.log_pop_7d,
            delta.log_pop_30d,
            delta.user_count,
            delta.log_users_7d,
        ]
    values = ", ".join(["(" + ", ".join(["%s"] * 11) + ")"] * len(deltas))
    with connection.cursor() as cursor:
        cursor.execute(_ITEM_UPSERT_SQL.format(values=values), params)


def _log_add_sql(column: str) -> str:
    """log(exp(a) + exp(b)) without overflow; the SQL twin of features.log_add."""
    old, new = f"{_ITEM_TABLE}.{column}", f"excluded.{column}"
    # Beyond a gap of 700 the smaller term is below double precision (and EXP would underflow on
    # PostgreSQL): the larger one is the sum, as math.exp's 0.0 makes it in features.log_add.
    return (
        f"{column} = CASE WHEN {old} IS NULL THEN {new} WHEN {new} IS NULL THEN {old} "
        f"WHEN {old} >= {new} + 700 THEN {old} WHEN {new} >= {old} + 700 THEN {new} "
        f"WHEN {old} >= {new} THEN {old} + LN(1 + EXP({new} - {old})) "
        f"ELSE {new} + LN(1 + EXP({old} - {new})) END"
    )


def _extreme_sql(column: str, comparison: str) -> str:
    old, new = f"{_ITEM_TABLE}.{column}", f"excluded.{column}"
    return f"{column} = CASE WHEN {old} IS NULL OR {new} {comparison} {old} THEN {new} ELSE {old} END"


_ITEM_UPSERT_SQL = (
    f"INSERT INTO {_ITEM_TABLE} (item_id, event_count, positive_count, rating_count, rating_sum, "
    "first_event_at, last_event_at, log_pop_7d, log_pop_30d, user_count, log_users_7d) VALUES {values} "
    "ON CONFLICT (item_id) DO UPDATE SET "
    + ", ".join(
        [f"{c} = {_ITEM_TABLE}.{c} + excluded.{c}"
         for c in ("event_count", "positive_count", "rating_count", "rating_sum", "user_count")]
        + [_extreme_sql("first_event_at", "<"), _extreme_sql("last_event_at", ">")]
        + [_log_add_sql(c) for c in ("log_pop_7d", "log_pop_30d", "log_users_7d")]
    )
)


def online_features_rebuild(*, user_ids: list[int] | None = None, item_ids: list[int] | None = None) -> dict:
    """Recompute online feature rows from the event log with the shared definitions.

    For bulk imports and repairs. Rows are locked before the events are read, so an ingest racing with
    the rebuild either committed before it (and is in the replay) or waits and folds its events on top.
    Returns the number of users and items rebuilt."""
    with transaction.atomic():
        users = sorted(user_ids if user_ids is not None else EndUser.objects.values_list("pk", flat=True))
        items = sorted(item_ids if item_ids is not None else Item.objects.values_list("pk", flat=True))
        UserFeatures.objects.bulk_create([UserFeatures(user_id=u) for u in users], ignore_conflicts=True, batch_size=5000)
        ItemFeatures.objects.bulk_create([ItemFeatures(item_id=i) for i in items], ignore_conflicts=True, batch_size=5000)
        _lock_rows(UserFeatures, "user_id", users, whole_table=user_ids is None)
        _lock_rows(ItemFeatures, "item_id", items, whole_table=item_ids is None)
        user_states = {u: features.UserState() for u in users}
        item_states = {i: features.ItemState() for i in items}
        categories = dict(Item.objects.values_list("pk", "categories"))
        events = Interaction.objects.all()
        if len(users) + len(items) <= _IN_LIST_LIMIT and (user_ids is not None or item_ids is not None):
            events = events.filter(Q(user_id__in=users) | Q(item_id__in=items))
        # Each (user, item) pair's first (lowest key) event: the one that counts its user (features.ItemState).
        first = set(events.order_by().values("user_id", "item_id").annotate(first=Min("pk"))
                    .values_list("first", flat=True))
        events = events.order_by("timestamp", "pk").values_list(
            "pk", "user_id", "item_id", "event_type", "value", "timestamp")
        for pk, user_id, item_id, event_type, value, timestamp in events.iterator(chunk_size=20000):
            event = features.Event(user_id, item_id, event_type, value, timestamp.timestamp())
            if user_id in user_states:
                features.user_apply(user_states[user_id], event, categories.get(item_id) or ())
            if item_id in item_states:
                features.item_apply(item_states[item_id], event, first_of_user=pk in first)
        user_rows = [UserFeatures(user_id=u) for u in users]
        for row in user_rows:
            _user_state_to_row(user_states[row.user_id], row)
        item_rows = [ItemFeatures(item_id=i) for i in items]
        for row in item_rows:
            _item_state_to_row(item_states[row.item_id], row)
        # An upsert over locked rows: the same effect as bulk_update, at a fraction of its cost.
        UserFeatures.objects.bulk_create(user_rows, update_conflicts=True, unique_fields=["user"],
                                         update_fields=_USER_FIELDS, batch_size=1000)
        ItemFeatures.objects.bulk_create(item_rows, update_conflicts=True, unique_fields=["item"],
                                         update_fields=_ITEM_FIELDS, batch_size=1000)
    return {"users": len(user_rows), "items": len(item_rows)}


_IN_LIST_LIMIT = 5000  # above it, read the whole log rather than send a huge IN list (SQLite caps parameters)


def _lock_rows(model, key: str, ids: list[int], *, whole_table: bool) -> None:
    """SELECT ... FOR UPDATE the rows of `ids`, in key order, in chunks small enough for any backend."""
    if whole_table:
        list(model.objects.select_for_update().order_by(key).values_list(key, flat=True))
        return
    for start in range(0, len(ids), _IN_LIST_LIMIT):
        chunk = ids[start : start + _IN_LIST_LIMIT]
        list(model.objects.select_for_update().filter(**{f"{key}__in": chunk}).order_by(key).values_list(key, flat=True))


_ITEM_FIELDS = features.ITEM_STATE_COLUMNS  # ItemFeatures has one column per ItemState field


def _item_state_to_row(state: features.ItemState, row: ItemFeatures) -> None:
    for name in _ITEM_FIELDS:
        value = getattr(state, name)
        setattr(row, name, from_ts(value) if name.endswith("_at") else value)
