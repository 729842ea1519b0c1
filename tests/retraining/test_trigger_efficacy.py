"""Which triggers paid off: every run records the triggers that started it, the efficacy report (selector, API,
admin page, MODEL_COMPARISON.md) and the policy's minimum of new holdout users."""

import importlib
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from django.apps import apps
from django.core.management import call_command
from django.utils import timezone as django_timezone

from registry.services import model_version_promote, model_version_reject
from retraining.models import HoldReason, RunStatus, TrainingRun, TriggerEvaluation
from retraining.selectors import trigger_efficacy_rows
from retraining.services.gate import MIN_COMPARISON_USERS, NOT_ENOUGH_NEW_DATA, gate_decide
from retraining.services.runs import retrain_request
from retraining.services.triggers import triggers_check
from tests.registry.factories import registered_version
from tests.retraining import test_triggers
from tests.retraining.test_triggers import T0, champion_trained_until, ingest

pytestmark = pytest.mark.django_db
policy = test_triggers.policy  # the trigger tests' fixture (model_store is autouse in tests/conftest.py)


def by_trigger(rows):
    return {row["trigger"]: row for row in rows}


# --- which triggers started a run ---------------------------------------------------------------------------------


def test_a_run_records_every_trigger_that_fired_for_it(policy, tmp_path):
    policy.drift_enabled = False
    policy.save()
    ingest(600, T0, seed=1)
    cutoff = T0 + timedelta(days=1)
    champion_trained_until(tmp_path, cutoff, policy=policy)
    ingest(600, cutoff, seed=2, hours=24)
    evaluation = triggers_check(now=cutoff + timedelta(hours=49))
    assert set(evaluation.fired_kinds()) == {"time", "volume"}
    assert evaluation.run.trigger == "volume" and evaluation.run.triggers == ["volume", "time"]
    assert evaluation.held_reason == ""


def test_a_manual_run_records_manual_as_its_only_trigger():
    run = retrain_request(requested_by="ops")
    assert run.trigger == "manual" and run.triggers == ["manual"]


def test_the_data_migration_fills_triggers_from_what_the_beat_recorded_and_codes_old_refusals():
    migration = importlib.import_module("retraining.migrations.0008_trigger_efficacy")
    fired_together = TrainingRun.objects.create(
        trigger="drift", evidence={"fired": ["drift", "volume"]}, status=RunStatus.FAILED, in_flight=None
    )
    refused = TrainingRun.objects.create(
        trigger="time",
        status=RunStatus.REJECTED,
        in_flight=None,
        gate={"passed": False, "failures": ["not enough new holdout data since the champion's cut-off: 3 users"]},
    )
    manual = TrainingRun.objects.create(trigger="manual", status=RunStatus.QUEUED)
    TrainingRun.objects.update(triggers=[])
    migration.runs_record_triggers(apps, None)
    for run in (fired_together, refused, manual):
        run.refresh_from_db()
    assert fired_together.triggers == ["drift", "volume"] and "refusal_code" not in fired_together.gate
    assert refused.triggers == ["time"] and refused.gate["refusal_code"] == NOT_ENOUGH_NEW_DATA
    assert manual.triggers == ["manual"]


# --- the gate's refusal code --------------------------------------------------------------------------------------


def test_the_gate_codes_a_refusal_for_too_few_new_holdout_users_and_only_that_one():
    def decide(users, gain):
        champion_users = np.full(users, 0.1)
        return gate_decide(
            candidate={"ndcg@10": 0.1 + gain},
            popularity={"ndcg@10": 0.05},
            champion={"ndcg@10": 0.1},
            candidate_user_ndcg=champion_users + gain,
            champion_user_ndcg=champion_users,
            min_relative_gain=0.01,
            guardrail_tolerance=0.05,
            bootstrap_tolerance=0.005,
            bootstrap_samples=200,
        )

    assert decide(MIN_COMPARISON_USERS - 1, 0.2).as_dict()["refusal_code"] == NOT_ENOUGH_NEW_DATA
    worse = decide(MIN_COMPARISON_USERS, -0.05)
    assert not worse.passed and worse.refusal_code == ""
    assert decide(MIN_COMPARISON_USERS, 0.2).refusal_code == ""


# --- the policy's minimum of new holdout users -------------------------------------------------------------------


def test_too_few_new_users_hold_a_fired_trigger_and_the_evaluation_says_why(policy, tmp_path):
    policy.drift_enabled = False
    policy.min_new_holdout_users = 10
    policy.save()
    ingest(600, T0, seed=1)
    cutoff = T0 + timedelta(days=1)
    champion = champion_trained_until(tmp_path, cutoff, policy=policy)
    ingest(600, cutoff, seed=2, hours=6, users=6)  # plenty of events, from only 6 users
    held = triggers_check(now=cutoff + timedelta(hours=7))
    assert held.fired == "volume" and held.run is None and not TrainingRun.objects.exists()
    assert held.held_reason == HoldReason.NOT_ENOUGH_NEW_DATA
    assert f"6 users with events after {champion}'s training cut-off, 10 required" in held.action
    policy.min_new_holdout_users = 6
    policy.save()
    started = triggers_check(now=cutoff + timedelta(hours=7))
    assert started.run is not None and started.held_reason == ""


def test_the_minimum_of_new_users_is_off_at_zero_and_never_holds_the_first_model(policy):
    ingest(600, T0, seed=1, users=3)
    policy.min_new_holdout_users = 0
    policy.save()
    assert triggers_check(now=T0 + timedelta(days=2)).run is not None  # no champion: nothing to compare on
    TrainingRun.objects.all().delete()
    policy.min_new_holdout_users = 50
    policy.save()
    first = triggers_check(now=T0 + timedelta(days=2))
    assert first.run is not None and first.held_reason == ""


# --- the efficacy report on a fixture history ---------------------------------------------------------------------


def finished_run(*, triggers, status, seconds, gate=None, version=None, created=None):
    start = datetime(2026, 1, 1, tzinfo=UTC)
    run = TrainingRun.objects.create(
        trigger=triggers[0],
        triggers=triggers,
        status=status,
        in_flight=True if status == RunStatus.QUEUED else None,
        started_at=None if status == RunStatus.QUEUED else start,
        finished_at=None if status == RunStatus.QUEUED else start + timedelta(seconds=seconds),
        gate=gate or {},
        model_version=version,
    )
    if created is not None:
        TrainingRun.objects.filter(pk=run.pk).update(created_at=created)
    return run


def gated(candidate, champion, **extra):
    return {
        "passed": True,
        "numbers": {
            "candidate": {"ndcg@10": candidate},
            "champion": None if champion is None else {"ndcg@10": champion},
        },
        **extra,
    }


@pytest.fixture
def history(tmp_path):
    """manual v1 (first model) → volume+drift v2 (+0.02) → volume rejected for no new data → drift v4 (+0.03) →
    time failed → volume in flight; and one check where volume fired but too few new users held the run."""
    long_ago = django_timezone.now() - timedelta(days=30)
    versions = [registered_version(tmp_path, ndcg=ndcg) for ndcg in (0.10, 0.12, 0.11, 0.15)]
    model_version_promote(version=versions[0].version, actor="gate")
    finished_run(
        triggers=["manual"],
        status=RunStatus.PROMOTED,
        seconds=100,
        gate=gated(0.10, None),
        version=versions[0],
        created=long_ago,
    )
    model_version_promote(version=versions[1].version, actor="gate")
    finished_run(
        triggers=["volume", "drift"],
        status=RunStatus.PROMOTED,
        seconds=200,
        gate=gated(0.12, 0.10),
        version=versions[1],
        created=long_ago,
    )
    model_version_reject(version=versions[2].version, actor="gate", reason="no new data")
    finished_run(
        triggers=["volume"],
        status=RunStatus.REJECTED,
        seconds=50,
        version=versions[2],
        created=long_ago,
        gate={
            "passed": False,
            "refusal_code": NOT_ENOUGH_NEW_DATA,
            "numbers": {"candidate": {"ndcg@10": 0.11}, "champion": {"ndcg@10": 0.12}},
        },
    )
    model_version_promote(version=versions[3].version, actor="gate")
    finished_run(
        triggers=["drift"], status=RunStatus.PROMOTED, seconds=300, gate=gated(0.15, 0.12), version=versions[3]
    )
    finished_run(triggers=["time"], status=RunStatus.FAILED, seconds=10)
    finished_run(triggers=["volume"], status=RunStatus.QUEUED, seconds=0)
    TriggerEvaluation.objects.create(
        clock=django_timezone.now(),
        fired="volume",
        held_reason=HoldReason.NOT_ENOUGH_NEW_DATA,
        results={"volume": {"verdict": "fire"}, "time": {"verdict": "quiet"}},
    )
    return long_ago


def test_the_efficacy_report_counts_runs_promotions_gains_compute_and_wasted_runs_per_trigger(history):
    rows = by_trigger(trigger_efficacy_rows())
    assert list(rows) == ["time", "volume", "performance", "drift", "manual", "all"]
    volume, drift, all_runs = rows["volume"], rows["drift"], rows["all"]
    assert (volume["runs"], volume["finished"], volume["promotions"], volume["rejected"]) == (3, 2, 1, 1)
    assert volume["mean_ndcg_gain"] == pytest.approx(0.02) and volume["best_ndcg_gain"] == pytest.approx(0.02)
    assert volume["rejected_for_no_new_data"] == 1 and volume["no_new_data_share"] == pytest.approx(0.5)
    assert volume["training_seconds"] == pytest.approx(250) and volume["held_for_no_new_data"] == 1
    assert (drift["runs"], drift["promotions"], drift["no_new_data_share"]) == (2, 2, 0)
    assert drift["mean_ndcg_gain"] == pytest.approx(0.025) and drift["best_ndcg_gain"] == pytest.approx(0.03)
    assert (rows["manual"]["promotions"], rows["manual"]["promotions_compared"]) == (1, 0)
    assert rows["manual"]["mean_ndcg_gain"] is None  # a first model has no champion to gain over
    time_row = rows["time"]
    assert (time_row["failed"], time_row["training_seconds"], time_row["held_for_no_new_data"]) == (1, 10, 0)
    assert rows["performance"]["runs"] == 0 and rows["performance"]["no_new_data_share"] is None
    assert (all_runs["runs"], all_runs["finished"], all_runs["promotions"]) == (6, 5, 3)
    assert all_runs["promotions_compared"] == 2
    assert all_runs["no_new_data_share"] == pytest.approx(0.2) and all_runs["training_seconds"] == pytest.approx(660)
    assert all_runs["mean_ndcg_gain"] == pytest.approx(0.025) and all_runs["held_for_no_new_data"] == 1


def test_a_candidate_promoted_later_from_its_experiment_counts_as_a_promotion(tmp_path):
    champion, challenger = registered_version(tmp_path), registered_version(tmp_path, ndcg=0.2)
    model_version_promote(version=champion.version, actor="gate")
    finished_run(triggers=["drift"], status=RunStatus.CHALLENGER, seconds=5, gate=gated(0.2, 0.1), version=challenger)
    assert by_trigger(trigger_efficacy_rows())["drift"]["promotions"] == 0
    model_version_promote(version=challenger.version, actor="experiment")
    drift = by_trigger(trigger_efficacy_rows())["drift"]
    assert drift["promotions"] == 1 and drift["best_ndcg_gain"] == pytest.approx(0.1)


def test_since_leaves_out_older_runs_and_checks(history):
    rows = by_trigger(trigger_efficacy_rows(since=history + timedelta(days=1)))
    assert rows["all"]["runs"] == 3 and rows["volume"]["runs"] == 1 and rows["manual"]["runs"] == 0
    assert rows["all"]["held_for_no_new_data"] == 1 and rows["all"]["rejected_for_no_new_data"] == 0


# --- the API, the admin page, MODEL_COMPARISON.md -----------------------------------------------------------------


def test_the_efficacy_api_answers_one_row_per_trigger_kind(history, admin_client_api):
    response = admin_client_api.get("/api/v1/triggers/efficacy")
    assert response.status_code == 200
    body = response.json()
    assert body["since"] is None
    assert set(body["triggers"][0]) == {
        "trigger",
        "runs",
        "finished",
        "promotions",
        "promotions_compared",
        "mean_ndcg_gain",
        "best_ndcg_gain",
        "rejected",
        "rejected_for_no_new_data",
        "no_new_data_share",
        "failed",
        "training_seconds",
        "held_for_no_new_data",
    }
    drift = by_trigger(body["triggers"])["drift"]
    assert drift["runs"] == 2 and drift["best_ndcg_gain"] == pytest.approx(0.03)
    since = (history + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    filtered = admin_client_api.get("/api/v1/triggers/efficacy", {"since": since}).json()
    assert filtered["since"].startswith(since[:19]) and by_trigger(filtered["triggers"])["all"]["runs"] == 3


@pytest.mark.parametrize("since", ["yesterday", "2026-13-01", "3026-01-01T00:00:00Z", "0000-01-01"])
def test_a_bad_since_is_a_clear_400(admin_client_api, since):
    response = admin_client_api.get("/api/v1/triggers/efficacy", {"since": since})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "since"


def test_the_efficacy_api_needs_the_admin_scope(serve_client):
    assert serve_client.get("/api/v1/triggers/efficacy").status_code == 403


def test_the_admin_efficacy_page_is_linked_from_the_runs_and_shows_a_row_per_trigger(history, staff_client):
    runs = staff_client.get("/admin/retraining/trainingrun/")
    assert b'id="trigger-efficacy-link"' in runs.content and b"Volume + Drift" in runs.content
    page = staff_client.get("/admin/retraining/trainingrun/efficacy/")
    assert page.status_code == 200
    html = page.content.decode()
    for kind in ("time", "volume", "performance", "drift", "manual", "all"):
        assert f'id="efficacy-{kind}"' in html
    assert "0.0300" in html and "4 min 10 s" in html  # drift's best gain; volume's 250 s of training
    bad = staff_client.get("/admin/retraining/trainingrun/efficacy/", {"since": "not a date"})
    assert bad.status_code == 400 and "since:" in bad.content.decode()


def test_model_comparison_has_a_trigger_efficacy_section(history, tmp_path):
    output = tmp_path / "MODEL_COMPARISON.md"
    call_command("export_model_comparison", "--output", str(output))
    text = output.read_text()
    assert "## Trigger efficacy" in text and "| Version |" in text
    volume = next(line for line in text.splitlines() if line.startswith("| volume |"))
    assert volume == "| volume | 3 | 1 | +0.0200 | +0.0200 | 4 min 10 s | 1 (50%) | 1 |"
