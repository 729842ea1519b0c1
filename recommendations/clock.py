"""The system clock for serving, triggers and cut-offs: real time, or the replayed timeline during a
replay. Each process's runtime holds one ProcessClock.

The replayed timeline is a SystemClock row that `replay` writes. It is followed only where
REPLAY_CLOCK_ENABLED is on (off by default): a deployment that did not ask for replay reads real time and
never the row, so a row left behind by a replay cannot make production time run at replay speed. With the
setting on, the row is re-read at most once a second."""

import threading
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from recommendations.models import SystemClock
from recommendations.runtime import process_runtime
from recsite.errors import ApplicationError

REFRESH_SECONDS = 1.0


class ProcessClock:
    def __init__(self):
        self._row: SystemClock | None = None
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def now(self) -> datetime:
        real = timezone.now()
        if not settings.REPLAY_CLOCK_ENABLED:
            return real
        clock = self._clock_row()
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


def replay_clock_check() -> None:
    """Refuse to replay unless REPLAY_CLOCK_ENABLED is on here: the processes that should follow the replayed
    timeline (web, worker, beat) only do with the same setting."""
    if not settings.REPLAY_CLOCK_ENABLED:
        raise ApplicationError(
            "The replay clock is off: set REPLAY_CLOCK_ENABLED=1 in the environment of this command and of the "
            "web, worker and beat processes that should follow the replayed timeline."
        )


def clock_set(*, simulated_now: datetime, speed: float) -> SystemClock:
    """Anchor the replayed timeline (refused while REPLAY_CLOCK_ENABLED is off)."""
    replay_clock_check()
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
