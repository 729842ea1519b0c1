"""The online feature store: folds stored events into UserFeatures / ItemFeatures rows with the definitions
of recommendations.features.

Who folds, and when (online_features_fold_enqueue, online_features_fold_pending): the ingest transaction stores
its events and a PendingFold row naming them, and commits; then, in transactions of their own, it folds what is
waiting while the folder's lock (sql.fold_lock_try) is free and something waits, for FOLD_BUDGET_SECONDS at most.
Feature rows are so written by one transaction at a time, the lock's holder, and nobody waits for it: a request
that finds the lock taken returns, and its batch is folded by the holder (it looks again after each commit), by
whoever takes the lock next, or by a web process's sweeper (FOLD_SWEEP_SECONDS, 1 s), which also folds what a
crash between the two commits left. The row is deleted in the transaction that folds its events: a batch is
folded once, never lost.

Freshness: a user's features include an acknowledged batch at once when no other batch was being folded (the
common case, and always on SQLite, which writes one transaction at a time), else within that other fold's time,
at most FOLD_SWEEP_SECONDS later. The user's events themselves (seen items) are read from the log, at once.

Contention: batches that share users or a hot item never wait for each other's feature rows, and the rows are
written once per fold for all the batches it holds. On PostgreSQL item and user rows are each updated with one
`INSERT ... ON CONFLICT DO UPDATE` that merges the fold's deltas (pre-aggregated per row in Python with the
shared definitions) into the stored row: sums add, first/last times take the min/max, per-type and per-category
counts add key by key, the recent items merge by time and keep the newest. (Other backends write one
transaction at a time: there the user rows are read, folded and written back.) bench/ingest.py measures the
hot-item and shared-users cases.

Distinct users: an item counts a user once, at the user's first stored event with it (features.ItemState).
UserItemFirstSeen records each pair's first event (its lowest key), written by the ingest transaction that
stores it (online_features_fold_enqueue: one insert that skips recorded pairs) and kept when retention drops old
events; sql.fold_event_rows reads it with one index probe per event. The transaction-scoped lock per (user, item)
pair taken before the events are stored (sql.user_item_pairs_lock) makes the record exact when two batches of the
same user and item race (tests/reliability/test_bought_popularity.py): the second's events get higher keys and
find the pair recorded. Events written in bulk (an import) are recorded by the rebuild that follows.
"""

import logging
import time
from collections import defaultdict

from django.db import DatabaseError, transaction
from django.db.models import Q

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

logger = logging.getLogger(__name__)

FOLD_BUDGET_SECONDS = 0.5  # of folding others' batches after an ingest's commit; the sweeper does the rest
FOLD_WAITING_BATCHES = 20  # waiting batches folded per transaction (20,000 events at most)
FOLD_BACKLOG_BATCHES = 4  # this many waiting (its own counted): an ingest waits for the folder (backpressure)


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


def online_features_fold_enqueue(*, event_rows: list[tuple[int, int, int]]) -> None:
    """In the ingest transaction, after its events are stored ((key, user, item) each): record the pairs seen for
    the first time at their lowest key here (UserItemFirstSeen), and leave the events for the fold (a PendingFold
    row), which runs after the commit, so that the transaction holds its (user, item) pair locks for no longer
    than its own writes take."""
    first_in_batch: dict[tuple[int, int], int] = {}
    for key, user_id, item_id in event_rows:
        pair = (user_id, item_id)
        first_in_batch[pair] = min(key, first_in_batch.get(pair, key))
    sql.user_item_first_seen_insert(event_pks=first_in_batch.values())
    sql.pending_fold_insert(event_pks=[key for key, _, _ in event_rows])


def online_features_fold_pending(*, budget_seconds: float = FOLD_BUDGET_SECONDS) -> int:
    """Fold the batches waiting, each round in a transaction of its own, until none waits, another transaction
    holds the folder's lock (it looks again after its commit), or `budget_seconds` are spent (the sweeper
    continues). Called after every ingest commit and by the sweeper. Backpressure: when FOLD_BACKLOG_BATCHES or
    more wait, the caller waits for the lock rather than leave, so that the folder's lag stays bounded when
    batches arrive faster than one fold at a time keeps up with. Returns the events folded."""
    deadline, folded = time.monotonic() + budget_seconds, 0
    while waiting := sql.pending_folds_count():
        with transaction.atomic():
            if not sql.fold_lock_try():
                if waiting < FOLD_BACKLOG_BATCHES:
                    break
                sql.fold_lock_wait()
            folded += _fold_with_waiting([])
        if time.monotonic() >= deadline:
            break
    return folded


def online_features_sweep() -> None:
    """The sweeper's tick (a web process's daemon thread): fold what waits; a failure waits for the next tick."""
    try:
        online_features_fold_pending()
    except DatabaseError:
        logger.warning("Folding the waiting event batches failed; the next sweep retries.", exc_info=True)


def _fold_with_waiting(event_pks: list[int]) -> int:
    """Fold `event_pks` and the oldest waiting batches (deleted in the same transaction), holding the lock."""
    waiting = sql.pending_folds_take(limit=FOLD_WAITING_BATCHES)
    keys = list(event_pks) + [pk for _, pks in waiting for pk in pks]
    if keys:
        online_features_fold(event_pks=keys)
    if waiting:
        sql.pending_folds_delete(ids=[pk for pk, _ in waiting])
    return len(keys)


def online_features_fold(*, event_pks: list[int]) -> None:
    """Fold these stored events into the online feature rows, in the caller's transaction (which holds the
    folder's lock: sql.fold_lock_try)."""
    rows = sql.fold_event_rows(event_pks=event_pks)
    item_categories = sql.item_categories(item_pks=sorted({row[1] for row in rows}))
    events, arrivals = [], []
    for user_id, item_id, event_type, value, timestamp, first in rows:
        event = features.Event(user_id, item_id, event_type, value, utc_seconds(timestamp))
        events.append(event)
        if first:
            arrivals.append(event)
    _users_update(events, item_categories)
    _items_update(events, arrivals)


def _users_update(events: list[features.Event], item_categories: dict[int, list[str]]) -> None:
    """Fold the events into their users' rows: on PostgreSQL each user's delta (its events folded into an empty
    state) merged into the stored row (no row is read), else the rows read, folded and written back (other backends
    write one transaction at a time)."""
    if transaction.get_connection().vendor == "postgresql":
        deltas: dict[int, features.UserState] = defaultdict(features.UserState)
        for event in events:
            features.user_apply(deltas[event.user_id], event, item_categories.get(event.item_id, ()))
        sql.user_deltas_upsert(deltas=sorted(deltas.items()))  # in key order, as every writer of the rows
        return
    user_ids = sorted({event.user_id for event in events})
    stored = sql.user_rows_fetch(user_ids=user_ids)
    rows = {uid: stored.get(uid) or UserFeatures(user_id=uid) for uid in user_ids}
    states = {uid: row.state() for uid, row in rows.items()}
    for event in events:
        features.user_apply(states[event.user_id], event, item_categories.get(event.item_id, ()))
    for uid, row in rows.items():
        row.state_set(states[uid])
    sql.user_rows_write(rows=[rows[uid] for uid in user_ids])


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

    For bulk imports and repairs. First the waiting batches are folded, with no batch left waiting or folded
    elsewhere until the rebuild commits (sql.pending_folds_lock), and the rows are locked before the events are
    read: an ingest racing with the rebuild either committed before it (its events are in the replay, folded or
    not) or waits and folds its events on top. A user counts for an item at the pair's first event as
    UserItemFirstSeen records it, as in the fold: the pairs of events written in bulk (an import) are recorded
    first, at their lowest key, in a transaction of its own (an ingest holding a pair then commits first rather
    than wait for the rebuild's locks). Returns the number of users and items rebuilt."""
    scoped = user_ids is not None or item_ids is not None
    if scoped and len(user_ids or []) + len(item_ids or []) > _IN_LIST_LIMIT:
        sql.user_item_first_seen_backfill()
    else:
        sql.user_item_first_seen_backfill(user_ids=user_ids, item_ids=item_ids)
    with transaction.atomic():
        sql.pending_folds_lock()
        while _fold_with_waiting([]):
            pass
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
        events, pairs = Interaction.objects.all(), UserItemFirstSeen.objects.all()
        if len(users) + len(items) <= _IN_LIST_LIMIT and scoped:
            events = events.filter(Q(user_id__in=users) | Q(item_id__in=items))
            pairs = pairs.filter(Q(user_id__in=users) | Q(item_id__in=items))
        # Each (user, item) pair's first (lowest key) event: the one that counts its user (features.ItemState).
        first = set(pairs.values_list("first_event", flat=True))
        events = events.order_by("timestamp", "pk").values_list(
            "pk", "user_id", "item_id", "event_type", "value", "timestamp"
        )
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
    return {"users": len(user_rows), "items": len(item_rows)}


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
