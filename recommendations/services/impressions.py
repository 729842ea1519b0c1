"""Impression logging off the response path: served lists are buffered in the process and written in
batches by a daemon thread every IMPRESSION_FLUSH_SECONDS (0 writes synchronously, as the tests do).

An impression is telemetry, not an acknowledged write: a process killed between two flushes loses at
most that interval's impressions, which only makes attribution slightly incomplete."""

import logging
import threading
import time

from django.conf import settings
from django.db import close_old_connections

from recommendations.models import Impression

logger = logging.getLogger(__name__)
MAX_BUFFERED = 100_000
_buffer: list[Impression] = []
_lock = threading.Lock()
_thread: threading.Thread | None = None


def impression_log(impression: Impression) -> None:
    if settings.IMPRESSION_FLUSH_SECONDS <= 0:
        Impression.objects.bulk_create([impression])
        return
    with _lock:
        _buffer.append(impression)
    _ensure_flusher()


def impressions_flush() -> int:
    with _lock:
        pending = _buffer[:]
        _buffer.clear()
    if pending:
        try:
            Impression.objects.bulk_create(pending, batch_size=500, ignore_conflicts=True)
        except Exception:
            with _lock:  # keep them for the next flush, within a bound
                _buffer[:0] = pending[-MAX_BUFFERED:]
            raise
    return len(pending)


def _ensure_flusher() -> None:
    global _thread
    if _thread is not None and _thread.is_alive():
        return
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_flush_forever, name="impression-flusher", daemon=True)
            _thread.start()


def _flush_forever() -> None:
    while True:
        time.sleep(settings.IMPRESSION_FLUSH_SECONDS)
        try:
            impressions_flush()
        except Exception:
            logger.exception("impression flush failed; will retry")
        finally:
            close_old_connections()
