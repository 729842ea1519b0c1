"""Event ingestion: one transaction writes the events and folds them into the online features."""

from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterable
from uuid import UUID

from django.conf import settings
from django.db import IntegrityError, OperationalError, connection, transaction
from django.utils import timezone

from recommendations import features
from recommendations.models import EndUser, Interaction, Item
from recommendations.process_cache import ProcessCache
from recommendations.runtime import process_runtime
from recommendations.services.online_features import first_interactions, online_features_update, user_features_lock
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
    skipped by the insert itself (ON CONFLICT DO NOTHING), also when a concurrent request writes it; a
    deadlock with a concurrent batch (rare: rows are locked in key order) is retried."""
    strict = settings.CATALOG_STRICT if catalog_strict is None else catalog_strict
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            with transaction.atomic():
                return _ingest(events, strict)
        except (IntegrityError, OperationalError) as exc:
            # A cached user or item may have been deleted since (the foreign key fails at commit): read them again.
            runtime = process_runtime()
            runtime.known_users.discard(event.user_id for event in events)
            runtime.known_items.discard(event.item_id for event in events)
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
    # Locked before the events are stored, so that first_interactions sees a concurrent batch of the same user.
    user_rows = user_features_lock(user_ids=users.values())
    fresh, fresh_pks = _interactions_insert(events, users, items)
    if fresh:
        online_features_update(
            events=[
                features.Event(users[e.user_id], items[e.item_id][0], e.event_type, e.value, e.timestamp.timestamp())
                for e in fresh
            ],
            arrivals=first_interactions(event_pks=fresh_pks),
            item_categories={pk: categories for pk, categories in items.values()},
            user_rows=user_rows,
        )
    return IngestResult(accepted=len(fresh), duplicates=len(events) - len(fresh))


_INSERTED_COLUMNS = (
    "event_id", "user_id", "item_id", "event_type", "value", "timestamp", "recommendation_id", "context", "received_at"
)
_INTERACTION_INSERT_SQL = (
    f"INSERT INTO {Interaction._meta.db_table} ({', '.join(_INSERTED_COLUMNS)}) VALUES {{values}} "
    "ON CONFLICT (event_id) WHERE event_id IS NOT NULL DO NOTHING RETURNING id, event_id"
)


def _interactions_insert(events, users, items) -> tuple[list[EventInput], list[int]]:
    """Insert the events in one statement that skips stored (or repeated) event_ids; returns the events
    written and their keys. ON CONFLICT DO NOTHING waits for a concurrent writer of the same event_id and
    then skips it, so duplicates need neither a SELECT beforehand nor a retry."""
    fields = [Interaction._meta.get_field(name) for name in ("event_id", "recommendation_id", "context")]
    event_id_field, recommendation_field, context_field = fields
    adapt_time = connection.ops.adapt_datetimefield_value
    now = adapt_time(timezone.now())
    params: list = []
    for event in events:
        params += [
            event_id_field.get_db_prep_value(event.event_id, connection),
            users[event.user_id],
            items[event.item_id][0],
            event.event_type,
            event.value,
            adapt_time(event.timestamp),
            recommendation_field.get_db_prep_value(event.recommendation_id, connection),
            context_field.get_db_prep_value(event.context, connection),
            now,
        ]
    row = "(" + ", ".join(["%s"] * len(_INSERTED_COLUMNS)) + ")"
    with connection.cursor() as cursor:
        cursor.execute(_INTERACTION_INSERT_SQL.format(values=", ".join([row] * len(events))), params)
        returned = cursor.fetchall()
    written = {event_id_field.to_python(event_id) for _, event_id in returned}
    fresh = []
    for event in events:
        if event.event_id is None:
            fresh.append(event)
        elif event.event_id in written:
            written.discard(event.event_id)  # a repeat later in the batch is the duplicate
            fresh.append(event)
    return fresh, [pk for pk, _ in returned]


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


def _items_for(events: list[EventInput], strict: bool) -> dict[str, tuple[int, list[str]]]:
    """(pk, categories) of each event's item, creating unknown items (inactive) unless the catalog is strict. Cached
    categories may be INGEST_CACHE_SECONDS old: a change of categories reaches features within that time."""
    wanted = {event.item_id for event in events}
    return _read_through(process_runtime().known_items, wanted, lambda unread: _items_read(unread, events, strict))


def _items_read(wanted: set[str], events: list[EventInput], strict: bool) -> dict[str, tuple[int, list[str]]]:
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
        # Stored so that no event is lost, but inactive, so never served, until the catalogue defines the item
        # (item_upsert, the admin or an import): an event must not put an item in front of users.
        Item.objects.bulk_create(
            [Item(external_id=external_id, active=False) for external_id in sorted(missing)], ignore_conflicts=True
        )
        found.update(_item_lookup(missing))
    return found


def _item_lookup(external_ids: set[str]) -> dict[str, tuple[int, list[str]]]:
    categories_field = Item._meta.get_field("categories")
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, external_id, categories FROM {_ITEM_TABLE} WHERE external_id IN ({_placeholders(external_ids)})",
            list(external_ids),
        )
        rows = cursor.fetchall()
    return {
        external_id: (pk, categories_field.from_db_value(categories, None, connection) or [])
        for pk, external_id, categories in rows
    }


def _users_for(external_ids: Iterable[str]) -> dict[str, int]:
    """The pk of each user, creating the users seen for the first time."""
    return _read_through(process_runtime().known_users, set(external_ids), _users_read)


def _users_read(wanted: set[str]) -> dict[str, int]:
    found = _user_lookup(wanted)
    missing = sorted(wanted - found.keys())
    if missing:
        found.update(_users_insert(missing))
        raced = wanted - found.keys()  # created by a concurrent request: the insert skipped them
        if raced:
            found.update(_user_lookup(raced))
    return found


# Users and items are read and written in raw SQL: for one event, compiling the ORM's queries cost more CPU
# than the statements themselves.
_USER_TABLE = EndUser._meta.db_table
_ITEM_TABLE = Item._meta.db_table


def _user_lookup(external_ids: set[str]) -> dict[str, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT external_id, id FROM {_USER_TABLE} WHERE external_id IN ({_placeholders(external_ids)})",
            list(external_ids),
        )
        return dict(cursor.fetchall())


def _users_insert(external_ids: list[str]) -> dict[str, int]:
    """Insert users in key order (so concurrent batches lock in the same order); returns those written."""
    attributes = EndUser._meta.get_field("attributes").get_db_prep_save({}, connection)
    now = connection.ops.adapt_datetimefield_value(timezone.now())
    params = [value for external_id in external_ids for value in (external_id, attributes, now)]
    values = ", ".join(["(%s, %s, %s)"] * len(external_ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {_USER_TABLE} (external_id, attributes, created_at) VALUES {values} "
            "ON CONFLICT (external_id) DO NOTHING RETURNING external_id, id",
            params,
        )
        return dict(cursor.fetchall())


def _placeholders(values) -> str:
    return ", ".join(["%s"] * len(values))
