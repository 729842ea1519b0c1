"""The system clock for serving, triggers and cut-offs: real time, or the replayed timeline during a
replay. The row is re-read at most once a second per process."""

import threading
import time
from datetime import datetime, timedelta

from django.utils import timezone

from recommendations.models import SystemClock

_REFRESH_SECONDS = 1.0
_cache = {"row": None, "read_at": float("-inf")}
_lock = threading.Lock()


def system_now() -> datetime:
    clock = _clock_row()
    real = timezone.now()
    if clock is None:
        return real
    return clock.simulated_anchor + timedelta(seconds=(real - clock.real_anchor).total_seconds() * clock.speed)


def _clock_row() -> SystemClock | None:
    with _lock:
        if time.monotonic() - _cache["read_at"] > _REFRESH_SECONDS:
            _cache["row"] = SystemClock.objects.first()
            _cache["read_at"] = time.monotonic()
        return _cache["row"]


def clock_set(*, simulated_now: datetime, speed: float) -> SystemClock:
    clock, _ = SystemClock.objects.update_or_create(
        singleton=True, defaults={"simulated_anchor": simulated_now, "real_anchor": timezone.now(), "speed": speed}
    )
    clock_forget()
    return clock


def clock_reset() -> None:
    SystemClock.objects.all().delete()
    clock_forget()


def clock_forget() -> None:
    """Drop the cached row (tests, and after this process changes the clock)."""
    with _lock:
        _cache["read_at"] = float("-inf")
