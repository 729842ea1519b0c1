"""Event ingestion: one transaction writes the events and folds them into the online features."""

from dataclasses import dataclass
from datetime import datetime
from typing import Iterable
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, OperationalError, transaction

from recommendations import features
from recommendations.models import EndUser, Interaction, Item
from recommendations.services.features import online_features_update
from recsite.errors import ApplicationError, ConflictError


@dataclass(frozen=True)
class EventInput:
    user_id: str
    item_id: str
    event_type: str
    timestamp: datetime
    value: float | None = None
    event_id: UUID | None = None
    recommendation_id: UUID | None = None
    context: dict | None = None


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int


def event_ingest(*, events: list[EventInput], catalog_strict: bool | None = None) -> IngestResult:
    """Append `events` and update online features, all or nothing.

    An event whose `event_id` is already stored (or repeated in the same batch) is a duplicate and is
    skipped. If a concurrent request commits the same `event_id` between our check and our insert, the
    unique constraint fires and the whole batch is retried, now seeing the duplicate; a deadlock with a
    concurrent batch (rare: rows are locked in key order) is retried the same way."""
    strict = settings.CATALOG_STRICT if catalog_strict is None else catalog_strict
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            with transaction.atomic():
                return _ingest(events, strict)
        except (IntegrityError, OperationalError) as exc:
            if attempt == _ATTEMPTS or not _is_retryable(exc):
                if isinstance(exc, IntegrityError):
                    raise ConflictError("A concurrent request wrote the same events; retry the request.")
                raise
    raise AssertionError("unreachable")


_ATTEMPTS = 3
_RETRYABLE_PG_CODES = {"40P01", "40001"}  # deadlock detected, serialization failure


def _is_retryable(exc: Exception) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    return getattr(exc.__cause__, "pgcode", None) in _RETRYABLE_PG_CODES


def _ingest(events: list[EventInput], strict: bool) -> IngestResult:
    items = _items_for(events, strict)
    users = _users_for(event.user_id for event in events)
    fresh = _without_duplicates(events)
    rows = [
        Interaction(
            event_id=event.event_id,
            user_id=users[event.user_id],
            item_id=items[event.item_id][0],
            event_type=event.event_type,
            value=event.value,
            timestamp=event.timestamp,
            recommendation_id=event.recommendation_id,
            context=event.context,
        )
        for event in fresh
    ]
    Interaction.objects.bulk_create(rows, batch_size=1000)
    if rows:
        online_features_update(
            events=[
                features.Event(row.user_id, row.item_id, row.event_type, row.value, row.timestamp.timestamp())
                for row in rows
            ],
            item_categories={pk: categories for pk, categories in items.values()},
        )
    return IngestResult(accepted=len(rows), duplicates=len(events) - len(rows))


def _items_for(events: list[EventInput], strict: bool) -> dict[str, tuple[int, list[str]]]:
    wanted = {event.item_id for event in events}
    found = _item_lookup(wanted)
    missing = wanted - found.keys()
    if missing and strict:
        errors = [
            {"index": index, "field": "item_id", "message": f"Unknown item '{event.item_id}' (the catalog is strict)."}
            for index, event in enumerate(events)
            if event.item_id in missing
        ]
        raise ApplicationError("Some events refer to unknown items.", extra={"errors": errors}, code="unknown_item")
    if missing:
        Item.objects.bulk_create([Item(external_id=external_id) for external_id in sorted(missing)], ignore_conflicts=True)
        found.update(_item_lookup(missing))
    return found


def _item_lookup(external_ids: set[str]) -> dict[str, tuple[int, list[str]]]:
    return {
        external_id: (pk, categories or [])
        for pk, external_id, categories in Item.objects.filter(external_id__in=external_ids).values_list(
            "pk", "external_id", "categories"
        )
    }


def _users_for(external_ids: Iterable[str]) -> dict[str, int]:
    wanted = set(external_ids)
    found = dict(EndUser.objects.filter(external_id__in=wanted).values_list("external_id", "pk"))
    missing = wanted - found.keys()
    if missing:
        EndUser.objects.bulk_create([EndUser(external_id=e) for e in sorted(missing)], ignore_conflicts=True)
        found.update(EndUser.objects.filter(external_id__in=missing).values_list("external_id", "pk"))
    return found


def _without_duplicates(events: list[EventInput]) -> list[EventInput]:
    ids = {event.event_id for event in events if event.event_id is not None}
    stored = set(Interaction.objects.filter(event_id__in=ids).values_list("event_id", flat=True)) if ids else set()
    fresh = []
    for event in events:
        if event.event_id is not None:
            if event.event_id in stored:
                continue
            stored.add(event.event_id)
        fresh.append(event)
    return fresh
