"""Event ingestion: one transaction writes the events and leaves them for the fold into the online features,
which the request runs after its commit unless another transaction is folding (services.online_features:
feature rows are written by one transaction at a time, and no batch waits for another's)."""

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from django.conf import settings
from django.db import DatabaseError, IntegrityError, OperationalError, transaction

from recommendations import sql
from recommendations.models import Item
from recommendations.process_cache import ProcessCache
from recommendations.runtime import process_runtime
from recommendations.services.online_features import online_features_fold_enqueue, online_features_fold_pending
from recsite import metrics
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

    An event whose `event_id` was received before (or is repeated in the same batch) is a duplicate, whatever its
    timestamp: its receipt (EventReceipt, one insert with ON CONFLICT DO NOTHING) is already there, also when a
    concurrent request wrote it, and the event is not stored; a deadlock with a concurrent batch (rare: receipts
    and pairs are locked in key order) is retried. Once the events are committed they are folded, with what other
    requests left waiting, unless another transaction is folding (then it folds them); a failure there does not
    fail the request: its events are committed, the sweeper folds them."""
    strict = settings.CATALOG_STRICT if catalog_strict is None else catalog_strict
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            with transaction.atomic():
                fresh = _ingest(events, strict)
            _fold_waiting()
            return _ingest_counted(events, fresh)
        except (IntegrityError, OperationalError) as exc:
            # A cached user or item may have been deleted since (the foreign key fails at commit): read them again.
            runtime = process_runtime()
            runtime.known_users.discard(event.user_id for event in events)
            runtime.known_items.discard(event.item_id for event in events)
            if attempt == _ATTEMPTS or not _is_retryable(exc):
                if isinstance(exc, IntegrityError):
                    raise ConflictError("A concurrent request wrote the same events; retry the request.") from exc
                raise
    raise AssertionError("unreachable")


_ATTEMPTS = 3
logger = logging.getLogger(__name__)


def _fold_waiting() -> None:
    try:
        online_features_fold_pending()
    except DatabaseError:
        logger.warning("Folding the waiting event batches failed; the sweeper retries.", exc_info=True)


_RETRYABLE_PG_CODES = {"40P01", "40001"}  # deadlock detected, serialization failure


def _is_retryable(exc: Exception) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    return getattr(exc.__cause__, "pgcode", None) in _RETRYABLE_PG_CODES


def _ingest_counted(events: list[EventInput], fresh: list[EventInput]) -> IngestResult:
    """The result of a committed batch, counted in the metrics."""
    accepted = Counter(event.event_type for event in fresh)
    metrics.events_count(counts=accepted, outcome="accepted")
    metrics.events_count(counts=Counter(event.event_type for event in events) - accepted, outcome="duplicate")
    return IngestResult(accepted=len(fresh), duplicates=len(events) - len(fresh))


def _ingest(events: list[EventInput], strict: bool) -> list[EventInput]:
    """The events written (the others are duplicates)."""
    items = _items_for(events, strict)
    users = _users_for(event.user_id for event in events)
    # Locked before the events are stored, so that a pair's first event (its lowest key) is recorded exactly.
    sql.user_item_pairs_lock(pairs={(users[event.user_id], items[event.item_id]) for event in events})
    fresh, rows = sql.interactions_insert(events=events, users=users, items=items)
    if rows:
        online_features_fold_enqueue(event_rows=rows)
    return fresh


def _read_through(cache: ProcessCache, keys: set[str], read: Callable[[set[str]], dict]) -> dict:
    """What `cache` holds of `keys` from less than INGEST_CACHE_SECONDS ago, and `read(the others)`. What
    was read is cached once the ingest commits, so that rows created by a transaction that rolls back are
    never remembered."""
    found = cache.get_many(keys, ttl=settings.INGEST_CACHE_SECONDS)
    unread = keys - found.keys()
    if unread:
        fresh = read(unread)
        transaction.on_commit(lambda: cache.update(fresh))
        found.update(fresh)
    return found


def _items_for(events: list[EventInput], strict: bool) -> dict[str, int]:
    """The pk of each event's item, creating unknown items (inactive) unless the catalog is strict."""
    wanted = {event.item_id for event in events}
    return _read_through(process_runtime().known_items, wanted, lambda unread: _items_read(unread, events, strict))


def _items_read(wanted: set[str], events: list[EventInput], strict: bool) -> dict[str, int]:
    found = sql.item_lookup(external_ids=wanted)
    missing = wanted - found.keys()
    if missing and strict:
        errors = [
            {"index": index, "field": "item_id", "message": f"Unknown item '{event.item_id}' (the catalog is strict)."}
            for index, event in enumerate(events)
            if event.item_id in missing
        ]
        raise ApplicationError("Some events refer to unknown items.", extra={"errors": errors}, code="unknown_item")
    if missing:
        # Stored so that no event is lost, but inactive, so never served, until the catalogue defines the item
        # (item_upsert, the admin or an import): an event must not put an item in front of users.
        Item.objects.bulk_create(
            [Item(external_id=external_id, active=False) for external_id in sorted(missing)], ignore_conflicts=True
        )
        found.update(sql.item_lookup(external_ids=missing))
    return found


def _users_for(external_ids: Iterable[str]) -> dict[str, int]:
    """The pk of each user, creating the users seen for the first time."""
    return _read_through(process_runtime().known_users, set(external_ids), _users_read)


def _users_read(wanted: set[str]) -> dict[str, int]:
    found = sql.user_lookup(external_ids=wanted)
    missing = sorted(wanted - found.keys())
    if missing:
        found.update(sql.users_insert(external_ids=missing))
        raced = wanted - found.keys()  # created by a concurrent request: the insert skipped them
        if raced:
            found.update(sql.user_lookup(external_ids=raced))
    return found
