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
first_interactions finds those events by recording the batch's pairs in UserItemFirstSeen (one insert that
skips recorded pairs): exact when two batches of the same user and item race, since the unique key makes the
second wait for the first (tests/reliability/test_bought_popularity.py), and still exact once retention has
dropped a pair's old events (the table keeps every pair).
"""

from collections import defaultdict

from django.db import transaction
from django.db.models import Min, Q

from recommendations import features, sql
from recommendations.models import (
    USER_STATE_FIELDS,
    EndUser,
    Interaction,
    Item,
    ItemFeatures,
    UserFeatures,
    UserItemFirstSeen,
    utc_datetime,
    utc_seconds,
)


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


def online_features_update(
    *, events: list[features.Event], arrivals: list[features.Event], item_categories: dict[int, list[str]]
) -> None:
    """Fold `events` (already written, in the caller's transaction) into the online feature rows.
    `arrivals`: those that are their user's first with the item (first_interactions)."""
    _users_update(events, item_categories)
    _items_update(events, arrivals)


def _users_update(events: list[features.Event], item_categories: dict[int, list[str]]) -> None:
    """Fold the events into their users' rows: the batch's deltas merged into the stored rows on PostgreSQL (no row
    is read), else the rows read, folded and written back (other backends write one transaction at a time)."""
    merge = transaction.get_connection().vendor == "postgresql"
    user_ids = sorted({event.user_id for event in events})
    stored = {} if merge else sql.user_rows_fetch(user_ids=user_ids)
    rows = {uid: stored.get(uid) or UserFeatures(user_id=uid) for uid in user_ids}
    states = {uid: row.state() for uid, row in rows.items()}
    for event in events:
        features.user_apply(states[event.user_id], event, item_categories.get(event.item_id, ()))
    for uid, row in rows.items():
        row.state_set(states[uid])
    (sql.user_deltas_upsert if merge else sql.user_rows_write)(rows=[rows[uid] for uid in user_ids])


def first_interactions(*, events: list[features.Event]) -> list[features.Event]:
    """Those of these events (just stored, in the caller's transaction) that are the first of their user with their
    item: the pair's first event in the batch, when the batch is the first to record the pair in UserItemFirstSeen.
    That table outlives the events retention drops, and its unique key makes the answer exact when two batches of
    the same pair race: the second waits for the first to commit and finds the pair recorded."""
    first_in_batch: dict[tuple[int, int], features.Event] = {}
    for event in events:
        first_in_batch.setdefault((event.user_id, event.item_id), event)
    new_pairs = sql.user_item_first_seen_insert(
        first_seen={pair: utc_datetime(event.ts) for pair, event in first_in_batch.items()}
    )
    return [event for pair, event in first_in_batch.items() if pair in new_pairs]


def _items_update(events: list[features.Event], arrivals: list[features.Event]) -> None:
    by_item: dict[int, list[features.Event]] = defaultdict(list)
    for event in events:
        by_item[event.item_id].append(event)
    arrivals_by_item: dict[int, list[features.Event]] = defaultdict(list)
    for event in arrivals:
        arrivals_by_item[event.item_id].append(event)
    deltas = [(item, features.item_delta(by_item[item], arrivals_by_item[item])) for item in sorted(by_item)]
    sql.item_deltas_upsert(deltas=deltas)


def online_features_rebuild(*, user_ids: list[int] | None = None, item_ids: list[int] | None = None) -> dict:
    """Recompute online feature rows from the event log with the shared definitions.

    For bulk imports and repairs. Rows are locked before the events are read, so an ingest racing with
    the rebuild either committed before it (and is in the replay) or waits and folds its events on top.
    Returns the number of users and items rebuilt."""
    with transaction.atomic():
        users = sorted(user_ids if user_ids is not None else EndUser.objects.values_list("pk", flat=True))
        items = sorted(item_ids if item_ids is not None else Item.objects.values_list("pk", flat=True))
        UserFeatures.objects.bulk_create(
            [UserFeatures(user_id=u) for u in users], ignore_conflicts=True, batch_size=5000
        )
        ItemFeatures.objects.bulk_create(
            [ItemFeatures(item_id=i) for i in items], ignore_conflicts=True, batch_size=5000
        )
        _lock_rows(UserFeatures, "user_id", users, whole_table=user_ids is None)
        _lock_rows(ItemFeatures, "item_id", items, whole_table=item_ids is None)
        user_states = {u: features.UserState() for u in users}
        item_states = {i: features.ItemState() for i in items}
        categories = dict(Item.objects.values_list("pk", "categories"))
        events = Interaction.objects.all()
        if len(users) + len(items) <= _IN_LIST_LIMIT and (user_ids is not None or item_ids is not None):
            events = events.filter(Q(user_id__in=users) | Q(item_id__in=items))
        # Each (user, item) pair's first (lowest key) event: the one that counts its user (features.ItemState).
        first = set(
            events.order_by().values("user_id", "item_id").annotate(first=Min("pk")).values_list("first", flat=True)
        )
        pairs_first_seen: list[UserItemFirstSeen] = []
        events = events.order_by("timestamp", "pk").values_list(
            "pk", "user_id", "item_id", "event_type", "value", "timestamp"
        )
        for pk, user_id, item_id, event_type, value, timestamp in events.iterator(chunk_size=20000):
            event = features.Event(user_id, item_id, event_type, value, timestamp.timestamp())
            if user_id in user_states:
                features.user_apply(user_states[user_id], event, categories.get(item_id) or ())
            if item_id in item_states:
                features.item_apply(item_states[item_id], event, first_of_user=pk in first)
            if pk in first:
                pairs_first_seen.append(UserItemFirstSeen(user_id=user_id, item_id=item_id, first_seen=timestamp))
                if len(pairs_first_seen) == _FIRST_SEEN_CHUNK:
                    _first_seen_record(pairs_first_seen)
        user_rows = [UserFeatures(user_id=u) for u in users]
        for row in user_rows:
            row.state_set(user_states[row.user_id])
        item_rows = [ItemFeatures(item_id=i) for i in items]
        for row in item_rows:
            _item_state_to_row(item_states[row.item_id], row)
        # An upsert over locked rows: the same effect as bulk_update, at a fraction of its cost.
        UserFeatures.objects.bulk_create(
            user_rows,
            update_conflicts=True,
            unique_fields=["user"],
            update_fields=list(USER_STATE_FIELDS),
            batch_size=1000,
        )
        ItemFeatures.objects.bulk_create(
            item_rows, update_conflicts=True, unique_fields=["item"], update_fields=_ITEM_FIELDS, batch_size=1000
        )
        _first_seen_record(pairs_first_seen)
    return {"users": len(user_rows), "items": len(item_rows)}


def _first_seen_record(pairs: list[UserItemFirstSeen]) -> None:
    """Record these pairs unless recorded (events written in bulk, by an import, have not recorded theirs; pairs
    recorded before keep their first time), and empty the list: the rebuild holds one chunk at a time."""
    UserItemFirstSeen.objects.bulk_create(pairs, ignore_conflicts=True)
    pairs.clear()


_FIRST_SEEN_CHUNK = 5000
_IN_LIST_LIMIT = 5000  # above it, read the whole log rather than send a huge IN list (SQLite caps parameters)


def _lock_rows(model, key: str, ids: list[int], *, whole_table: bool) -> None:
    """SELECT ... FOR UPDATE the rows of `ids`, in key order, in chunks small enough for any backend."""
    if whole_table:
        list(model.objects.select_for_update().order_by(key).values_list(key, flat=True))
        return
    for start in range(0, len(ids), _IN_LIST_LIMIT):
        chunk = ids[start : start + _IN_LIST_LIMIT]
        list(
            model.objects.select_for_update().filter(**{f"{key}__in": chunk}).order_by(key).values_list(key, flat=True)
        )


_ITEM_FIELDS = features.ITEM_STATE_COLUMNS  # ItemFeatures has one column per ItemState field


def _item_state_to_row(state: features.ItemState, row: ItemFeatures) -> None:
    for name in _ITEM_FIELDS:
        value = getattr(state, name)
        setattr(row, name, utc_datetime(value) if name.endswith("_at") else value)
