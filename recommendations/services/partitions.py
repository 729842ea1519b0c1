"""The events table's monthly partitions (PostgreSQL) and the retention of events and event ids (any backend).

On PostgreSQL recommendations_interaction is range-partitioned by month on `timestamp` (migration 0011): a
partition per month from the month partitioning began, created `MONTHS_AHEAD` months ahead, and a DEFAULT
partition that takes the events of every other month (imported history, far-future strays), so that no timestamp
is ever refused. When a month's partition is created, its rows move out of the DEFAULT partition. With retention
on, every month the horizon keeps gets its partition too, so that it is dropped whole when its turn comes.

Retention (RetrainPolicy.event_retention_days; 0 keeps everything) removes the events of every month that lies
entirely before the horizon (now − retention): the month partitions are dropped whole (no row-by-row delete) and
the DEFAULT partition's rows of those months deleted; on other backends the same rows are deleted. A month that
overlaps the horizon is kept whole. Event ids received longer ago than the horizon are forgotten (EventReceipt).
What outlives retention: online features (folded when the events arrived), UserItemFirstSeen (every user-item
pair, which keeps items' distinct-user counts exact), impressions and their outcomes, models and their metrics.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from django.db import OperationalError, connection
from django.utils import timezone

from recommendations import sql
from recommendations.models import EventReceipt, Interaction

MONTHS_AHEAD = 3
_LOCK_NOT_AVAILABLE = "55P03"
_DEADLOCK_DETECTED = "40P01"
_ATTEMPTS = 3


@dataclass
class PartitionsReport:
    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    rows_moved: int = 0
    events_deleted: int = 0
    receipts_deleted: int = 0
    postponed: list[str] = field(default_factory=list)  # DDL that waited too long for a lock: the next run retries


def event_partitions_maintain(
    *, now: datetime, retention_days: int, months_ahead: int = MONTHS_AHEAD
) -> PartitionsReport:
    """Create the partitions of the months from `now`'s to `months_ahead` later (and from the real time's, when a
    replay's clock is elsewhere) and, with retention on, of every month the horizon keeps, then apply retention.
    Idempotent; safe to run concurrently with ingestion."""
    report = PartitionsReport()
    if connection.vendor == "postgresql":
        wanted = {
            month_add(month_start(anchor), step) for anchor in (now, timezone.now()) for step in range(months_ahead + 1)
        }
        if retention_days:
            month = retention_boundary(now=now, retention_days=retention_days)
            while month < now:  # each kept month in a partition of its own, to be dropped whole in its turn
                wanted.add(month)
                month = month_add(month, 1)
        _months_create(report, wanted)
    if retention_days:
        _retention_apply(report, now, retention_days)
    return report


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def month_add(month: datetime, months: int) -> datetime:
    year, month0 = divmod(month.year * 12 + month.month - 1 + months, 12)
    return datetime(year, month0 + 1, 1, tzinfo=UTC)


def partition_name(month: datetime) -> str:
    return f"{Interaction._meta.db_table}_p{month:%Y_%m}"


def retention_boundary(*, now: datetime, retention_days: int) -> datetime:
    """Events before this moment are past retention: the start of the month that holds now − retention_days."""
    return month_start(now - timedelta(days=retention_days))


def _months_create(report: PartitionsReport, months: set[datetime]) -> None:
    existing = sql.event_partitions()
    for month in sorted(months):
        name = partition_name(month)
        if name in existing:
            continue
        done, moved = _ddl_run(
            report, name, partial(sql.event_partition_create, name=name, start=month, end=month_add(month, 1))
        )
        if done:
            report.rows_moved += moved
            report.created.append(name)


def _retention_apply(report: PartitionsReport, now: datetime, retention_days: int) -> None:
    boundary = retention_boundary(now=now, retention_days=retention_days)
    if connection.vendor == "postgresql":
        for name, bounds in sorted(sql.event_partitions().items()):
            if bounds is None or bounds[1] > boundary:
                continue
            done, _ = _ddl_run(report, name, partial(sql.event_partition_drop, name=name))
            if done:
                report.dropped.append(name)
        report.events_deleted = sql.default_partition_delete_before(moment=boundary)
    else:
        report.events_deleted, _ = Interaction.objects.filter(timestamp__lt=boundary).delete()
    received_before = timezone.now() - timedelta(days=retention_days)
    report.receipts_deleted, _ = EventReceipt.objects.filter(received_at__lt=received_before).delete()


def _ddl_run(report: PartitionsReport, name: str, ddl: Callable[[], Any]) -> tuple[bool, Any]:
    """Run one partition's DDL (a transaction of its own), again after a deadlock (PostgreSQL aborted it, not the
    ingest it met); after a lock timeout or the last deadlock, postpone it to the next run. (done, its result)."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return True, ddl()
        except OperationalError as exc:
            code = getattr(exc.__cause__, "pgcode", None)
            if code not in (_LOCK_NOT_AVAILABLE, _DEADLOCK_DETECTED):
                raise
            if code == _LOCK_NOT_AVAILABLE or attempt == _ATTEMPTS:
                report.postponed.append(name)
                return False, None
    raise AssertionError("unreachable")
