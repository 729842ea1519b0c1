"""The events table partitioned by month (PostgreSQL), retention of events and event ids, and idempotency by
event id across partitions."""

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection, connections

from recommendations import sql
from recommendations.models import (
    EndUser,
    EventReceipt,
    Interaction,
    Item,
    ItemFeatures,
    UserFeatures,
    UserItemFirstSeen,
)
from recommendations.services.events import EventInput, event_ingest
from recommendations.services.online_features import online_features_rebuild
from recommendations.services.partitions import event_partitions_maintain, partition_name

pytestmark = pytest.mark.django_db
postgres_only = pytest.mark.skipif(connection.vendor != "postgresql", reason="partitions exist on PostgreSQL only")

MARCH = datetime(2031, 3, 1, tzinfo=UTC)


def at(month: int, day: int = 1, hour: int = 12) -> datetime:
    return datetime(2031, month, day, hour, tzinfo=UTC)


def view(user: str, item: str, moment: datetime, event_id: uuid.UUID | None = None) -> EventInput:
    return EventInput(user, item, "view", moment, event_id=event_id)


def partition_of(event_id: uuid.UUID) -> str:
    """The partition that holds the event (the name of the table its row lives in)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT tableoid::regclass::text FROM {Interaction._meta.db_table} WHERE event_id = %s", [event_id]
        )
        return cursor.fetchone()[0]


@postgres_only
def test_the_migrated_table_has_a_default_partition_and_this_month_and_three_ahead():
    partitions = sql.event_partitions()
    assert partitions[sql.DEFAULT_PARTITION] is None
    months = sorted(bounds for bounds in partitions.values() if bounds)
    assert len(months) >= 4
    now = datetime.now(tz=UTC)
    assert any(start <= now < end for start, end in months)


@postgres_only
def test_maintenance_creates_the_months_ahead_and_an_event_lands_in_its_month():
    report = event_partitions_maintain(now=at(3, 15), retention_days=0)
    assert {partition_name(MARCH.replace(month=m)) for m in (3, 4, 5, 6)} <= set(report.created)
    assert event_partitions_maintain(now=at(3, 15), retention_days=0).created == []  # idempotent
    in_april, in_1995 = uuid.uuid4(), uuid.uuid4()
    event_ingest(
        events=[view("u", "i", at(4, 30, 23), in_april), view("u", "i", at(4, 30) - timedelta(days=13_000), in_1995)]
    )
    assert partition_of(in_april) == partition_name(MARCH.replace(month=4))
    assert partition_of(in_1995) == sql.DEFAULT_PARTITION


@postgres_only
def test_creating_a_month_moves_its_events_out_of_the_default_partition():
    early, late = uuid.uuid4(), uuid.uuid4()
    event_ingest(
        events=[
            view("u", "i", datetime(2040, 1, 1, tzinfo=UTC), early),
            view("u", "i", datetime(2040, 2, 1, tzinfo=UTC), late),
        ]
    )
    assert partition_of(early) == partition_of(late) == sql.DEFAULT_PARTITION
    report = event_partitions_maintain(now=datetime(2040, 1, 20, tzinfo=UTC), retention_days=0, months_ahead=0)
    assert report.created == ["recommendations_interaction_p2040_01"] and report.rows_moved == 1
    assert partition_of(early) == "recommendations_interaction_p2040_01"
    assert partition_of(late) == sql.DEFAULT_PARTITION
    assert Interaction.objects.count() == 2


@postgres_only
def test_retention_drops_only_the_months_entirely_before_the_horizon():
    event_partitions_maintain(now=at(2, 10), retention_days=0, months_ahead=5)  # February to July 2031
    times = [at(2, 10), at(3, 31, 23), at(4, 1, 0), at(4, 20), at(6, 1), at(1, 1) - timedelta(days=400)]
    event_ingest(events=[view(f"u{n}", "i", moment) for n, moment in enumerate(times)])
    with connection.cursor() as cursor:  # as if committed (beat runs in a transaction of its own)
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    now = at(5, 15)  # the horizon, 40 days before, is 5 April: April overlaps it and is kept whole
    report = event_partitions_maintain(now=now, retention_days=40, months_ahead=0)
    assert {partition_name(MARCH.replace(month=m)) for m in (2, 3)} <= set(report.dropped)
    assert report.events_deleted == 1  # the DEFAULT partition's event of 2029
    kept = sorted(Interaction.objects.values_list("timestamp", flat=True))
    assert kept == [at(4, 1, 0), at(4, 20), at(6, 1)]
    assert min(kept) < now - timedelta(days=40)  # a month inside the horizon is never cut
    left = sql.event_partitions()
    assert {partition_name(MARCH.replace(month=m)) for m in (4, 5, 6, 7)} <= set(left)
    assert all(bounds[1] > at(4, 1, 0) for bounds in left.values() if bounds)


@postgres_only
def test_with_retention_on_every_kept_month_gets_its_partition_out_of_the_default_one():
    kept, old = uuid.uuid4(), uuid.uuid4()
    event_ingest(
        events=[
            view("u", "i", datetime(2036, 2, 10, tzinfo=UTC), kept),
            view("u", "i", datetime(2035, 11, 3, tzinfo=UTC), old),
        ]
    )
    assert partition_of(kept) == partition_of(old) == sql.DEFAULT_PARTITION
    report = event_partitions_maintain(now=datetime(2036, 3, 20, tzinfo=UTC), retention_days=60, months_ahead=0)
    assert "recommendations_interaction_p2036_01" in report.created and report.rows_moved == 1
    assert partition_of(kept) == "recommendations_interaction_p2036_02"
    assert report.events_deleted == 1 and not Interaction.objects.filter(event_id=old).exists()


def test_retention_zero_keeps_every_event_and_event_id():
    event_ingest(events=[view("u", "i", datetime(2001, 1, 1, tzinfo=UTC), uuid.uuid4())])
    report = event_partitions_maintain(now=datetime(2040, 1, 1, tzinfo=UTC), retention_days=0)
    assert report.dropped == [] and report.events_deleted == 0
    assert Interaction.objects.count() == EventReceipt.objects.count() == 1


def test_retention_deletes_the_events_of_old_months_on_any_backend():
    event_ingest(events=[view("u", "i", at(1, 31, 23)), view("u", "i", at(2, 1, 0))])
    event_partitions_maintain(now=at(3, 5), retention_days=30)  # horizon 3 February: February is kept whole
    assert list(Interaction.objects.values_list("timestamp", flat=True)) == [at(2, 1, 0)]


def test_event_ids_are_forgotten_once_received_longer_ago_than_the_horizon():
    old, recent = uuid.uuid4(), uuid.uuid4()
    event_ingest(events=[view("u", "i", at(1), old), view("u", "i", at(1), recent)])
    EventReceipt.objects.filter(event_id=old).update(received_at=datetime.now(tz=UTC) - timedelta(days=31))
    report = event_partitions_maintain(now=at(1), retention_days=30)
    assert report.receipts_deleted == 1
    assert list(EventReceipt.objects.values_list("event_id", flat=True)) == [recent]


def test_an_item_still_counts_a_user_once_after_retention_dropped_the_users_first_events():
    event_ingest(events=[view("u", "i", at(1, 10)), view("v", "i", at(1, 11))])
    event_partitions_maintain(now=at(3, 20), retention_days=30, months_ahead=0)
    assert not Interaction.objects.exists()
    event_ingest(events=[view("u", "i", at(3, 20)), view("w", "i", at(3, 20))])
    assert ItemFeatures.objects.get(item__external_id="i").user_count == 3
    assert UserItemFirstSeen.objects.get(user__external_id="u").first_seen == at(1, 10)


def test_a_retry_with_the_same_event_id_in_another_month_is_a_duplicate(ingest_client):
    event_partitions_maintain(now=datetime(2025, 3, 5, tzinfo=UTC), retention_days=0, months_ahead=4)
    event_id = str(uuid.uuid4())
    first = {"user_id": "u", "item_id": "i", "event_type": "view", "timestamp": "2025-03-10T10:00:00Z"}
    response = ingest_client.post("/api/v1/events", {**first, "event_id": event_id}, format="json")
    assert response.status_code == 201 and response.json() == {"accepted": 1, "duplicates": 0}
    retry = {**first, "event_id": event_id, "timestamp": "2025-07-10T10:00:00Z"}
    response = ingest_client.post("/api/v1/events", retry, format="json")
    assert response.status_code == 201 and response.json() == {"accepted": 0, "duplicates": 1}
    assert Interaction.objects.get().timestamp == datetime(2025, 3, 10, 10, tzinfo=UTC)
    assert UserFeatures.objects.get().event_count == 1


@pytest.mark.django_db(transaction=True)
@postgres_only
def test_concurrent_retries_of_one_event_in_different_months_store_it_once():
    """Each round, four threads send the same event id at the same moment, each with a timestamp in a month of
    its own (so in four partitions): one stores it, the others are answered duplicate."""
    created = event_partitions_maintain(now=datetime(2033, 3, 1, tzinfo=UTC), retention_days=0).created
    try:
        _retry_concurrently()
    finally:
        for name in created:  # committed DDL: leave the shared test database as it was
            sql.event_partition_drop(name=name)


def _retry_concurrently():
    Item.objects.create(external_id="i")
    rounds, workers = 20, 4
    event_ids = [uuid.uuid4() for _ in range(rounds)]
    start, errors, accepted = threading.Barrier(workers), [], []

    def retry(worker: int):
        try:
            for event_id in event_ids:
                start.wait(timeout=30)
                moment = datetime(2033, 3 + worker, 2, tzinfo=UTC)
                result = event_ingest(events=[view("u", "i", moment, event_id)])
                accepted.append(result.accepted)
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=retry, args=(worker,)) for worker in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(accepted) == rounds and len(accepted) == rounds * workers
    assert Interaction.objects.count() == rounds == EventReceipt.objects.count()
    assert UserFeatures.objects.get().event_count == rounds
    assert ItemFeatures.objects.get().event_count == rounds


@pytest.mark.django_db(transaction=True)
@postgres_only
def test_ingestion_goes_on_while_a_month_is_created_and_loses_nothing():
    """Two threads ingest events of a month that has no partition yet (so into DEFAULT) while the month's partition
    is created, which moves the rows already there: every event is stored once, in the month's partition."""
    month = datetime(2034, 5, 1, tzinfo=UTC)
    stop, errors, sent = threading.Event(), [], []

    def ingest(worker: int):
        try:
            n = 0
            while not stop.is_set() or n < 5:
                # A new user and item every time: ingestion writes users and items before events.
                event = view(f"u{worker}-{n}", f"i{worker}-{n}", month + timedelta(hours=n), uuid.uuid4())
                event_ingest(events=[event])
                sent.append(1)
                n += 1
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=ingest, args=(worker,)) for worker in range(2)]
    for thread in threads:
        thread.start()
    created = []
    try:
        while len(sent) < 10 and not errors:
            threading.Event().wait(0.05)
        created = event_partitions_maintain(now=month, retention_days=0, months_ahead=0).created
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        try:
            assert errors == [] and created == ["recommendations_interaction_p2034_05"]
            assert Interaction.objects.count() == len(sent) == EventReceipt.objects.count()
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT count(*) FROM {sql.DEFAULT_PARTITION}")
                assert cursor.fetchone()[0] == 0
            assert sum(UserFeatures.objects.values_list("event_count", flat=True)) == len(sent)
        finally:
            for name in created:
                sql.event_partition_drop(name=name)


def test_the_feature_rebuild_records_the_pairs_of_events_written_in_bulk():
    """An import writes events in bulk and then rebuilds the features of what it touched: the pairs it wrote are
    recorded, so that a later event of one of them does not count its user again (nor once retention dropped it)."""
    event_ingest(events=[view("u", "i1", at(1, 5))])
    user, (first_item, other_item) = EndUser.objects.get(), [Item.objects.get(), Item.objects.create(external_id="i2")]
    Interaction.objects.bulk_create(
        Interaction(user=user, item=item, event_type="view", timestamp=moment)
        for item, moment in [(first_item, at(1, 1)), (other_item, at(1, 9)), (other_item, at(1, 2))]
    )
    online_features_rebuild(user_ids=[user.pk], item_ids=[first_item.pk, other_item.pk])
    assert sorted(UserItemFirstSeen.objects.values_list("item__external_id", "first_seen")) == [
        ("i1", at(1, 5)),  # recorded by ingestion first: kept
        ("i2", at(1, 9)),  # the pair's first stored (lowest key) event
    ]
    event_ingest(events=[view("u", "i2", at(2, 1))])
    assert ItemFeatures.objects.get(item=other_item).user_count == 1
