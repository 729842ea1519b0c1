"""Shadow scoring off the response path.

A shadowed request's challenger list is computed by a daemon thread of the web process after the champion's
response is on its way, and only once this process has answered no recommendation request for IDLE_SECONDS,
so that the shadow competes with live requests for the interpreter as little as possible. Jobs wait in a bounded queue;
a job that finds the queue full, or has waited longer than SHADOW_MAX_DELAY_SECONDS for an idle moment, is
dropped and counted: under saturation the shadow samples fewer requests rather than slow the live ones. A
job's failure is logged and counted and never reaches a response. SHADOW_QUEUE_SIZE 0 runs jobs inline
(tests)."""

import logging
import queue
import threading
import time
from collections import Counter
from contextlib import contextmanager
from typing import Callable

from django.conf import settings
from django.db import close_old_connections

logger = logging.getLogger(__name__)
stats: Counter = Counter()
_jobs: "queue.Queue[tuple[float, Callable[[], None]]] | None" = None
_busy = 0
_last_end = 0.0
_lock = threading.Lock()
IDLE_SECONDS = 0.005


@contextmanager
def live_request():
    """Marks a live request in progress; shadow jobs wait while any is."""
    global _busy, _last_end
    with _lock:
        _busy += 1
    try:
        yield
    finally:
        with _lock:
            _busy -= 1
            _last_end = time.monotonic()


def shadow_submit(job: Callable[[], None]) -> None:
    stats["submitted"] += 1
    if settings.SHADOW_QUEUE_SIZE <= 0:
        _run(job)
        return
    try:
        _queue().put_nowait((time.monotonic(), job))
    except queue.Full:
        stats["dropped_full"] += 1


def _queue() -> "queue.Queue":
    global _jobs
    if _jobs is None:
        with _lock:
            if _jobs is None:
                _jobs = queue.Queue(maxsize=settings.SHADOW_QUEUE_SIZE)
                threading.Thread(target=_work_forever, args=(_jobs,), name="shadow-scorer", daemon=True).start()
    return _jobs


def _work_forever(jobs: "queue.Queue") -> None:
    while True:
        queued_at, job = jobs.get()
        while not _idle() and time.monotonic() - queued_at < settings.SHADOW_MAX_DELAY_SECONDS:
            time.sleep(0.002)
        if not _idle():
            stats["dropped_stale"] += 1
            continue
        _run(job)
        close_old_connections()


def _idle() -> bool:
    return not _busy and time.monotonic() - _last_end >= IDLE_SECONDS


def _run(job: Callable[[], None]) -> None:
    try:
        job()
        stats["completed"] += 1
    except Exception:
        stats["failed"] += 1
        logger.exception("shadow scoring failed (the response was not affected)")
