"""Shadow scoring off the response path.

A shadowed request's challenger list is computed by a daemon thread of the web process after the champion's
response is on its way, and only once this process has answered no request for IDLE_SECONDS and has spent at
most SHADOW_MAX_UTILIZATION of the last second answering them, so that the shadow competes with live
requests for the interpreter as little as possible. Every request counts as live from the top of the
middleware stack (LiveRequestMiddleware). While a job runs, the interpreter's switch interval is cut to
JOB_SWITCH_INTERVAL_SECONDS so that a request arriving mid-job gets the interpreter back quickly, and at each
checkpoint between its stages a job that finds a live request in progress gives up (counted as preempted).

Jobs wait in a bounded queue. A job submitted while the process is over SHADOW_MAX_UTILIZATION is dropped at
once (a saturated process does not even wake the scorer), and one that finds the queue full, finds the
process loaded while it waits, or has waited longer than SHADOW_MAX_DELAY_SECONDS for an idle moment is
dropped; all are counted. Under load the shadow scores fewer requests rather than slow the live ones. A job's
failure is logged and counted and never reaches a response. SHADOW_QUEUE_SIZE 0 runs jobs inline (tests).

Measured and dropped on a 2-core host (README, "Measured figures"): a niced Celery shadow worker (publishing
each request cost the web process more than the scoring) and a helper process per web process at idle CPU
priority (its work still evicted the live requests' caches: worse p99 at light load and at saturation)."""

import logging
import queue
import sys
import threading
import time
from collections import Counter, deque
from contextlib import contextmanager
from typing import Callable

from django.conf import settings
from django.db import close_old_connections

logger = logging.getLogger(__name__)
stats: Counter = Counter()
_jobs: "queue.Queue[tuple[float, Callable[[], None]]] | None" = None
_busy = 0
_last_end = 0.0
_recent: deque = deque()  # (end, seconds) of the live requests of the last UTILIZATION_WINDOW_SECONDS
_recent_seconds = 0.0  # their sum
_lock = threading.Lock()
IDLE_SECONDS = 0.005
JOB_SWITCH_INTERVAL_SECONDS = 0.0005
UTILIZATION_WINDOW_SECONDS = 1.0


@contextmanager
def live_request():
    """Marks a live request in progress; shadow jobs wait while any is."""
    global _busy, _last_end, _recent_seconds
    started = time.monotonic()
    with _lock:
        _busy += 1
    try:
        yield
    finally:
        with _lock:
            _busy -= 1
            _last_end = time.monotonic()
            _recent.append((_last_end, _last_end - started))
            _recent_seconds += _last_end - started
            _forget_before(_last_end - UTILIZATION_WINDOW_SECONDS)


def _forget_before(moment: float) -> None:
    global _recent_seconds
    while _recent and _recent[0][0] <= moment:
        _recent_seconds -= _recent.popleft()[1]


def _utilization() -> float:
    """The share of the last UTILIZATION_WINDOW_SECONDS this process spent on live requests."""
    with _lock:
        _forget_before(time.monotonic() - UTILIZATION_WINDOW_SECONDS)
        return max(0.0, _recent_seconds) / UTILIZATION_WINDOW_SECONDS


class LiveRequestMiddleware:
    """Marks each request this process handles as live from the top of the middleware stack, so that a
    shadow job neither starts nor goes past its next checkpoint while any request is being answered."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with live_request():
            return self.get_response(request)


class Preempted(Exception):
    """A live request started while a shadow job ran: the job gives way."""


def shadow_checkpoint() -> None:
    if _busy and threading.current_thread().name == "shadow-scorer":
        raise Preempted


def shadow_submit(job: Callable[[], None]) -> None:
    stats["submitted"] += 1
    if settings.SHADOW_QUEUE_SIZE <= 0:
        _run(job)
        return
    if _utilization() > settings.SHADOW_MAX_UTILIZATION:  # loaded: shed now rather than wake the scorer
        stats["dropped_loaded"] += 1
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
        while not _idle():
            if _utilization() > settings.SHADOW_MAX_UTILIZATION:  # became loaded: shed, do not keep polling
                stats["dropped_loaded"] += 1
                break
            if time.monotonic() - queued_at >= settings.SHADOW_MAX_DELAY_SECONDS:
                stats["dropped_stale"] += 1
                break
            time.sleep(0.002)
        else:
            _run(job)
            close_old_connections()


def _idle() -> bool:
    if _busy or time.monotonic() - _last_end < IDLE_SECONDS:
        return False
    return _utilization() <= settings.SHADOW_MAX_UTILIZATION


def _run(job: Callable[[], None]) -> None:
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(JOB_SWITCH_INTERVAL_SECONDS)
    try:
        job()
        stats["completed"] += 1
    except Preempted:
        stats["preempted"] += 1
    except Exception:
        stats["failed"] += 1
        logger.exception("shadow scoring failed (the response was not affected)")
    finally:
        sys.setswitchinterval(switch_interval)
