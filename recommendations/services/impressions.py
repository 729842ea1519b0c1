"""Impression logging off the response path: served lists are buffered in the process and written in
batches by a daemon thread every IMPRESSION_FLUSH_SECONDS. The buffer belongs to the process's runtime,
which starts the thread in web workers; without it (IMPRESSION_FLUSH_SECONDS 0 as in the tests, management
commands, Celery) each impression is written at once.

An impression is telemetry, not an acknowledged write: a process killed between two flushes loses at
most that interval's impressions, which only makes attribution slightly incomplete."""

import logging
import threading

from django.conf import settings

from recommendations.models import Impression
from recommendations.process_cache import PeriodicThread

logger = logging.getLogger(__name__)
MAX_BUFFERED = 100_000


class ImpressionBuffer:
    def __init__(self):
        self._buffer: list[Impression] = []
        self._lock = threading.Lock()
        self._flusher = PeriodicThread(
            name="impression-flusher", seconds=lambda: settings.IMPRESSION_FLUSH_SECONDS, tick=self._flush_logged
        )
        self.written = 0  # counters
        self.dropped = 0
        self.flush_failures = 0

    def log(self, impression: Impression) -> None:
        if not self._flusher.started:
            Impression.objects.bulk_create([impression])
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
                Impression.objects.bulk_create(pending, batch_size=500, ignore_conflicts=True)
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
