from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from recommendations.clock import clock_set
from recommendations.models import Item
from registry.models import Alias, DeploymentChange, Experiment, ModelStatus
from registry.selectors import serving_pointers
from registry.services import model_version_promote
from retraining.models import RunStatus
from retraining.selectors import experiment_rows, experiments_table
from retraining.services.policy import policy_active
from retraining.services.rollout import candidate_deploy, challenger_deploy, rollout_check
from retraining.services.triggers import triggers_check
from tests.recommendations.factories import experiment_traffic, outcomes_recorded
from tests.registry.factories import registered_version

# The tests freeze time with clock_set.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("replay_clock")]
T0 = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture
def policy():
    policy = policy_active()
    policy.canary_steps, policy.rollout_min_step_minutes, policy.rollout_min_impressions = [10, 50, 100], 30, 200
    policy.save()
    return policy


@pytest.fixture
def versions(tmp_path):
    champion, candidate = registered_version(tmp_path), registered_version(tmp_path)
    model_version_promote(version=champion.version, actor="test")
    return champion, candidate


@pytest.fixture
def catalog():
    return [Item.objects.create(external_id=f"i{n}") for n in range(10)]


def canary(versions, policy):
    clock_set(simulated_now=T0, speed=0.0)
    return challenger_deploy(version=versions[1].version, mode="canary", actor="op", reason="test", policy=policy)


def traffic(experiment, catalog, versions, *, start, control, treatment, errors=0.0, seed=0):
    experiment_traffic(
        experiment=experiment.pk,
        items=catalog,
        users=300,
        start=start,
        control_rate=control,
        treatment_rate=treatment,
        versions=(versions[0].version, versions[1].version),
        treatment_errors=errors,
        seed=seed,
        prefix=f"s{seed}-",
    )
    outcomes_recorded()


def test_a_canary_that_is_clearly_worse_online_is_rolled_back_and_rejected(versions, policy, catalog):
    experiment = canary(versions, policy)
    traffic(experiment, catalog, versions, start=T0, control=0.45, treatment=0.10)
    check = rollout_check(now=T0 + timedelta(minutes=5))
    assert check.action == "rolled_back" and "significantly worse" in check.reason
    experiment.refresh_from_db()
    versions[1].refresh_from_db()
    assert experiment.status == "rolled_back" and versions[1].status == ModelStatus.REJECTED
    assert serving_pointers().challenger is None and serving_pointers().champion == versions[0].version
    audit = DeploymentChange.objects.filter(alias=Alias.CHALLENGER, action="challenger_stop").first()
    assert audit.actor == "rollout" and "rolled back at 10%" in audit.reason


def test_a_canary_that_errors_is_rolled_back_even_before_it_is_judged_on_clicks(versions, policy, catalog):
    experiment = canary(versions, policy)
    traffic(experiment, catalog, versions, start=T0, control=0.3, treatment=0.3, errors=0.2)
    check = rollout_check(now=T0 + timedelta(minutes=5))
    assert check.action == "rolled_back" and "error share" in check.reason


def test_a_better_canary_is_held_then_advanced_step_by_step_and_becomes_champion(versions, policy, catalog):
    experiment = canary(versions, policy)
    traffic(experiment, catalog, versions, start=T0, control=0.20, treatment=0.45, seed=1)
    held = rollout_check(now=T0 + timedelta(minutes=10))
    assert held.action == "held" and "held 10 of 30 min" in held.reason
    advanced = rollout_check(now=T0 + timedelta(minutes=31))
    assert advanced.action == "advanced" and serving_pointers().traffic_percent == 50
    step_two = T0 + timedelta(minutes=31)
    waiting = rollout_check(now=step_two + timedelta(minutes=40))
    assert waiting.action == "held" and "challenger impressions in this step" in waiting.reason
    traffic(experiment, catalog, versions, start=step_two + timedelta(minutes=1), control=0.20, treatment=0.45, seed=2)
    promoted = rollout_check(now=step_two + timedelta(minutes=41))
    assert promoted.action == "promoted"
    experiment.refresh_from_db()
    assert experiment.status == "promoted"
    assert serving_pointers().champion == versions[1].version and serving_pointers().challenger is None
    assert list(DeploymentChange.objects.filter(actor="rollout").values_list("action", flat=True)) == [
        "challenger_stop",
        "promote",
        "traffic",
    ]


def test_an_ab_test_is_only_reported_never_acted_on(versions, policy, catalog):
    clock_set(simulated_now=T0, speed=0.0)
    experiment = challenger_deploy(version=versions[1].version, mode="ab", actor="op", reason="", policy=policy)
    traffic(experiment, catalog, versions, start=T0, control=0.45, treatment=0.10)
    check = rollout_check(now=T0 + timedelta(days=1))
    experiment.refresh_from_db()
    assert check.action == "reported" and check.reason == "challenger_worse"
    assert experiment.status == "running" and experiment.last_report["verdict"] == "challenger_worse"
    assert experiment.traffic_percent == policy.ab_traffic_percent == 50


def test_a_rollout_check_reads_neither_impressions_nor_events_and_its_queries_do_not_grow_with_traffic(
    versions, policy, catalog
):
    experiment = canary(versions, policy)
    experiment_traffic(
        experiment=experiment.pk,
        items=catalog,
        users=4,
        start=T0,
        control_rate=0.5,
        treatment_rate=0.5,
        versions=(versions[0].version, versions[1].version),
        prefix="few-",
    )
    outcomes_recorded()
    with CaptureQueriesContext(connection) as few:
        assert rollout_check(now=T0 + timedelta(minutes=5)).action == "held"
    traffic(experiment, catalog, versions, start=T0 + timedelta(minutes=21), control=0.3, treatment=0.3)
    with CaptureQueriesContext(connection) as many:
        check = rollout_check(now=T0 + timedelta(minutes=6))
    assert check.action == "held" and check.report["arms"]["challenger"]["impressions"] == 456
    raw_tables = ('"recommendations_impression"', '"recommendations_interaction"')
    assert not [
        query["sql"]
        for query in few.captured_queries + many.captured_queries
        if any(table in query["sql"] for table in raw_tables)
    ]
    assert len(many.captured_queries) == len(few.captured_queries)


def test_nothing_happens_without_an_experiment(versions, policy):
    assert rollout_check(now=T0) is None


@pytest.mark.parametrize(
    "rollout, status, mode",
    [
        ("promote", RunStatus.PROMOTED, None),
        ("canary", RunStatus.CHALLENGER, "canary"),
        ("shadow", RunStatus.CHALLENGER, "shadow"),
    ],
)
def test_the_policy_chooses_what_a_gated_candidate_does(versions, policy, rollout, status, mode):
    policy.candidate_rollout = rollout
    policy.save()
    result = candidate_deploy(
        version=versions[1].version, champion=versions[0].version, reason="gate passed", policy=policy
    )
    assert result == status
    pointers = serving_pointers()
    if mode is None:
        assert pointers.champion == versions[1].version and pointers.challenger is None
    else:
        assert pointers.champion == versions[0].version and (pointers.challenger, pointers.mode) == (
            versions[1].version,
            mode,
        )


def test_the_first_model_is_promoted_whatever_the_policy(tmp_path, policy):
    policy.candidate_rollout = "ab"
    first = registered_version(tmp_path)
    assert candidate_deploy(version=first.version, champion=None, reason="first", policy=policy) == RunStatus.PROMOTED
    assert not Experiment.objects.exists()


def test_the_experiments_table_shows_both_arms_and_the_outcome(versions, policy, catalog):
    experiment = canary(versions, policy)
    traffic(experiment, catalog, versions, start=T0, control=0.45, treatment=0.10)
    rollout_check(now=T0 + timedelta(minutes=5))
    table = experiments_table(experiment_rows())
    row = table.splitlines()[2]
    assert row.startswith(f"| {experiment.pk} | canary 10% | v1: 450 lists, CTR 0.4") and "v2: 450 lists" in row
    assert "challenger_worse | rolled_back | rolled back at 10%: significantly worse online" in row


def test_automatic_retraining_is_held_while_an_experiment_runs(versions, policy, catalog):
    policy.volume_min_events, policy.time_enabled, policy.drift_enabled = 1, False, False
    policy.save()
    experiment_traffic(experiment=None, items=catalog, users=4, start=T0, control_rate=1, treatment_rate=1)
    canary(versions, policy)
    evaluation = triggers_check(now=T0 + timedelta(days=1))
    assert evaluation.fired == "volume" and evaluation.run is None and "held while experiment" in evaluation.action
