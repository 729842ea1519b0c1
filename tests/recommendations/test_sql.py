"""Each function of recommendations/sql.py on the database of the run, and (from a PostgreSQL run) the same
file again in a pytest of its own on SQLite: the statements must mean the same on both backends."""

import json
import os
import random
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, connections, transaction

from recommendations import features, sql
from recommendations.models import (
    EndUser,
    EventReceipt,
    Impression,
    Interaction,
    Item,
    ItemFeatures,
    UserFeatures,
    UserItemFirstSeen,
)
from recommendations.services.events import EventInput
from recommendations.services.impressions import ImpressionRow
from recommendations.services.online_features import item_state_from_row

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 3, 1, tzinfo=UTC)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_users_are_inserted_once_and_looked_up_by_external_id():
    first = sql.users_insert(external_ids=["a", "b"])
    assert sorted(first) == ["a", "b"] and sql.users_insert(external_ids=["a", "c"]).keys() == {"c"}
    assert sql.user_lookup(external_ids={"a", "c", "nobody"}) == {
        "a": first["a"],
        "c": EndUser.objects.get(external_id="c").pk,
    }


def test_items_are_looked_up_by_external_id():
    item = Item.objects.create(external_id="i1", categories=["drama", "war"])
    assert sql.item_lookup(external_ids={"i1", "i2", "nope"}) == {"i1": item.pk}
    other = Item.objects.create(external_id="i2")
    assert sql.item_lookup(external_ids={"i2", "i1"}) == {"i1": item.pk, "i2": other.pk}


def _events(users: dict, items: dict, *event_ids):
    events = [
        EventInput(
            user_id="u",
            item_id="i1",
            event_type="rating",
            timestamp=T0 + timedelta(minutes=n),
            value=4.0,
            event_id=event_id,
            context={"n": n},
        )
        for n, event_id in enumerate(event_ids)
    ]
    return sql.interactions_insert(events=events, users=users, items=items)


def test_an_event_id_already_stored_or_repeated_in_the_batch_is_inserted_once():
    users, items = (
        {"u": EndUser.objects.create(external_id="u").pk},
        {"i1": Item.objects.create(external_id="i1").pk},
    )
    one, two = uuid.uuid4(), uuid.uuid4()
    fresh, rows = _events(users, items, one, one, None)
    assert [event.event_id for event in fresh] == [one, None] and Interaction.objects.count() == 2
    fresh, rows = _events(users, items, one, two)
    assert [event.event_id for event in fresh] == [two] and Interaction.objects.count() == 3
    stored = Interaction.objects.get(event_id=two)
    assert rows == [(stored.pk, users["u"], items["i1"])]
    assert (stored.timestamp, stored.context, stored.value) == (T0 + timedelta(minutes=1), {"n": 1}, 4.0)


def test_event_receipts_are_new_once_whatever_the_order():
    one, two, three = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert sql.event_receipts_insert(event_ids=[two, one, two], received_at=T0) == {one, two}
    assert sql.event_receipts_insert(event_ids=[three, one], received_at=T0) == {three}
    assert sql.event_receipts_insert(event_ids=[], received_at=T0) == set()
    assert EventReceipt.objects.get(event_id=three).received_at == T0


def test_imported_rows_are_stored_once_in_the_chunks_order_and_only_when_their_ids_are_new():
    users, items = sql.users_insert(external_ids=["u", "v"]), {"i1": Item.objects.create(external_id="i1").pk}
    ids = [uuid.UUID(int=n) for n in (7, 3, 5)]  # the chunk's order is not the ids' order
    rows = [
        (ids[0], users["u"], items["i1"], "rating", 4.5, T0),
        (ids[1], users["v"], items["i1"], "rating", None, T0 + timedelta(seconds=1)),
        (ids[2], users["u"], items["i1"], "view", 1.0, T0 + timedelta(days=40)),
    ]
    received = T0 + timedelta(days=50)
    sql.event_receipts_insert(event_ids=[ids[2]], received_at=received)  # received before: skipped
    assert sql.interactions_import(rows=rows, received_at=received) == 2
    stored = list(
        Interaction.objects.order_by("pk").values_list("event_id", "user_id", "event_type", "value", "timestamp")
    )
    assert stored == [(ids[0], users["u"], "rating", 4.5, T0), (ids[1], users["v"], "rating", None, rows[1][5])]
    assert set(Interaction.objects.values_list("received_at", flat=True)) == {received}
    assert sql.interactions_import(rows=rows, received_at=received) == 0  # a second import of the same chunk
    assert Interaction.objects.count() == 2 and EventReceipt.objects.count() == 3
    assert sql.interactions_import(rows=[], received_at=received) == 0


def test_a_user_item_pair_is_first_seen_once_at_the_event_given():
    user, item = EndUser.objects.create(external_id="u"), Item.objects.create(external_id="i1")
    other = Item.objects.create(external_id="i2")
    first, second, third = (
        Interaction.objects.create(user=user, item=it, event_type="view", timestamp=T0 + timedelta(days=40 * n))
        for n, it in enumerate([item, item, other])
    )
    assert sql.user_item_first_seen_insert(event_pks=[first.pk]) == {first.pk}
    assert sql.user_item_first_seen_insert(event_pks=[third.pk, second.pk]) == {third.pk}
    assert sql.user_item_first_seen_insert(event_pks=[]) == set()
    recorded = UserItemFirstSeen.objects.get(user=user, item=item)
    assert (recorded.first_event, recorded.first_seen) == (first.pk, T0)


def test_the_backfill_records_unrecorded_pairs_at_their_lowest_key_and_keeps_recorded_ones():
    user, item = EndUser.objects.create(external_id="u"), Item.objects.create(external_id="i1")
    other, elsewhere = Item.objects.create(external_id="i2"), EndUser.objects.create(external_id="v")
    first, second, third, fourth = (
        Interaction.objects.create(user=u, item=it, event_type="view", timestamp=T0 + timedelta(hours=n))
        for n, (u, it) in enumerate([(user, item), (user, item), (user, other), (elsewhere, other)])
    )
    UserItemFirstSeen.objects.create(user=user, item=item, first_event=second.pk, first_seen=T0)
    assert sql.user_item_first_seen_backfill(user_ids=[user.pk], item_ids=[]) == 1  # (user, other) only
    assert sql.user_item_first_seen_backfill() == 1  # (elsewhere, other)
    assert sorted(UserItemFirstSeen.objects.values_list("first_event", flat=True)) == sorted(
        [second.pk, third.pk, fourth.pk]
    )
    assert first.pk not in set(UserItemFirstSeen.objects.values_list("first_event", flat=True))


def test_the_rows_to_fold_come_in_key_order_and_only_the_recorded_first_event_of_a_user_with_an_item_is_first():
    user, item = EndUser.objects.create(external_id="u"), Item.objects.create(external_id="i1")
    other = Item.objects.create(external_id="i2")
    first, second, third = (
        Interaction.objects.create(user=user, item=it, event_type="view", timestamp=T0 + timedelta(hours=n))
        for n, it in enumerate([item, item, other])
    )
    sql.user_item_first_seen_insert(event_pks=[first.pk, third.pk])
    rows = sql.fold_event_rows(event_pks=[third.pk, second.pk, first.pk])
    assert [(row[1], row[5]) for row in rows] == [(item.pk, True), (item.pk, False), (other.pk, True)]
    assert rows[0][:4] == (user.pk, item.pk, "view", None)
    assert [row[5] for row in sql.fold_event_rows(event_pks=[second.pk])] == [False]


@pytest.mark.skipif(connection.vendor != "postgresql", reason="JIT compilation is PostgreSQL's")
def test_the_service_s_statements_are_never_jit_compiled_whatever_the_planner_s_cost_guess():
    # The fold's read-back, planned against stale statistics, was guessed at ~2M and compiled with LLVM: 0.4-2.2 s of
    # PostgreSQL's CPU for a statement that runs in 5-15 ms. A threshold of 0 makes every plan a candidate.
    statement = sql._FOLD_EVENTS_SQL.format(keys=sql._in_list(connection, [1, 2]))
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL jit_above_cost = 0")
        cursor.execute(f"EXPLAIN (FORMAT JSON) {statement}", sql._in_params(connection, [1, 2]))
        (plan,) = cursor.fetchone()[0]
    assert "JIT" not in plan


def test_item_categories_are_read_by_key():
    drama, plain = Item.objects.create(external_id="i1", categories=["drama"]), Item.objects.create(external_id="i2")
    assert sql.item_categories(item_pks=[drama.pk, plain.pk, 999_999]) == {drama.pk: ["drama"], plain.pk: []}


def test_waiting_batches_are_taken_oldest_first_and_deleted_once_folded():
    assert sql.pending_folds_count() == 0 and sql.pending_folds_take(limit=5) == []
    sql.pending_fold_insert(event_pks=[3, 1, 2])
    sql.pending_fold_insert(event_pks=[7])
    assert sql.pending_folds_count() == 2
    taken = sql.pending_folds_take(limit=1)
    assert [pks for _, pks in taken] == [[3, 1, 2]]
    sql.pending_folds_delete(ids=[pk for pk, _ in taken])
    assert [pks for _, pks in sql.pending_folds_take(limit=5)] == [[7]]
    with transaction.atomic():
        sql.pending_folds_lock()  # the rebuild's lock: a plain read passes it
        assert sql.pending_folds_count() == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite writes one transaction at a time: no lock")
def test_the_folders_lock_is_refused_while_another_transaction_holds_it_and_free_after_its_commit():
    other = connections.create_connection("default")
    try:
        with transaction.atomic():
            assert sql.fold_lock_try() and sql.fold_lock_try()  # taken again by its holder
            sql.fold_lock_wait()  # its holder does not wait for itself
            with other.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", sql._FOLD_LOCK_KEYS)
                assert cursor.fetchone() == (False,)
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", sql._FOLD_LOCK_KEYS)
            assert cursor.fetchone() == (True,)
    finally:
        other.close()


def test_user_feature_rows_written_are_read_back_and_equal():
    user = EndUser.objects.create(external_id="u")
    state = features.UserState(
        event_count=2,
        counts_by_type={"view": 2},
        first_seen=T0.timestamp(),
        last_seen=T0.timestamp() + 60,
        recent_items=[[1, T0.timestamp()]],
    )
    row = UserFeatures(user=user)
    row.state_set(state)
    sql.user_rows_write(rows=[row])
    fetched = sql.user_rows_fetch(user_ids=[user.pk, 999_999])
    assert list(fetched) == [user.pk]
    assert fetched[user.pk].state() == state == UserFeatures.objects.get(pk=user.pk).state()
    row.state_set(features.UserState(event_count=1))
    sql.user_rows_write(rows=[row])  # replaces the stored row
    assert sql.user_rows_fetch(user_ids=[user.pk])[user.pk].state() == features.UserState(event_count=1)


def _delta_row(user: EndUser, events: list[features.Event]) -> UserFeatures:
    state = features.UserState()
    for event in events:
        features.user_apply(state, event, [f"c{event.item_id % 3}"])
    row = UserFeatures(user=user)
    row.state_set(state)
    return row


@pytest.mark.skipif(connection.vendor != "postgresql", reason="user_deltas_upsert is PostgreSQL's (jsonb)")
def test_user_deltas_merged_in_any_order_equal_one_fold_of_all_the_events():
    """Two batches, the later one holding older events too: merging their deltas gives the row that folding every
    event into one state gives (counts, sums, extremes, per-key counts and times, the newest recent items)."""
    user = EndUser.objects.create(external_id="u")
    minutes = list(range(features.RECENT_ITEMS_KEPT + 20))
    random.Random(3).shuffle(minutes)
    events = [
        features.Event(user.pk, m % 7, "rating" if m % 2 else "view", 4.0 if m % 2 else None, T0.timestamp() + 60 * m)
        for m in minutes
    ]
    half = len(events) // 2
    sql.user_deltas_upsert(deltas=[(user.pk, _delta_row(user, events[:half]).state())])
    sql.user_deltas_upsert(deltas=[(user.pk, _delta_row(user, events[half:]).state())])
    assert UserFeatures.objects.get(pk=user.pk).state() == _delta_row(user, events).state()


def _advisory_locks_held() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()")
        return cursor.fetchone()[0]


def test_user_item_pairs_take_one_advisory_lock_per_distinct_pair():
    """One advisory lock per distinct pair ((1, 2) is not (2, 1); ids beyond 32 bits still make a bigint key) on
    PostgreSQL; a no-op on SQLite, which writes one transaction at a time."""
    pairs = {(1, 2), (2, 1), (2**40, 3), (7, 2**33)}
    with transaction.atomic():
        sql.user_item_pairs_lock(pairs=pairs | {(1, 2)})
        sql.user_item_pairs_lock(pairs={(1, 2)})  # taken again in the same transaction: no new lock, no wait
        if connection.vendor == "postgresql":
            assert _advisory_locks_held() == len(pairs)


def test_item_deltas_add_up_keep_the_extremes_and_log_add_popularity():
    item = Item.objects.create(external_id="i1")
    early = features.Event(1, item.pk, "rating", 5.0, T0.timestamp())
    late = features.Event(2, item.pk, "view", None, T0.timestamp() + 3600)
    sql.item_deltas_upsert(deltas=[(item.pk, features.item_delta([late], [late]))])
    sql.item_deltas_upsert(deltas=[(item.pk, features.item_delta([early], [early]))])
    expected = features.item_merge(features.item_delta([late], [late]), features.item_delta([early], [early]))
    stored = item_state_from_row(ItemFeatures.objects.get(item=item))
    assert (stored.event_count, stored.rating_sum, stored.user_count) == (2, 5.0, 2)
    assert (stored.first_event_at, stored.last_event_at) == (early.ts, late.ts)
    assert stored.log_pop_7d == pytest.approx(expected.log_pop_7d)


def test_the_served_user_row_holds_the_seen_items_and_none_for_a_stranger():
    user, item = EndUser.objects.create(external_id="u"), Item.objects.create(external_id="i1", active=False)
    event = Interaction.objects.create(user=user, item=item, event_type="view", timestamp=T0)
    sql.user_item_first_seen_insert(event_pks=[event.pk])  # seen items are the user's recorded pairs
    row = sql.served_user_row(external_id="u")
    seen = row[1] if isinstance(row[1], list) else json.loads(row[1])  # an array on PostgreSQL, JSON text on SQLite
    assert row[0] == user.pk and seen == [item.pk] and sql.served_user_row(external_id="stranger") is None
    assert sql.inactive_items(pks=[item.pk, Item.objects.create(external_id="i2").pk]) == {item.pk}


def test_impressions_are_stored_as_the_orm_reads_them_and_a_repeated_list_is_skipped():
    user, shown = EndUser.objects.create(external_id="u"), uuid.uuid4()
    model = Impression.Strategy.MODEL
    served = ImpressionRow(shown, user.pk, T0, 3, 3, model, "champion", 7, None, [5, 9], [0.5, 0.25])
    shadow = ImpressionRow(uuid.uuid4(), user.pk, T0, 4, 4, "model", Impression.Arm.SHADOW, 7, shown, [9], [1.5])
    sql.impressions_insert(rows=[served, shadow])
    sql.impressions_insert(rows=[served._replace(items=[1])])  # the same recommendation_id again
    stored = {row.recommendation_id: row for row in Impression.objects.all()}
    assert set(stored) == {shown, shadow.recommendation_id}
    first, second = stored[shown], stored[shadow.recommendation_id]
    assert (first.user_id, first.served_at, first.model_version, first.routed_version) == (user.pk, T0, 3, 3)
    assert (first.strategy, first.arm, first.experiment_id, first.shadow_of) == ("model", "champion", 7, None)
    assert (first.items, first.scores) == ([5, 9], [0.5, 0.25])
    assert (second.arm, second.shadow_of, second.items, second.scores) == ("shadow", shown, [9], [1.5])
    assert ImpressionRow._fields == sql.IMPRESSION_COLUMNS


def test_a_flush_larger_than_one_statement_stores_every_list():
    user = EndUser.objects.create(external_id="u")
    row = ImpressionRow(uuid.uuid4(), user.pk, T0, None, None, "popular", "champion", None, None, [], [])
    sql.impressions_insert(rows=[row._replace(recommendation_id=uuid.uuid4()) for _ in range(1201)])
    assert Impression.objects.count() == 1201


def test_the_item_snapshot_columns_hold_every_item_in_key_order_with_its_features_or_none():
    assert [len(column) for column in sql.item_snapshot_columns()] == [0] * (4 + len(features.ITEM_STATE_COLUMNS))
    plain = Item.objects.create(external_id='b "quoted", with comma', categories=["drama", "war"])
    rated = Item.objects.create(external_id="a", active=False)
    late = T0 + timedelta(days=3, microseconds=250)
    delta = features.item_delta(
        [
            features.Event(1, rated.pk, "rating", 5.0, T0.timestamp()),
            features.Event(1, rated.pk, "view", None, late.timestamp()),
        ],
        [features.Event(1, rated.pk, "rating", 5.0, T0.timestamp())],
    )
    sql.item_deltas_upsert(deltas=[(rated.pk, delta)])
    pks, external_ids, active, categories, *state = sql.item_snapshot_columns()
    assert list(pks) == [plain.pk, rated.pk] and external_ids == ['b "quoted", with comma', "a"]
    assert list(active) == [True, False] and [json.loads(text) for text in categories] == [["drama", "war"], []]
    stored = item_state_from_row(ItemFeatures.objects.get(item=rated))
    for name, column in zip(features.ITEM_STATE_COLUMNS, state, strict=True):
        empty, value = column[0], column[1]
        assert empty is None or empty != empty, name  # no features row: None (SQLite) or NaN (PostgreSQL)
        expected = getattr(stored, name)
        assert (value is None or value != value) if expected is None else value == pytest.approx(expected, abs=1e-6), (
            name
        )
    assert state[features.ITEM_STATE_COLUMNS.index("last_event_at")][1] == pytest.approx(late.timestamp(), abs=1e-6)


def test_the_database_answers_a_ping_and_statistics_refresh_runs():
    sql.database_ping()
    sql.statistics_refresh(models=[Item, EndUser])


def test_the_same_tests_pass_on_sqlite(tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("this is the SQLite run")
    env = {name: value for name, value in os.environ.items() if name != "DATABASE_URL"}
    env["RECSITE_VAR_DIR"] = str(tmp_path)  # pytest-django's SQLite test database is in memory; nothing else is kept
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", __file__],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
