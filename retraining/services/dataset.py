"""Loading the event log from the database into retraining.ml.events.EventLog arrays.

Rows stream from the database in chunks of `chunk_size` and only the arrays are kept. Measured
(bench/train_pipeline.py, 1M events, 10,000 users, 6,000 items): loading peaks at ~340 MB RSS for the
whole process (Django and libraries included), the full training run at ~740 MB.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np

from recommendations.models import EndUser, Interaction, Item
from retraining.ml.events import EVENT_TYPE_CODE, EventLog


def event_log_load(*, until: datetime | None = None, chunk_size: int = 50_000) -> EventLog:
    """All events with timestamp < `until` (all events if None), streamed in chunks into arrays.

    Users and items are coded in the order of their external ids (sorted in Python: the databases' collations
    differ) and events sorted by (time, user, item, type, value), so that every ordering and tie-break
    downstream is the same for the same events whatever their primary keys, import order or backend."""
    user_rows = sorted(EndUser.objects.values_list("external_id", "pk"))
    user_pks = np.array([row[1] for row in user_rows], dtype=np.int64)
    item_rows = sorted(Item.objects.values_list("external_id", "pk", "categories", "active"))
    item_pks = np.array([row[1] for row in item_rows], dtype=np.int64)
    events = Interaction.objects.all()
    if until is not None:
        events = events.filter(timestamp__lt=until)
    rows = events.order_by().values_list("pk", "user_id", "item_id", "event_type", "value", "timestamp")
    chunks = [_chunk_arrays(chunk) for chunk in _chunked(rows.iterator(chunk_size=chunk_size), chunk_size)]
    pk, user_pk, item_pk, kind, value, ts = (
        np.concatenate([c[i] for c in chunks]) if chunks else np.empty(0, dtype=dtype)
        for i, dtype in enumerate([np.int64, np.int64, np.int64, np.int8, np.float32, np.float64])
    )
    user, item = _codes_of(user_pks, user_pk), _codes_of(item_pks, item_pk)
    order = np.lexsort((pk, value, kind, item, user, ts))  # the key last: only exact duplicates tie on the rest
    return EventLog(
        event_pk=pk[order],
        user=user[order],
        item=item[order],
        event_type=kind[order],
        value=value[order],
        ts=ts[order],
        user_pks=user_pks,
        item_pks=item_pks,
        item_external_ids=[row[0] for row in item_rows],
        item_categories=[tuple(row[2] or ()) for row in item_rows],
        item_active=np.array([row[3] for row in item_rows], dtype=bool),
        until=until.timestamp() if until is not None else None,
    )


def _codes_of(pks_by_code: np.ndarray, pks: np.ndarray) -> np.ndarray:
    """The code (position in `pks_by_code`) of each of `pks`."""
    by_pk = np.argsort(pks_by_code)
    return by_pk[np.searchsorted(pks_by_code[by_pk], pks)].astype(np.int32)


def _chunked(iterator, size: int):
    chunk = []
    for row in iterator:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _chunk_arrays(chunk: list[tuple]) -> tuple[np.ndarray, ...]:
    pk, user, item, kind, value, ts = zip(*chunk)
    return (
        np.array(pk, dtype=np.int64),
        np.array(user, dtype=np.int64),
        np.array(item, dtype=np.int64),
        np.array([EVENT_TYPE_CODE[k] for k in kind], dtype=np.int8),
        np.array([np.nan if v is None else v for v in value], dtype=np.float32),
        np.array([t.timestamp() for t in ts], dtype=np.float64),
    )
