"""The system clock for serving, triggers and cut-offs: real time, or the replayed timeline during a
replay. Each process's runtime holds one ProcessClock, which re-reads the row at most once a second."""

import threading
import time
from datetime import datetime, timedelta

from django.utils import timezone

from recommendations.models import SystemClock
from recommendations.runtime import process_runtime

REFRESH_SECONDS = 1.0


class ProcessClock:
    def __init__(self):
        self._row: SystemClock | None = None
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def now(self) -> datetime:
        clock = self._clock_row()
        real = timezone.now()
        if clock is None:
            return real
        return clock.simulated_anchor + timedelta(seconds=(real - clock.real_anchor).total_seconds() * clock.speed)

    def _clock_row(self) -> SystemClock | None:
        with self._lock:
            if time.monotonic() - self._read_at > REFRESH_SECONDS:
                self._row = SystemClock.objects.first()
                self._read_at = time.monotonic()
            return self._row

    def forget(self) -> None:
        """Drop the cached row (after this process changes the clock)."""
        with self._lock:
            self._read_at = float("-inf")


def system_now() -> datetime:
    """Now, by the clock of this process's runtime."""
    return process_runtime().clock.now()


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
    process_runtime().clock.forget()
