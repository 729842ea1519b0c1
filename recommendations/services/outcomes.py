"""The outcome recorder: once a list's attribution window has closed (plus OUTCOME_LATE_SECONDS for late
impressions and events), attribute what it earned once and keep it as an ImpressionOutcome row, so that
readers aggregate rows instead of re-attributing every impression and event on each read.

Work is claimed in windows of served_at after a watermark row: each window is claimed by a compare-and-set of
the watermark and written in the same transaction, so a failed run leaves nothing and moves nothing, and a
second recorder running at the same time finds the window taken and stops (it never counts a list twice;
the outcome's primary key is the impression's as well)."""

from datetime import datetime, timedelta

import pandas as pd
from django.conf import settings
from django.db import transaction
from django.db.models import Min, QuerySet

from recommendations.models import Impression, ImpressionOutcome, OutcomeWatermark
from recommendations.selectors.online import HIT_K, attribution_window, impression_outcomes, outcomes_recorded_until

OUTCOME_BATCH = 5000  # lists attributed per transaction: bounds the recorder's memory and its transaction's length


def impression_outcomes_record(*, now: datetime) -> int:
    """Record the outcome of every list whose window closed by `now` and is not recorded yet; the number written."""
    closed_until = now - attribution_window() - timedelta(seconds=settings.OUTCOME_LATE_SECONDS)
    watermark = _watermark(closed_until)
    written = 0
    while watermark is not None and watermark < closed_until:
        end = _window_end(start=watermark, closed_until=closed_until)
        recorded = _window_record(start=watermark, end=end)
        if recorded is None:  # another recorder claimed this window
            break
        written, watermark = written + recorded, end
    return written


def _watermark(closed_until: datetime) -> datetime | None:
    """The watermark, created just before the first list whose window has closed."""
    current = outcomes_recorded_until()
    if current is not None:
        return current
    first = Impression.objects.filter(served_at__lte=closed_until).aggregate(first=Min("served_at"))["first"]
    if first is None:
        return None
    row, _ = OutcomeWatermark.objects.get_or_create(defaults={"recorded_until": first - timedelta(microseconds=1)})
    return row.recorded_until


def _window_end(*, start: datetime, closed_until: datetime) -> datetime:
    """Served time of the OUTCOME_BATCH-th list after `start`, or `closed_until` when fewer are waiting."""
    waiting = Impression.objects.filter(served_at__gt=start, served_at__lte=closed_until).order_by("served_at")
    last = waiting.values_list("served_at", flat=True)[OUTCOME_BATCH - 1 : OUTCOME_BATCH].first()
    return last or closed_until


def _window_record(*, start: datetime, end: datetime) -> int | None:
    """Claim (start, end] and write its outcome rows; None if the watermark had moved (claimed by another)."""
    with transaction.atomic():
        if not OutcomeWatermark.objects.filter(recorded_until=start).update(recorded_until=end):
            return None
        impressions = Impression.objects.filter(served_at__gt=start, served_at__lte=end)
        rows = _outcome_rows(impressions)
        ImpressionOutcome.objects.bulk_create(rows, batch_size=1000, ignore_conflicts=True)
    return len(rows)


def _outcome_rows(impressions: QuerySet) -> list[ImpressionOutcome]:
    outcomes = impression_outcomes(impressions=impressions)
    if outcomes.empty:
        return []
    outcomes = outcomes.join(_attributed_by_time(outcomes, impressions), on="id")
    overlaps = _overlaps(outcomes)
    return [
        ImpressionOutcome(
            impression_id=row.id,
            user_id=row.user_id,
            served_at=row.served_at,
            arm=row.arm,
            strategy=row.strategy,
            model_version=_integer(row.model_version),
            routed_version=_integer(row.routed_version),
            experiment_id=_integer(row.experiment_id),
            clicked=bool(row.clicked),
            hit=bool(row.hit),
            clicked_by_time=None if pd.isna(row.clicked_by_time) else bool(row.clicked_by_time),
            hit_by_time=None if pd.isna(row.hit_by_time) else bool(row.hit_by_time),
            rating_sum=float(row.rating_sum),
            rating_count=int(row.rating_count),
            delay_s=None if pd.isna(row.delay_s) else float(row.delay_s),
            overlap=overlaps.get(row.id),
        )
        for row in outcomes.itertuples(index=False)
    ]


def _attributed_by_time(outcomes: pd.DataFrame, impressions: QuerySet) -> pd.DataFrame:
    """clicked_by_time and hit_by_time, by id, of the lists in an experiment (only a shadow comparison reads
    them, and any experiment may be one: a second attribution pass is paid for those lists only). A shadow
    list is attributed by time in the first pass already."""
    in_experiment = outcomes[outcomes["experiment_id"].notna()]
    shown = in_experiment[in_experiment["arm"] != Impression.Arm.SHADOW]
    shadows = in_experiment[in_experiment["arm"] == Impression.Arm.SHADOW]
    if not shown.empty:
        shown = impression_outcomes(
            impressions=impressions.filter(id__in=shown["id"].tolist()), by_recommendation_id=False
        )
    columns = {"clicked": "clicked_by_time", "hit": "hit_by_time"}
    return pd.concat([frame.set_index("id")[list(columns)].rename(columns=columns) for frame in (shown, shadows)])


def _overlaps(outcomes: pd.DataFrame) -> dict[int, float]:
    """Per shadow list: the share of the shown list's top k (the request's champion list) it also had."""
    shadows = outcomes[outcomes["arm"] == Impression.Arm.SHADOW]
    if shadows.empty:
        return {}
    shown = dict(
        Impression.objects.filter(recommendation_id__in=shadows["shadow_of"].dropna().tolist()).values_list(
            "recommendation_id", "items"
        )
    )
    return {
        pk: len(set(items[:HIT_K]) & set(shown[of][:HIT_K])) / max(1, min(HIT_K, len(shown[of])))
        for pk, of, items in shadows[["id", "shadow_of", "items"]].itertuples(index=False)
        if of in shown
    }


def _integer(value) -> int | None:
    return None if pd.isna(value) else int(value)
