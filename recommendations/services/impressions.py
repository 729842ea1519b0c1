"""Impression logging off the response path: served lists are buffered in the process and written in
batches by a daemon thread every IMPRESSION_FLUSH_SECONDS. The buffer belongs to the process's runtime,
which starts the thread in web workers; without it (IMPRESSION_FLUSH_SECONDS 0 as in the tests, management
commands, Celery) each impression is written at once.

An impression is telemetry, not an acknowledged write: a process killed between two flushes loses at
most that interval's impressions, which only makes attribution slightly incomplete.

A served list is buffered as a plain row (ImpressionRow), not a model instance, and written by one raw statement
(recommendations.sql.impressions_insert): building an Impression cost the request ~10 us and bulk_create's field
preparation ~50 us a row in the flush, which holds the process's GIL while its requests wait."""

import logging
import threading
import uuid
from datetime import datetime
from typing import NamedTuple

from django.conf import settings

from recommendations import sql
from recommendations.process_cache import PeriodicThread

logger = logging.getLogger(__name__)
MAX_BUFFERED = 100_000


class ImpressionRow(NamedTuple):
    """One served list, in the order of sql.IMPRESSION_COLUMNS (fields as models.Impression defines them)."""

    recommendation_id: uuid.UUID
    user_id: int
    served_at: datetime
    model_version: int | None
    routed_version: int | None
    strategy: str
    arm: str
    experiment_id: int | None
    shadow_of: uuid.UUID | None
    items: list[int]
    scores: list[float]


class ImpressionBuffer:
    def __init__(self):
        self._buffer: list[ImpressionRow] = []
        self._lock = threading.Lock()
        self._flusher = PeriodicThread(
            name="impression-flusher", seconds=lambda: settings.IMPRESSION_FLUSH_SECONDS, tick=self._flush_logged
        )
        self.written = 0  # counters
        self.dropped = 0
        self.flush_failures = 0

    def log(self, impression: ImpressionRow) -> None:
        if not self._flusher.started:
            sql.impressions_insert(rows=[impression])
            self.written += 1
            return
        with self._lock:
            self._buffer.append(impression)

    def buffered(self) -> int:
        return len(self._buffer)

    def flush(self) -> int:
        with self._lock:
            pending = self._buffer[:]
            self._buffer.clear()
        if pending:
            try:
                sql.impressions_insert(rows=pending)
            except Exception:
                with self._lock:  # keep them for the next flush, within a bound
                    self._buffer[:0] = pending[-MAX_BUFFERED:]
                    self.dropped += max(0, len(pending) - MAX_BUFFERED)
                raise
        self.written += len(pending)
        return len(pending)

    def start(self) -> None:
        """Buffer from now on, flushed every IMPRESSION_FLUSH_SECONDS (0 keeps writing each one at once)."""
        if settings.IMPRESSION_FLUSH_SECONDS > 0:
            self._flusher.start()

    def stop(self) -> None:
        """Write what is buffered and go back to writing each impression at once."""
        if self._flusher.stop():
            self.flush()

    def _flush_logged(self) -> None:
        try:
            self.flush()
        except Exception:
            self.flush_failures += 1
            logger.exception("impression flush failed; will retry")
