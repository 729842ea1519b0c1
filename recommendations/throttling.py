"""Rate limits per API key and scope, and per client address for failed authentications.

Each limit is a fixed window counted in the Django cache (Redis when REDIS_URL is set, so that every web
process shares it) under `throttle:<scope>:<who>:<window>`. A fixed window lets a key make up to twice its
rate across a window boundary; that is the price of a counter instead of DRF's list of timestamps (read and
rewritten whole on every request). Rates are THROTTLE_RATES in settings (REST_FRAMEWORK's
DEFAULT_THROTTLE_RATES).

A key's requests are counted in the process first and added to the shared counter at most SYNC_SECONDS
apart, or at once when the count nears the limit: a request usually costs no round trip to the cache at all.
Measured by bench/throttle.py on the shared 2-core host: ~15 us a request, where two Redis round trips a
request (DRF's way, or an increment) cost ~1.7 ms, against ~3 ms for serving a whole recommendation.
Between two additions a process does not see the others' requests: together they may exceed a rate by what
they admit in SYNC_SECONDS. Failed authentications, rare by nature, go to the cache each time.

The cache is a helper, not the source of truth: when it fails, requests are let through (fail open) and
the cache is left alone for OUTAGE_SECONDS, so an outage costs one failed call per process per period,
logged once, rather than a timeout on every request."""

import logging
import math
import threading
import time

from django.core.cache import cache
from rest_framework import exceptions
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle

from recommendations.runtime import process_runtime

logger = logging.getLogger(__name__)
AUTH_FAILURE_SCOPE = "auth_failure"
OUTAGE_SECONDS = 5.0
SYNC_SECONDS = 0.1


class CacheBreaker:
    """Skips the cache for OUTAGE_SECONDS after it failed, per process."""

    def __init__(self):
        self._failed_at = -math.inf
        self._lock = threading.Lock()

    def is_open(self) -> bool:
        return time.monotonic() - self._failed_at < OUTAGE_SECONDS

    def trip(self, error: Exception) -> None:
        with self._lock:
            if self.is_open():
                return
            self._failed_at = time.monotonic()
        logger.warning("Throttling is off for %gs: the cache failed (%r)", OUTAGE_SECONDS, error)


class _Window:
    """The fixed window of a rate that contains now."""

    def __init__(self, scope: str):
        rate = api_settings.DEFAULT_THROTTLE_RATES[scope]
        self.limit, self.seconds = SimpleRateThrottle.parse_rate(None, rate)  # DRF's parser uses no instance state
        now = time.time()
        self.index = int(now // self.seconds)
        self.remaining = (self.index + 1) * self.seconds - now

    def key(self, scope: str, who: str) -> str:
        return f"throttle:{scope}:{who}:{self.index}"


def _count(key: str, *, add: int, timeout: float) -> int | None:
    """The counter under `key` after adding `add` (0 reads it), or None when the cache failed."""
    breaker = process_runtime().throttle_breaker
    if breaker.is_open():
        return None
    try:
        if not add:
            return cache.get(key, 0)
        try:
            return cache.incr(key, add)
        except ValueError:  # the window's first request (or a race with it)
            if cache.add(key, add, timeout=math.ceil(timeout) + 1):
                return add
            return cache.incr(key, add)
    except Exception as error:  # any cache failure: let the request through
        breaker.trip(error)
        return None


class LocalCounts:
    """Per process, one entry per key and scope: the window's count as last read from the cache, the requests
    counted here since, and when that was; an entry is replaced when its key's window moves on."""

    def __init__(self):
        self._counts: dict[str, list] = {}  # who -> [window key, shared count, unsynced requests, synced at]
        self._lock = threading.Lock()

    def count(self, who: str, key: str, *, limit: int, timeout: float) -> int | None:
        """The window's count with this request, or None when the cache failed."""
        now = time.monotonic()
        with self._lock:
            entry = self._counts.get(who)
            if entry is None or entry[0] != key:
                entry = self._counts[who] = [key, 0, 0, -math.inf]
            entry[2] += 1
            estimate = entry[1] + entry[2]
            if entry[1] >= limit or (estimate < limit and now - entry[3] < SYNC_SECONDS):
                return estimate  # refused without asking (counts only grow in a window), or below and synced lately
            unsynced, entry[2], entry[3] = entry[2], 0, now
        shared = _count(key, add=unsynced, timeout=timeout)
        if shared is None:
            return None
        with self._lock:
            entry[1] = max(entry[1], shared)
        return shared


class ApiKeyRateThrottle(BaseThrottle):
    """Limits each API key to the rate of the view's `required_scope` (views without one are not limited)."""

    def allow_request(self, request, view) -> bool:
        scope = getattr(view, "required_scope", None)
        if scope is None or request.auth is None:
            return True
        self.window = _Window(scope)
        who = f"{scope}:{request.auth.prefix}"
        key = self.window.key(scope, request.auth.prefix)
        count = process_runtime().throttle_counts.count(
            who, key, limit=self.window.limit, timeout=self.window.remaining
        )
        return count is None or count <= self.window.limit

    def wait(self) -> float:
        return self.window.remaining


class AuthFailureThrottle(BaseThrottle):
    """Counts failed authentications per client address (DRF's get_ident: REMOTE_ADDR, or X-Forwarded-For
    behind NUM_PROXIES proxies); past the auth_failure rate the address is refused before its key is checked."""

    def refuse_if_over(self, request) -> None:
        window = _Window(AUTH_FAILURE_SCOPE)
        count = _count(window.key(AUTH_FAILURE_SCOPE, self.get_ident(request)), add=0, timeout=window.remaining)
        if count is not None and count >= window.limit:
            raise exceptions.Throttled(wait=window.remaining)

    def record_failure(self, request) -> None:
        window = _Window(AUTH_FAILURE_SCOPE)
        _count(window.key(AUTH_FAILURE_SCOPE, self.get_ident(request)), add=1, timeout=window.remaining)
