"""Online features must equal a replay of the event log through the shared definitions (no skew),
whatever the batching, ordering or concurrency of ingestion."""

import math
import random
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import OperationalError, connection, connections
from django.db.models import Min

from recommendations import features, sql
from recommendations.models import Interaction, Item, ItemFeatures, PendingFold, UserFeatures
from recommendations.services.events import EventInput, event_ingest
from recommendations.services.online_features import (
    FOLD_BACKLOG_BATCHES,
    item_state_from_row,
    online_features_fold_pending,
    online_features_rebuild,
    online_features_sweep,
)
from tests.support.processes import REPO, process_env

START = datetime(2023, 1, 1, tzinfo=UTC)


def random_events(n, seed=0, users=8, items=12):
    rng = random.Random(seed)
    types = ["view", "click", "like", "rating", "purchase", "dislike"]
    out = []
    for _ in range(n):
        event_type = rng.choice(types)
        out.append(
            EventInput(
                user_id=f"u{rng.randrange(users)}",
                item_id=f"i{rng.randrange(items)}",
                event_type=event_type,
                value=rng.choice([0.5, 2.0, 3.5, 4.0, 5.0]) if event_type == "rating" else None,
                timestamp=START + timedelta(seconds=rng.randrange(0, 90 * 86400)),
            )
        )
    return out


def catalog(items=12):
    genres = ["Action", "Comedy", "Drama", "Horror"]
    Item.objects.bulk_create(
        [
            Item(external_id=f"i{n}", categories=[genres[n % 4], genres[(n + 1) % 4]] if n % 5 else [])
            for n in range(items)
        ]
    )


def replayed_states():
    """The reference: every stored event, in time order, through the pure definitions."""
    users, items = {}, {}
    categories = dict(Item.objects.values_list("pk", "categories"))
    first = first_event_of_each_pair()
    for row in Interaction.objects.order_by("timestamp", "pk"):
        event = features.Event(row.user_id, row.item_id, row.event_type, row.value, row.timestamp.timestamp())
        features.user_apply(users.setdefault(row.user_id, features.UserState()), event, categories[row.item_id])
        features.item_apply(items.setdefault(row.item_id, features.ItemState()), event, first_of_user=row.pk in first)
    return users, items


def first_event_of_each_pair():
    """The key of each (user, item) pair's first stored event: the one that counts the user for the item."""
    pairs = Interaction.objects.values("user_id", "item_id").annotate(first=Min("pk"))
    return set(pairs.values_list("first", flat=True))


def assert_states_equal(actual, expected):
    for name, value in vars(expected).items():
        got = getattr(actual, name)
        if isinstance(value, float):
            assert math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-6), name
        elif name == "recent_items":
            assert sorted(map(tuple, got)) == sorted(map(tuple, value)), name
        else:
            assert got == value, name


def assert_online_equals_replay():
    users, items = replayed_states()
    assert UserFeatures.objects.count() == len(users)
    assert ItemFeatures.objects.count() == len(items)
    for row in UserFeatures.objects.all():
        assert_states_equal(row.state(), users[row.user_id])
    for row in ItemFeatures.objects.all():
        assert_states_equal(item_state_from_row(row), items[row.item_id])


@pytest.mark.django_db
def test_online_features_equal_a_replay_of_the_log_whatever_the_batching():
    catalog()
    events = random_events(300)
    position = 0
    for size in [1, 7, 50, 1, 100, 142]:
        event_ingest(events=events[position : position + size])
        position += size
    assert_online_equals_replay()


@pytest.mark.django_db
def test_a_rebuild_from_the_log_gives_the_same_features_as_live_ingestion():
    catalog()
    event_ingest(events=random_events(200, seed=3))
    live_users = {r.user_id: r.state() for r in UserFeatures.objects.all()}
    live_items = {r.item_id: item_state_from_row(r) for r in ItemFeatures.objects.all()}
    UserFeatures.objects.update(event_count=0, rating_sum=0.0, category_counts={})
    ItemFeatures.objects.update(event_count=999, log_pop_7d=None)
    assert online_features_rebuild() == {"users": len(live_users), "items": Item.objects.count()}
    for row in UserFeatures.objects.all():
        assert_states_equal(row.state(), live_users[row.user_id])
    for row in ItemFeatures.objects.filter(item_id__in=live_items):
        assert_states_equal(item_state_from_row(row), live_items[row.item_id])


@pytest.mark.django_db
def test_a_users_recent_items_stay_newest_first_and_capped_across_batches_out_of_time_order():
    catalog()
    rng = random.Random(5)
    minutes = list(range(features.RECENT_ITEMS_KEPT + 30))
    rng.shuffle(minutes)
    for start in range(0, len(minutes), 25):
        batch = minutes[start : start + 25]
        event_ingest(events=[EventInput("u1", f"i{m % 12}", "view", START + timedelta(minutes=m)) for m in batch])
    recent = UserFeatures.objects.get(user__external_id="u1").recent_items
    newest = sorted(minutes, reverse=True)[: features.RECENT_ITEMS_KEPT]
    assert [ts for _, ts in recent] == [(START + timedelta(minutes=m)).timestamp() for m in newest]
    assert_online_equals_replay()


@pytest.mark.django_db
def test_decayed_popularity_weighs_recent_events_more():
    catalog()
    now = START + timedelta(days=100)
    event_ingest(events=[EventInput("u1", "i1", "view", now - timedelta(days=1)) for _ in range(2)])
    event_ingest(events=[EventInput("u1", "i2", "view", now - timedelta(days=60)) for _ in range(4)])
    recent = features.item_features(
        item_state_from_row(ItemFeatures.objects.get(item__external_id="i1")), now.timestamp()
    )
    old = features.item_features(item_state_from_row(ItemFeatures.objects.get(item__external_id="i2")), now.timestamp())
    pop_7d = features.ITEM_FEATURES.index("item_pop_7d")
    assert recent[pop_7d] == pytest.approx(2 * 0.5 ** (1 / 7))
    assert old[pop_7d] == pytest.approx(4 * 0.5 ** (60 / 7))
    assert recent[0] == 2 and old[0] == 4


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrency is tested on PostgreSQL")
def test_concurrent_batches_on_one_hot_item_lose_no_update():
    catalog()
    errors = []

    def ingest(seed):
        try:
            for batch in range(5):
                events = [
                    EventInput(f"u{seed}-{n}", "i1", "rating", START + timedelta(minutes=batch * 50 + n), value=4.0)
                    for n in range(50)
                ]
                event_ingest(events=events)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=ingest, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    hot = ItemFeatures.objects.get(item__external_id="i1")
    assert (hot.event_count, hot.rating_count, hot.rating_sum) == (1500, 1500, 6000.0)
    assert_online_equals_replay()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrency is tested on PostgreSQL")
def test_concurrent_retries_of_the_same_events_write_them_once():
    import uuid

    catalog()
    batch = [
        EventInput(f"u{n}", f"i{n % 12}", "view", START + timedelta(minutes=n), event_id=uuid.uuid4())
        for n in range(200)
    ]
    results, errors = [], []

    def ingest():
        try:
            results.append(event_ingest(events=batch))
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=ingest) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(r.accepted for r in results) == 200
    assert sum(r.duplicates for r in results) == 600
    assert Interaction.objects.count() == 200
    assert_online_equals_replay()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrency is tested on PostgreSQL")
def test_concurrent_batches_on_shared_users_lose_and_double_no_update():
    """Every batch touches nearly every user and many (user, item) pairs of the others, as clients posting
    random users would: no deadlock reaches the caller, and the features equal a replay of what is stored."""
    catalog()
    errors = []

    def ingest(seed):
        try:
            for batch in range(6):
                event_ingest(events=random_events(150, seed=seed * 100 + batch, users=10, items=12))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=ingest, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert Interaction.objects.count() == 4 * 6 * 150
    assert sum(UserFeatures.objects.values_list("event_count", flat=True)) == 4 * 6 * 150
    assert sum(ItemFeatures.objects.values_list("event_count", flat=True)) == 4 * 6 * 150
    assert_online_equals_replay()


@pytest.mark.django_db
def test_events_decades_apart_fold_into_the_same_item_without_overflow():
    catalog()
    event_ingest(events=[EventInput("u1", "i1", "view", datetime(2018, 6, 1, tzinfo=UTC))])
    event_ingest(events=[EventInput("u2", "i1", "view", datetime(1996, 6, 1, tzinfo=UTC))])
    event_ingest(events=[EventInput("u3", "i1", "view", datetime(2040, 6, 1, tzinfo=UTC) - timedelta(days=365 * 20))])
    assert ItemFeatures.objects.get(item__external_id="i1").event_count == 3
    assert_online_equals_replay()


# --- The fold after the commit: one folder at a time, nobody waits, nothing lost -------------------------------


def _fold_keys_held_elsewhere():
    """A second connection holding the folder's lock in an open transaction (as a request folding right now)."""
    other = connections.create_connection("default")
    other.set_autocommit(False)
    with other.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", sql._FOLD_LOCK_KEYS)
    return other


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrency is tested on PostgreSQL")
def test_an_ingest_that_finds_the_folder_busy_returns_at_once_and_its_batch_is_folded_after():
    catalog()
    holder = _fold_keys_held_elsewhere()
    try:
        done = []
        thread = threading.Thread(
            target=lambda: (done.append(event_ingest(events=random_events(40))), connections.close_all())
        )
        thread.start()
        thread.join(timeout=20)
        assert done and done[0].accepted == 40, "the ingest waited for the folder's lock"
        assert Interaction.objects.count() == 40 and PendingFold.objects.count() == 1
        assert not UserFeatures.objects.exists()
    finally:
        holder.rollback()
        holder.close()
    assert online_features_fold_pending() == 40
    assert not PendingFold.objects.exists()
    assert_online_equals_replay()


@pytest.mark.django_db(transaction=True)
def test_a_fold_that_fails_after_the_commit_keeps_the_batch_waiting_and_the_sweeper_folds_it_once(monkeypatch):
    catalog()
    event_ingest(events=random_events(30, seed=1))

    def broken(**_):
        raise OperationalError("connection lost")

    with monkeypatch.context() as patch:
        patch.setattr(sql, "fold_event_rows", broken)
        assert event_ingest(events=random_events(30, seed=2)).accepted == 30  # acknowledged: its events committed
    assert Interaction.objects.count() == 60 and PendingFold.objects.count() == 1
    assert sum(UserFeatures.objects.values_list("event_count", flat=True)) == 30
    online_features_sweep()
    online_features_sweep()  # nothing left: folded once
    assert not PendingFold.objects.exists()
    assert sum(UserFeatures.objects.values_list("event_count", flat=True)) == 60
    assert_online_equals_replay()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the test database is shared with a process on PostgreSQL"
)
def test_a_process_killed_between_the_events_commit_and_the_fold_loses_no_fold(tmp_path):
    """A real crash: a process stores a batch and dies (os._exit) where the fold would begin; the events are there,
    their batch waits, and the next process's sweep folds it."""
    catalog()
    script = (
        "import os, django; django.setup()\n"
        "from datetime import datetime, UTC\n"
        "from recommendations.services import events\n"
        "events.online_features_fold_pending = lambda **_: os._exit(3)\n"
        "events.event_ingest(events=[events.EventInput(f'u{n % 5}', f'i{n % 12}', 'view',"
        " datetime(2023, 1, 1, n, tzinfo=UTC)) for n in range(20)])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=process_env(), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert Interaction.objects.count() == 20 and PendingFold.objects.count() == 1
    assert not UserFeatures.objects.exists()
    online_features_sweep()
    assert not PendingFold.objects.exists()
    assert_online_equals_replay()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrency is tested on PostgreSQL")
def test_a_rebuild_folds_the_waiting_batches_first_and_none_is_counted_twice():
    catalog()
    event_ingest(events=random_events(50, seed=5))
    holder = _fold_keys_held_elsewhere()
    try:
        event_ingest(events=random_events(50, seed=6))  # left waiting: the lock is held elsewhere
    finally:
        holder.rollback()
        holder.close()
    assert PendingFold.objects.count() == 1
    users = sorted(set(Interaction.objects.values_list("user_id", flat=True)))[:3]
    online_features_rebuild(user_ids=users, item_ids=[])
    assert not PendingFold.objects.exists()
    assert online_features_fold_pending() == 0
    assert sum(UserFeatures.objects.values_list("event_count", flat=True)) == 100
    assert_online_equals_replay()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrency is tested on PostgreSQL")
def test_a_batch_is_acknowledged_while_another_batch_of_the_same_users_is_being_folded(monkeypatch):
    """The first batch stops in the middle of its fold (its users' rows written, its items' not yet); a second
    batch of the same users must not wait for it (the old code did: it locked the users' rows until the first
    committed). Both end up folded, once."""
    catalog()
    upsert, folding, release = sql.item_deltas_upsert, threading.Event(), threading.Event()

    def paused(**kwargs):
        if threading.current_thread().name == "first":
            folding.set()
            release.wait(timeout=60)
        return upsert(**kwargs)

    monkeypatch.setattr(sql, "item_deltas_upsert", paused)
    results, errors = {}, []

    def ingest(name, seed):
        try:
            results[name] = event_ingest(events=random_events(60, seed=seed, users=4))
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    first = threading.Thread(target=ingest, args=("first", 1), name="first")
    first.start()
    assert folding.wait(timeout=30)
    second = threading.Thread(target=ingest, args=("second", 2), name="second")
    second.start()
    second.join(timeout=15)
    acknowledged_meanwhile = "second" in results
    release.set()
    first.join(timeout=60)
    second.join(timeout=60)
    assert errors == []
    assert acknowledged_meanwhile, "the second batch waited for the first one's fold"
    online_features_fold_pending()
    assert sum(UserFeatures.objects.values_list("event_count", flat=True)) == 120
    assert_online_equals_replay()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrency is tested on PostgreSQL")
def test_once_enough_batches_wait_an_ingest_waits_for_the_folder_and_folds_them_all():
    """Backpressure: while the folder is busy, batches are left waiting until FOLD_BACKLOG_BATCHES wait; the
    ingest that makes them so many waits for the folder, then folds everything."""
    catalog()
    holder = _fold_keys_held_elsewhere()
    try:
        for seed in range(FOLD_BACKLOG_BATCHES - 1):
            event_ingest(events=random_events(10, seed=seed))  # each returns at once
        assert PendingFold.objects.count() == FOLD_BACKLOG_BATCHES - 1
        thread = threading.Thread(
            target=lambda: (event_ingest(events=random_events(10, seed=99)), connections.close_all())
        )
        thread.start()
        thread.join(timeout=3)
        assert thread.is_alive(), "the ingest left a batch waiting beyond the backlog instead of waiting"
    finally:
        holder.rollback()
        holder.close()
    thread.join(timeout=30)
    assert not thread.is_alive() and not PendingFold.objects.exists()
    assert sum(UserFeatures.objects.values_list("event_count", flat=True)) == 10 * FOLD_BACKLOG_BATCHES
    assert_online_equals_replay()
