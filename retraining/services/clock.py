"""The system clock for triggers and cut-offs: real time, or the replayed timeline during a replay."""

from datetime import datetime, timedelta

from django.utils import timezone

from retraining.models import SystemClock


def system_now() -> datetime:
    clock = SystemClock.objects.first()
    real = timezone.now()
    if clock is None:
        return real
    return clock.simulated_anchor + timedelta(seconds=(real - clock.real_anchor).total_seconds() * clock.speed)


def clock_set(*, simulated_now: datetime, speed: float) -> SystemClock:
    clock, _ = SystemClock.objects.update_or_create(
        singleton=True, defaults={"simulated_anchor": simulated_now, "real_anchor": timezone.now(), "speed": speed}
    )
    return clock


def clock_reset() -> None:
    SystemClock.objects.all().delete()
