"""The ledger is the instrument of the fault scenarios: it must notice a lost event and features that do not
add up, or the scenarios' passing would prove nothing."""

import uuid

import pytest
from django.db import connection
from django.utils import timezone

from recommendations.models import EndUser, Interaction, Item
from recommendations.services.events import EventInput, event_ingest
from tests.reliability.ledger import Ledger

pytestmark = [pytest.mark.reliability, pytest.mark.django_db]


def ingest(events: list[dict]) -> None:
    event_ingest(
        events=[
            EventInput(**{**event, "event_id": uuid.UUID(event["event_id"]), "timestamp": timezone.now()})
            for event in events
        ]
    )


def test_the_ledger_counts_what_was_acknowledged_and_stored():
    ledger = Ledger(prefix="self")
    events = [ledger.new_event() for _ in range(6)]
    ingest(events)
    ledger.acknowledge(events[:4])  # the last two were stored but their answers were lost
    report = ledger.report(connection.cursor())
    assert (report.acknowledged, report.stored, report.duplicates) == (4, 6, 0)
    ledger.assert_features_add_up(connection.cursor())


def test_the_ledger_notices_an_acknowledged_event_that_was_not_stored():
    ledger = Ledger(prefix="self")
    events = [ledger.new_event() for _ in range(3)]
    ingest(events[:2])
    ledger.acknowledge(events)
    with pytest.raises(AssertionError, match="1 acknowledged events are not stored"):
        ledger.report(connection.cursor())


def test_the_ledger_notices_an_event_stored_without_its_features():
    ledger = Ledger(prefix="self")
    ingest([ledger.new_event() for _ in range(3)])
    user = EndUser.objects.get_or_create(external_id="self-u0")[0]
    item = Item.objects.get_or_create(external_id="self-i0")[0]
    Interaction.objects.create(user=user, item=item, event_type="view", timestamp=timezone.now())
    with pytest.raises(AssertionError):
        ledger.assert_features_add_up(connection.cursor())
