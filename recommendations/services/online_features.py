"""The online feature store: folds accepted events into UserFeatures / ItemFeatures rows, inside the
ingest transaction, with the definitions of recommendations.features.

Freshness: synchronous. The rows are updated in the same transaction as the events, so a recommendation
request issued after the 201 sees them (0 s lag).

Contention: a hot item must not serialize ingestion. Item rows are updated with one additive
`INSERT ... ON CONFLICT DO UPDATE` for the whole batch (deltas pre-aggregated per item, rows in id order),
run as the last statement before commit, so a hot row is locked for one statement plus the commit.
User rows are read-modify-written under SELECT ... FOR UPDATE in id order, locked before the events are
stored; they are not contended (a user's events come from that user's sessions). bench/ingest.py measures
both cases.

Distinct users: an item counts a user once, at the user's first stored event with it (features.ItemState).
first_interactions finds those events with one index probe each; the user's row lock makes the answer
exact when two batches of the same user and item race (tests/reliability/test_bought_popularity.py).
"""

from collections import defaultdict
from datetime import datetime, timezone
from typing import Iterable

from django.db import connection, transaction
from django.db.models import Min, Q

from recommendations import features
from recommendations.models import (
    USER_STATE_FIELDS,
    EndUser,
    Interaction,
    Item,
    ItemFeatures,
    UserFeatures,
    utc_datetime,
    utc_seconds,
)

_ITEM_TABLE = ItemFeatures._meta.db_table


def item_state_from_row(row: ItemFeatures) -> features.ItemState:
    return features.ItemState(
        event_count=row.event_count,
        positive_count=row.positive_count,
        rating_count=row.rating_count,
        rating_sum=row.rating_sum,
        first_event_at=row.first_event_at and utc_seconds(row.first_event_at),
        last_event_at=row.last_event_at and utc_seconds(row.last_event_at),
        log_pop_7d=row.log_pop_7d,
        log_pop_30d=row.log_pop_30d,
        user_count=row.user_count,
        log_users_7d=row.log_users_7d,
    )




def user_features_lock(*, user_ids: Iterable[int]) -> dict[int, UserFeatures]:
    """The feature rows of these users, created when missing, locked in id order until the transaction ends.

    Ingestion takes these locks before it stores the events, so that a user's concurrent batches store and
    fold one after the other: the later one sees the earlier one's events in first_interactions."""
    ids = sorted(set(user_ids))
    rows = _user_rows_locked(ids)
    missing = [uid for uid in ids if uid not in rows]
    if missing:  # first events of these users
        UserFeatures.objects.bulk_create([UserFeatures(user_id=uid) for uid in missing], ignore_conflicts=True)
        rows.update(_user_rows_locked(missing))
    return rows


def online_features_update(*, events: list[features.Event], arrivals: list[features.Event],
                           item_categories: dict[int, list[str]], user_rows: dict[int, UserFeatures]) -> None:
    """Fold `events` (already written, in the caller's transaction) into the online feature rows.
    `arrivals`: those that are their user's first with the item (first_interactions); `user_rows`: the
    rows user_features_lock locked, one per user of `events`."""
    _users_update(events, item_categories, user_rows)
    _items_update(events, arrivals)


def _users_update(events: list[features.Event], item_categories: dict[int, list[str]],
                  locked: dict[int, UserFeatures]) -> None:
    rows = {event.user_id: locked[event.user_id] for event in events}  # users with only duplicates are left alone
    states = {uid: row.state() for uid, row in rows.items()}
    for event in events:
        features.user_apply(states[event.user_id], event, item_categories.get(event.item_id, ()))
    for uid, row in rows.items():
        row.state_set(states[uid])
    _user_rows_write(list(rows.values()))


_INTERACTION_TABLE = Interaction._meta.db_table
_FIRST_SQL = (
    f"SELECT f.user_id, f.item_id, f.event_type, f.value, f.timestamp FROM {_INTERACTION_TABLE} f "
    f"WHERE f.id IN ({{keys}}) AND NOT EXISTS (SELECT 1 FROM {_INTERACTION_TABLE} o "
    "WHERE o.user_id = f.user_id AND o.item_id = f.item_id AND o.id < f.id)"
)


def first_interactions(*, event_pks: list[int]) -> list[features.Event]:
    """Those of these stored events that are the first (lowest key) of their user with their item.

    Exact under concurrency when the users' rows were locked (user_features_lock) before the events were
    stored: then every other event of these users is committed, and visible here (read committed: each
    statement sees what was committed before it), or waits for this transaction. (The MovieLens import writes
    events without these locks and then rebuilds the features of what it touched.) One probe of the
    (user, item) index per event."""
    if not event_pks:
        return []
    with connection.cursor() as cursor:
        cursor.execute(_FIRST_SQL.format(keys=", ".join(["%s"] * len(event_pks))), event_pks)
        rows = cursor.fetchall()
    return [features.Event(user_id, item_id, event_type, value, utc_seconds(timestamp))
            for user_id, item_id, event_type, value, timestamp in rows]


# The feature rows of one request are read and written in raw SQL: compiling the ORM's queries cost more
# CPU than the statements themselves (~1 ms per single-event request); bulk_update's CASE WHEN per field
# cost more again.
_USER_COLUMNS = UserFeatures._meta.concrete_fields
_USER_TABLE = UserFeatures._meta.db_table


def _user_rows_locked(user_ids: list[int]) -> dict[int, UserFeatures]:
    """The feature rows of `user_ids` that exist, locked in id order, decoded as the ORM decodes them."""
    db = transaction.get_connection()  # resolved once: each attribute of django.db.connection is a lookup
    lock = " FOR UPDATE" if db.features.has_select_for_update else ""
    columns = ", ".join(field.column for field in _USER_COLUMNS)
    placeholders = ", ".join(["%s"] * len(user_ids))
    converters = [
        (index, convert, field.cached_col)
        for index, field in enumerate(_USER_COLUMNS)
        for convert in [*db.ops.get_db_converters(field.cached_col), *field.get_db_converters(db)]
    ]
    with db.cursor() as cursor:
        cursor.execute(
            f"SELECT {columns} FROM {_USER_TABLE} WHERE user_id IN ({placeholders}) ORDER BY user_id{lock}", user_ids
        )
        fetched = cursor.fetchall()
    rows = {}
    for values in map(list, fetched):
        for index, convert, column in converters:
            values[index] = convert(values[index], column, db)
        row = UserFeatures.from_db(db.alias, None, values)
        rows[row.user_id] = row
    return rows


def _user_rows_write(rows: list[UserFeatures]) -> None:
    """An upsert over rows locked by _user_rows_locked, so it never overwrites another transaction's fold."""
    db = transaction.get_connection()
    now = datetime.now(timezone.utc)
    params: list = []
    for row in rows:
        row.updated_at = now
        params += [field.get_db_prep_save(getattr(row, field.attname), db) for field in _USER_COLUMNS]
    columns = [field.column for field in _USER_COLUMNS]
    values = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(rows))
    updates = ", ".join(f"{column} = excluded.{column}" for column in columns if column != "user_id")
    with db.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_USER_TABLE} ({', '.join(columns)}) VALUES {values} ON CONFLICT (user_id) DO UPDATE SET {updates}",
            params,
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
            row.state_set(user_states[row.user_id])
        item_rows = [ItemFeatures(item_id=i) for i in items]
        for row in item_rows:
            _item_state_to_row(item_states[row.item_id], row)
        # An upsert over locked rows: the same effect as bulk_update, at a fraction of its cost.
        UserFeatures.objects.bulk_create(user_rows, update_conflicts=True, unique_fields=["user"],
                                         update_fields=list(USER_STATE_FIELDS), batch_size=1000)
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
        setattr(row, name, utc_datetime(value) if name.endswith("_at") else value)
