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
failure is logged and counted and never reaches a response. SHADOW_QUEUE_SIZE 0, or a scorer whose thread
was not started (tests, management commands: the runtime starts it in web workers), runs jobs inline.

Measured and dropped on a 2-core host (README, "Measured figures"): a niced Celery shadow worker (publishing
each request cost the web process more than the scoring) and a helper process per web process at idle CPU
priority (its work still evicted the live requests' caches: worse p99 at light load and at saturation)."""

import logging
import queue
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from contextlib import contextmanager

from django.conf import settings
from django.db import close_old_connections

from recommendations.runtime import process_runtime

logger = logging.getLogger(__name__)
IDLE_SECONDS = 0.005
JOB_SWITCH_INTERVAL_SECONDS = 0.0005
UTILIZATION_WINDOW_SECONDS = 1.0
THREAD_NAME = "shadow-scorer"


class Preempted(Exception):
    """A live request started while a shadow job ran: the job gives way."""


class ShadowScorer:
    """One per process (owned by its runtime): the live requests' bookkeeping, the queue of shadow jobs, the
    thread that runs them, and their counts."""

    def __init__(self):
        self.stats: Counter = Counter()
        self._jobs: queue.Queue[tuple[float, Callable[[], None]]] | None = None
        self._thread: threading.Thread | None = None
        self._busy = 0
        self._last_end = 0.0
        self._recent: deque = deque()  # (end, seconds) of the live requests of the last UTILIZATION_WINDOW_SECONDS
        self._recent_seconds = 0.0  # their sum
        self._lock = threading.Lock()

    @contextmanager
    def live_request(self):
        """Marks a live request in progress; shadow jobs wait while any is."""
        started = time.monotonic()
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
                self._last_end = time.monotonic()
                self._recent.append((self._last_end, self._last_end - started))
                self._recent_seconds += self._last_end - started
                self._forget_before(self._last_end - UTILIZATION_WINDOW_SECONDS)

    def _forget_before(self, moment: float) -> None:
        while self._recent and self._recent[0][0] <= moment:
            self._recent_seconds -= self._recent.popleft()[1]

    def utilization(self) -> float:
        """The share of the last UTILIZATION_WINDOW_SECONDS this process spent on live requests."""
        with self._lock:
            self._forget_before(time.monotonic() - UTILIZATION_WINDOW_SECONDS)
            return max(0.0, self._recent_seconds) / UTILIZATION_WINDOW_SECONDS

    def checkpoint(self) -> None:
        if self._busy and threading.current_thread().name == THREAD_NAME:
            raise Preempted

    def submit(self, job: Callable[[], None]) -> None:
        self.stats["submitted"] += 1
        if self._jobs is None:
            self._run(job)
            return
        if self.utilization() > settings.SHADOW_MAX_UTILIZATION:  # loaded: shed now rather than wake the scorer
            self.stats["dropped_loaded"] += 1
            return
        try:
            self._jobs.put_nowait((time.monotonic(), job))
        except queue.Full:
            self.stats["dropped_full"] += 1

    def start(self) -> None:
        """Queue jobs for a thread of their own from now on (SHADOW_QUEUE_SIZE 0 keeps running them inline)."""
        if settings.SHADOW_QUEUE_SIZE <= 0:
            return
        self._jobs = queue.Queue(maxsize=settings.SHADOW_QUEUE_SIZE)
        self._thread = threading.Thread(target=self._work_forever, args=(self._jobs,), name=THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Run jobs inline again; the thread ends after the job in hand (queued ones are dropped)."""
        jobs, thread, self._jobs, self._thread = self._jobs, self._thread, None, None
        if jobs is not None:
            while not jobs.empty():
                jobs.get_nowait()
            jobs.put((time.monotonic(), None))
            thread.join(timeout=5)

    def _work_forever(self, jobs: "queue.Queue") -> None:
        while True:
            queued_at, job = jobs.get()
            if job is None:
                return
            while not self._idle():
                if self._jobs is not jobs:  # stopped while this job waited
                    return
                if self.utilization() > settings.SHADOW_MAX_UTILIZATION:  # became loaded: shed, do not keep polling
                    self.stats["dropped_loaded"] += 1
                    break
                if time.monotonic() - queued_at >= settings.SHADOW_MAX_DELAY_SECONDS:
                    self.stats["dropped_stale"] += 1
                    break
                time.sleep(0.002)
            else:
                self._run(job)
                close_old_connections()

    def _idle(self) -> bool:
        if self._busy or time.monotonic() - self._last_end < IDLE_SECONDS:
            return False
        return self.utilization() <= settings.SHADOW_MAX_UTILIZATION

    def _run(self, job: Callable[[], None]) -> None:
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(JOB_SWITCH_INTERVAL_SECONDS)
        try:
            job()
            self.stats["completed"] += 1
        except Preempted:
            self.stats["preempted"] += 1
        except Exception:
            self.stats["failed"] += 1
            logger.exception("shadow scoring failed (the response was not affected)")
        finally:
            sys.setswitchinterval(switch_interval)


class LiveRequestMiddleware:
    """Marks each request this process handles as live from the top of the middleware stack, so that a
    shadow job neither starts nor goes past its next checkpoint while any request is being answered."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with process_runtime().shadow.live_request():
            return self.get_response(request)
