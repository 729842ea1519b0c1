"""Migrations 0010-0012 on a database that holds events: nothing is lost, the event ids and first-seen pairs are
backfilled, and on PostgreSQL the table comes out partitioned by month."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from recommendations import sql
from recommendations.models import EventReceipt, Interaction, UserItemFirstSeen
from recommendations.services.events import EventInput, event_ingest

BEFORE = [("recommendations", "0009_pending_fold")]
AFTER = [("recommendations", "0012_interaction_partitioned")]


def migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.django_db(transaction=True)
def test_events_stored_before_the_migrations_are_all_there_after_them():
    old_apps = migrate(BEFORE)
    try:
        OldInteraction = old_apps.get_model("recommendations", "Interaction")
        user = old_apps.get_model("recommendations", "EndUser").objects.create(external_id="u")
        items = [old_apps.get_model("recommendations", "Item").objects.create(external_id=f"i{n}") for n in range(2)]
        start = datetime.now(tz=UTC) - timedelta(days=90)
        OldInteraction.objects.bulk_create(
            OldInteraction(
                user=user,
                item=items[n % 2],
                event_type="view",
                timestamp=start + timedelta(days=n),
                event_id=uuid.uuid4() if n % 3 else None,
                received_at=start,
            )
            for n in range(120)
        )
        before = sorted(OldInteraction.objects.values_list("id", "event_id", "timestamp"))
    finally:
        migrate(AFTER)
    assert sorted(Interaction.objects.values_list("id", "event_id", "timestamp")) == before
    assert EventReceipt.objects.count() == sum(1 for _, event_id, _ in before if event_id)
    first_seen = sorted(UserItemFirstSeen.objects.values_list("item__external_id", "first_seen"))
    assert first_seen == [("i0", start), ("i1", start + timedelta(days=1))]
    # New events continue the old keys and an old event id stays a duplicate.
    result = event_ingest(
        events=[EventInput("u", "i0", "view", start, event_id=before[1][1]), EventInput("u", "i1", "view", start)]
    )
    assert (result.accepted, result.duplicates) == (1, 1)
    assert Interaction.objects.order_by("-id").first().id > before[-1][0]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(DISTINCT tableoid) FROM {Interaction._meta.db_table}")
            assert cursor.fetchone()[0] >= 2  # this month's partition and the DEFAULT one (older months)
        assert sql.DEFAULT_PARTITION in sql.event_partitions()
