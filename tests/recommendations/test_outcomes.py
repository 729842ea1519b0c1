"""The outcome recorder: each served list's outcome written once, after its attribution window has closed,
resumed from a watermark, and the readers that aggregate the rows instead of raw impressions and events."""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest
from django.db import connection, connections
from django_celery_beat.models import PeriodicTask

from recommendations.clock import clock_set
from recommendations.models import Impression, ImpressionOutcome, Item, OutcomeWatermark
from recommendations.selectors import impression_outcomes, online_hit_rate, online_metrics, outcomes_recorded_until
from recommendations.services import outcomes
from recommendations.services.outcomes import impression_outcomes_record
from recommendations.tasks import outcomes_record_task
from retraining.services.schedule import periodic_tasks_setup
from tests.recommendations.factories import event, experiment_traffic, outcomes_recorded, serve, user

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def catalog(db):
    return [Item.objects.create(external_id=f"i{n}") for n in range(15)]


@pytest.fixture
def closes(settings):
    """How long after serving a list its outcome is due: the attribution window and the allowance for late rows."""
    settings.ATTRIBUTION_WINDOW_MINUTES, settings.OUTCOME_LATE_SECONDS = 30, 60
    return timedelta(minutes=31)


@pytest.mark.django_db
def test_a_lists_outcome_is_written_once_its_window_has_closed_and_a_second_run_adds_nothing(catalog, closes):
    shown = serve(user(), catalog[:10], T0)
    event(user(), catalog[3], "click", T0 + timedelta(minutes=20), rec=shown)
    assert impression_outcomes_record(now=T0 + closes - timedelta(seconds=1)) == 0
    assert not ImpressionOutcome.objects.exists(), "an event may still be attributed to it"
    assert impression_outcomes_record(now=T0 + closes) == 1
    row = ImpressionOutcome.objects.get()
    assert (row.impression_id, row.clicked, row.hit, row.delay_s, row.arm) == (shown.pk, True, True, 1200.0, "champion")
    assert impression_outcomes_record(now=T0 + closes) == 0
    assert impression_outcomes_record(now=T0 + closes + timedelta(hours=1)) == 0
    assert ImpressionOutcome.objects.count() == 1


@pytest.mark.django_db
def test_the_recorder_resumes_from_its_watermark_in_batches(catalog, closes, monkeypatch):
    monkeypatch.setattr(outcomes, "OUTCOME_BATCH", 3)
    for n in range(10):
        serve(user(f"u{n}"), catalog[:10], T0 + timedelta(minutes=n))
    assert impression_outcomes_record(now=T0 + closes + timedelta(minutes=4)) == 5
    assert outcomes_recorded_until() == T0 + timedelta(minutes=4)
    serve(user("late-but-in-time"), catalog[:10], T0 + timedelta(minutes=4, seconds=30))
    assert impression_outcomes_record(now=T0 + closes + timedelta(minutes=20)) == 6
    assert ImpressionOutcome.objects.count() == Impression.objects.count() == 11


@pytest.mark.django_db
def test_a_failed_run_writes_nothing_and_moves_nothing_so_the_next_run_records_everything(catalog, closes, monkeypatch):
    for n in range(4):
        serve(user(f"u{n}"), catalog[:10], T0 + timedelta(minutes=n))
    impression_outcomes_record(now=T0 + closes)  # the first list: creates the watermark
    before = outcomes_recorded_until()

    def broken(*args, **kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(ImpressionOutcome.objects, "bulk_create", broken)
    with pytest.raises(RuntimeError):
        impression_outcomes_record(now=T0 + closes + timedelta(minutes=5))
    assert outcomes_recorded_until() == before and ImpressionOutcome.objects.count() == 1
    monkeypatch.undo()
    assert impression_outcomes_record(now=T0 + closes + timedelta(minutes=5)) == 3


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="races are tested on PostgreSQL")
def test_two_recorders_racing_record_each_list_exactly_once(catalog, closes, monkeypatch):
    monkeypatch.setattr(outcomes, "OUTCOME_BATCH", 7)
    for n in range(60):
        serve(user(f"u{n % 9}"), catalog[:10], T0 + timedelta(seconds=20 * n))
    barrier = threading.Barrier(2)

    def record(_):
        barrier.wait()
        try:
            return impression_outcomes_record(now=T0 + closes + timedelta(hours=1))
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=2) as pool:
        written = list(pool.map(record, range(2)))
    assert sum(written) == ImpressionOutcome.objects.count() == 60
    assert OutcomeWatermark.objects.count() == 1


@pytest.mark.django_db
def test_the_rows_agree_with_the_raw_attribution_of_the_same_lists(catalog):
    experiment_traffic(
        experiment=7,
        items=catalog,
        users=60,
        start=T0,
        control_rate=0.5,
        treatment_rate=0.3,
        treatment_errors=0.1,
        seed=4,
    )
    shown = serve(user("x1"), catalog[:10], T0 + timedelta(minutes=1), version=2, arm="challenger", experiment=7)
    event(user("x1"), catalog[5], "rating", T0 + timedelta(minutes=3), value=4.0)
    event(user("x1"), catalog[6], "view", T0 + timedelta(minutes=4), rec=shown)
    outcomes_recorded()
    raw = impression_outcomes(impressions=Impression.objects.all()).set_index("id")
    rows = {row.impression_id: row for row in ImpressionOutcome.objects.all()}
    assert set(rows) == set(raw.index)
    for pk, expected in raw.iterrows():
        row = rows[pk]
        assert (row.clicked, row.hit, row.rating_count) == (
            expected["clicked"],
            expected["hit"],
            expected["rating_count"],
        )
        assert row.rating_sum == pytest.approx(expected["rating_sum"])
        version = None if pd.isna(expected["model_version"]) else expected["model_version"]  # a fallback's list
        assert (row.strategy, row.arm, row.model_version, row.user_id) == (
            expected["strategy"],
            expected["arm"],
            version,
            expected["user_id"],
        )
    challenger = raw[raw["model_version"] == 2]
    rate = online_hit_rate(model_version=2, start=T0, end=T0 + timedelta(days=1))
    assert (rate.impressions, rate.hits) == (len(challenger), int(challenger["hit"].sum()))
    routed = raw[raw["routed_version"] == 2]  # fallbacks included
    [bucket] = online_metrics(version=2, start=T0 - timedelta(days=1), end=T0 + timedelta(days=1))
    assert bucket["impressions"] == len(routed) and bucket["ctr"] == pytest.approx(routed["clicked"].mean())
    assert bucket["error_share"] > 0 and bucket["error_share"] == pytest.approx((routed["strategy"] == "error").mean())
    assert bucket["median_delay_s"] == pytest.approx(routed["delay_s"].median())
    assert bucket["mean_rating"] == 4.0 and bucket["complete"] is False


@pytest.mark.django_db
def test_a_bucket_is_complete_once_every_list_in_it_is_recorded(catalog, closes):
    serve(user(), catalog[:10], T0 + timedelta(minutes=50))
    impression_outcomes_record(now=T0 + timedelta(minutes=50) + closes)
    [open_bucket] = online_metrics(version=1, start=T0, end=T0 + timedelta(hours=2), bucket="hour")
    assert open_bucket["complete"] is False and open_bucket["impressions"] == 1
    impression_outcomes_record(now=T0 + timedelta(hours=1) + closes)
    [closed_bucket] = online_metrics(version=1, start=T0, end=T0 + timedelta(hours=2), bucket="hour")
    assert closed_bucket["complete"] is True


@pytest.mark.django_db
def test_beat_runs_the_recorder_every_minute_on_the_system_clock(catalog, closes, replay_clock):
    periodic_tasks_setup(check_every_seconds=300)
    periodic = PeriodicTask.objects.get(task="recommendations.outcomes_record")
    assert periodic.enabled and periodic.interval.every == 60 and periodic.task == outcomes_record_task.name
    serve(user(), catalog[:10], T0)
    clock_set(simulated_now=T0 + closes, speed=0.0)
    assert outcomes_record_task.apply().get() == 1
    assert outcomes_record_task.apply().get() == 0
