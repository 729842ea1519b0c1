"""Rate limits per API key and scope, and per client address for failed authentications.

Each limit is a fixed window counted in the Django cache (Redis when REDIS_URL is set, so every web process
shares it): one atomic increment of `throttle:<scope>:<who>:<window>` per request, which costs two round
trips to Redis, where DRF's SimpleRateThrottle reads and rewrites a list of timestamps as long as the rate.
A fixed window lets a key make up to twice its rate across a window boundary; that is the price of a
counter. Rates are THROTTLE_RATES in settings (REST_FRAMEWORK's DEFAULT_THROTTLE_RATES).

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

logger = logging.getLogger(__name__)
AUTH_FAILURE_SCOPE = "auth_failure"
OUTAGE_SECONDS = 5.0


class _CacheBreaker:
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


breaker = _CacheBreaker()


class _Window:
    """The fixed window of a rate that contains now."""

    def __init__(self, scope: str):
        self.limit, self.seconds = SimpleRateThrottle.parse_rate(None, api_settings.DEFAULT_THROTTLE_RATES[scope])
        now = time.time()
        self.index = int(now // self.seconds)
        self.remaining = (self.index + 1) * self.seconds - now

    def key(self, scope: str, who: str) -> str:
        return f"throttle:{scope}:{who}:{self.index}"


def _count(key: str, *, add: int, timeout: float) -> int | None:
    """The counter under `key` after adding `add` (0 reads it), or None when the cache failed."""
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


class ApiKeyRateThrottle(BaseThrottle):
    """Limits each API key to the rate of the view's `required_scope` (views without one are not limited)."""

    def allow_request(self, request, view) -> bool:
        scope = getattr(view, "required_scope", None)
        if scope is None or request.auth is None:
            return True
        self.window = _Window(scope)
        count = _count(self.window.key(scope, request.auth.prefix), add=1, timeout=self.window.remaining)
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
