import random
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.db import IntegrityError, connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from recommendations.models import EndUser, Impression, Interaction, Item
from recommendations.services.events import EventInput, event_ingest
from recommendations.services.outcomes import impression_outcomes_record
from registry.models import ModelVersion
from registry.services import model_version_promote
from retraining.models import RunStatus, TrainingRun, TriggerEvaluation
from retraining.services.drift import drift_profile, drift_reference, drift_window
from retraining.services.policy import policy_active
from retraining.services.runs import RunInFlight, training_run_advance, training_run_request, training_runs_fail_stale
from retraining.services.triggers import triggers_check
from tests.registry.factories import registered_version

pytestmark = pytest.mark.django_db
T0 = datetime(2024, 3, 1, tzinfo=UTC)
GENRES = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]


@pytest.fixture
def policy():
    policy = policy_active()
    policy.volume_min_events = 500
    policy.time_interval_hours = 48
    policy.cooldown_minutes = 60
    policy.drift_window_days = 3
    policy.drift_window_min_events = 300
    policy.performance_min_impressions = 50
    policy.performance_window_hours = 12
    policy.save()
    return policy


def ingest(n, start, *, users=60, items=40, genre_bias=None, seed=0, hours=24.0):
    """n rating events spread over `hours` from `start`; genre_bias shifts which items are chosen."""
    rng = random.Random(seed)
    if not Item.objects.exists():
        Item.objects.bulk_create(
            [Item(external_id=f"i{k}", categories=[GENRES[k % len(GENRES)]]) for k in range(items)]
        )
    pool = [f"i{k}" for k in range(items) if genre_bias is None or GENRES[k % len(GENRES)] in genre_bias]
    events = [
        EventInput(
            user_id=f"u{rng.randrange(users)}",
            item_id=rng.choice(pool),
            event_type="rating",
            value=rng.choice([3.0, 4.0, 5.0]),
            timestamp=start + timedelta(seconds=rng.uniform(0, hours * 3600)),
        )
        for _ in range(n)
    ]
    for offset in range(0, n, 1000):
        event_ingest(events=events[offset : offset + 1000])


def champion_trained_until(tmp_path, cutoff, *, with_reference=True, policy=None):
    version = registered_version(tmp_path)
    manifest = {}
    if with_reference:
        window = drift_window(end=cutoff, days=policy.drift_window_days, min_events=policy.drift_window_min_events)
        manifest["drift_reference"] = drift_reference(profile=drift_profile(window=window))
    ModelVersion.objects.filter(pk=version.pk).update(training_window_end=cutoff, manifest=manifest)
    model_version_promote(version=version.version, actor="test")
    version.refresh_from_db()
    return version


def verdicts(evaluation):
    return {name: result["verdict"] for name, result in evaluation.results.items()}


def test_a_run_is_single_flight_and_the_second_request_names_the_first(policy):
    first = training_run_request(trigger="manual", requested_by="alice")
    with pytest.raises(RunInFlight) as refused:
        training_run_request(trigger="volume")
    assert refused.value.extra == {"run_id": first.pk, "status": "queued"}
    assert TrainingRun.objects.count() == 1


def test_the_database_itself_refuses_a_second_in_flight_run(policy):
    TrainingRun.objects.create(trigger="manual")
    with pytest.raises(IntegrityError), transaction.atomic():
        TrainingRun.objects.create(trigger="time")


def test_a_finished_run_frees_the_slot(policy):
    first = training_run_request(trigger="manual")
    assert training_run_advance(run_id=first.pk, status=RunStatus.REJECTED)
    second = training_run_request(trigger="manual")
    assert second.pk != first.pk
    first.refresh_from_db()
    assert first.in_flight is None and first.finished_at is not None


def test_a_stale_run_is_failed_and_the_next_can_start(policy):
    run = training_run_request(trigger="manual")
    TrainingRun.objects.filter(pk=run.pk).update(status="training", heartbeat_at=T0)
    assert training_runs_fail_stale() == [run.pk]
    run.refresh_from_db()
    assert run.status == "failed" and "stale" in run.error
    training_run_request(trigger="manual")


def test_volume_fires_with_enough_new_events_since_the_champions_cutoff_and_not_before(policy, tmp_path):
    ingest(600, T0, seed=1)
    cutoff = T0 + timedelta(days=1)
    champion_trained_until(tmp_path, cutoff, policy=policy)
    ingest(300, cutoff, seed=2, hours=6)
    quiet = triggers_check(now=cutoff + timedelta(hours=7))
    assert verdicts(quiet)["volume"] == "quiet" and quiet.results["volume"]["value"] == 300
    assert quiet.run is None
    ingest(300, cutoff + timedelta(hours=7), seed=3, hours=4)
    fired = triggers_check(now=cutoff + timedelta(hours=12))
    assert verdicts(fired)["volume"] == "fire" and fired.fired == "volume"
    assert fired.run.trigger == "volume" and fired.run.evidence["volume"]["value"] == 600


def test_time_fires_once_the_interval_has_passed(policy, tmp_path):
    policy.drift_enabled = False
    policy.save()
    ingest(600, T0, seed=1)
    cutoff = T0 + timedelta(days=1)
    champion_trained_until(tmp_path, cutoff, policy=policy)
    assert verdicts(triggers_check(now=cutoff + timedelta(hours=47)))["time"] == "quiet"
    fired = triggers_check(now=cutoff + timedelta(hours=49))
    assert verdicts(fired)["time"] == "fire" and fired.run.trigger == "time"


def test_drift_fires_when_tastes_change_and_stays_quiet_when_they_do_not(policy, tmp_path):
    policy.volume_enabled = policy.time_enabled = False
    policy.save()
    ingest(1500, T0, seed=1, hours=72, genre_bias=["Action", "Comedy", "Drama"])
    cutoff = T0 + timedelta(days=3)
    champion_trained_until(tmp_path, cutoff, policy=policy)
    ingest(1500, cutoff, seed=2, hours=72, genre_bias=["Action", "Comedy", "Drama"])
    same = triggers_check(now=cutoff + timedelta(days=3))
    assert verdicts(same)["drift"] == "quiet", same.results["drift"]
    ingest(3000, cutoff + timedelta(days=3), seed=3, hours=72, users=300, genre_bias=["Horror", "Romance", "Sci-Fi"])
    changed = triggers_check(now=cutoff + timedelta(days=6))
    assert verdicts(changed)["drift"] == "fire", changed.results["drift"]
    assert changed.run.trigger == "drift"


def test_performance_fires_when_the_online_hit_rate_falls(policy, tmp_path):
    policy.volume_enabled = policy.time_enabled = policy.drift_enabled = False
    policy.save()
    ingest(100, T0, seed=1)
    champion = champion_trained_until(tmp_path, T0 + timedelta(days=1), with_reference=False)
    user, item = EndUser.objects.first(), Item.objects.first()

    def serve(start, n, hit_share):
        for k in range(n):
            rec = uuid.uuid4()
            at = start + timedelta(minutes=5 * k)
            Impression.objects.create(
                recommendation_id=rec,
                user=user,
                model_version=champion.version,
                strategy="model",
                items=[item.pk],
                served_at=at,
            )
            if k < n * hit_share:
                Interaction.objects.create(
                    user=user, item=item, event_type="click", timestamp=at, recommendation_id=rec
                )

    first = T0 + timedelta(days=2)
    serve(first, 100, 0.30)
    serve(first + timedelta(hours=24), 100, 0.29)
    impression_outcomes_record(now=first + timedelta(hours=24 + 9))
    steady = triggers_check(now=first + timedelta(hours=24 + 9))
    assert verdicts(steady)["performance"] == "quiet", steady.results["performance"]
    serve(first + timedelta(hours=48), 100, 0.10)
    impression_outcomes_record(now=first + timedelta(hours=48 + 9))
    with CaptureQueriesContext(connection) as queries:
        fallen = triggers_check(now=first + timedelta(hours=48 + 9))
    assert not [q["sql"] for q in queries.captured_queries if '"recommendations_impression"' in q["sql"]], (
        "the performance trigger reads the recorded outcomes, not the served lists"
    )
    assert verdicts(fallen)["performance"] == "fire", fallen.results["performance"]
    assert fallen.run.trigger == "performance"


def test_cooldown_keeps_a_second_automatic_run_from_starting(policy, tmp_path):
    ingest(600, T0, seed=1)
    cutoff = T0 + timedelta(days=1)
    champion_trained_until(tmp_path, cutoff, policy=policy)
    ingest(600, cutoff, seed=2, hours=2)
    first = triggers_check(now=cutoff + timedelta(hours=3))
    training_run_advance(run_id=first.run.pk, status=RunStatus.REJECTED)
    second = triggers_check(now=cutoff + timedelta(hours=3, minutes=30))
    assert second.fired == "volume" and second.run is None and "cooling down" in second.action
    third = triggers_check(now=cutoff + timedelta(hours=4, minutes=1))
    assert third.run is not None


def test_nothing_fires_on_an_empty_system(policy):
    evaluation = triggers_check()
    assert evaluation.fired == "" and evaluation.run is None
    assert verdicts(evaluation) == {"time": "n/a", "volume": "quiet", "performance": "n/a", "drift": "n/a"}


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(connection.vendor != "postgresql", reason="races are tested on PostgreSQL")
def test_two_trigger_checks_and_a_manual_retrain_racing_start_exactly_one_run(tmp_path):
    policy = policy_active()
    policy.volume_min_events = 100
    policy.save()
    ingest(300, T0, seed=1)
    barrier = threading.Barrier(3)
    errors = []

    def run(action):
        try:
            barrier.wait()
            action()
        except RunInFlight:
            pass
        except Exception as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    now = T0 + timedelta(days=2)
    actions = [
        lambda: triggers_check(now=now),
        lambda: triggers_check(now=now),
        lambda: training_run_request(trigger="manual", requested_by="ops"),
    ]
    threads = [threading.Thread(target=run, args=(a,)) for a in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert TrainingRun.objects.count() == 1
    assert TriggerEvaluation.objects.count() == 2
