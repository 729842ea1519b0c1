from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError

from recsite.errors import ApplicationError, ConflictError
from registry.models import (
    AB_TRAFFIC_PERCENT,
    CANARY_STEPS_ERROR,
    SHADOW_TRAFFIC_PERCENT,
    Alias,
    Deployment,
    DeploymentChange,
    Experiment,
    ModelStatus,
    canary_steps_error,
)
from registry.selectors import serving_pointers
from registry.services import (
    ChallengerInput,
    challenger_start,
    challenger_stop,
    challenger_traffic_advance,
    model_version_promote,
    model_version_rollback,
)
from retraining.models import RetrainPolicy
from tests.registry.factories import registered_version

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 5, 1, tzinfo=UTC)


@pytest.fixture
def versions(tmp_path):
    first, second, third = (registered_version(tmp_path) for _ in range(3))
    model_version_promote(version=first.version, actor="test")
    return first, second, third


def start(version, mode="ab", **kwargs):
    data = ChallengerInput(version=version.version, mode=mode, **kwargs)
    return challenger_start(data=data, actor="op", reason="try it", at=T0)


def test_starting_an_ab_test_points_the_challenger_and_audits_it(versions):
    champion, candidate, _ = versions
    experiment = start(candidate, traffic_percent=30)
    assert serving_pointers() == type(serving_pointers())(
        champion=champion.version,
        challenger=candidate.version,
        mode="ab",
        traffic_percent=30,
        experiment_id=experiment.pk,
    )
    assert experiment.champion == champion and experiment.status == "running"
    change = DeploymentChange.objects.filter(alias=Alias.CHALLENGER).first()
    assert (
        change.action == "challenger_start"
        and change.to_version == candidate
        and change.details["traffic_percent"] == 30
    )


def test_a_canary_starts_at_its_first_step(versions):
    experiment = start(versions[1], mode="canary", steps=(10, 50, 100))
    assert experiment.traffic_percent == 10 and serving_pointers().traffic_percent == 10


@pytest.mark.parametrize("steps", [(), (50, 10, 100), (10, 50), (0, 100), (10, 10, 100)])
def test_a_canary_schedule_must_rise_to_100(versions, steps):
    with pytest.raises(ApplicationError, match="Canary steps"):
        start(versions[1], mode="canary", steps=steps)
    assert not Experiment.objects.exists()


def test_the_champion_or_a_failed_version_cannot_be_a_challenger(versions):
    with pytest.raises(ApplicationError, match="active"):
        start(versions[0])
    versions[2].status = ModelStatus.FAILED
    versions[2].save()
    with pytest.raises(ApplicationError, match="failed"):
        start(versions[2])


def test_a_second_experiment_is_a_conflict_unless_it_replaces_the_first(versions):
    first = start(versions[1], traffic_percent=20)
    with pytest.raises(ConflictError):
        start(versions[2], traffic_percent=20)
    second = challenger_start(
        data=ChallengerInput(version=versions[2].version, mode="shadow", traffic_percent=100),
        actor="op",
        reason="newer",
        at=T0,
        replace=True,
    )
    first.refresh_from_db()
    assert first.status == "stopped" and "superseded" in first.outcome_reason
    assert serving_pointers().challenger == versions[2].version and second.status == "running"


def test_advancing_a_canary_is_a_compare_and_set_on_its_step(versions):
    experiment = start(versions[1], mode="canary", steps=(10, 50, 100))
    later = T0 + timedelta(hours=2)
    advanced = challenger_traffic_advance(
        experiment_id=experiment.pk, step_index=0, actor="rollout", reason="healthy", at=later
    )
    assert (advanced.step_index, advanced.traffic_percent, advanced.step_started_at) == (1, 50, later)
    assert Deployment.objects.get(alias=Alias.CHALLENGER).traffic_percent == 50
    with pytest.raises(ConflictError):
        challenger_traffic_advance(experiment_id=experiment.pk, step_index=0, actor="rollout", reason="again", at=later)


def test_stopping_with_reject_clears_the_pointer_and_rejects_the_version(versions):
    start(versions[1], mode="canary", steps=(10, 100))
    stopped = challenger_stop(actor="rollout", reason="worse online", at=T0, reject=True, outcome="rolled_back")
    versions[1].refresh_from_db()
    assert stopped.status == "rolled_back" and versions[1].status == ModelStatus.REJECTED
    assert serving_pointers().challenger is None and serving_pointers().traffic_percent == 0
    assert list(DeploymentChange.objects.filter(alias=Alias.CHALLENGER).values_list("action", flat=True)[:2]) == [
        "reject",
        "challenger_stop",
    ]


def test_stopping_when_nothing_runs_is_a_clear_error(versions):
    with pytest.raises(ApplicationError, match="No experiment"):
        challenger_stop(actor="op", reason="", at=T0)


def test_promoting_the_challenger_ends_its_experiment_as_promoted(versions):
    experiment = start(versions[1])
    model_version_promote(version=versions[1].version, actor="op")
    experiment.refresh_from_db()
    assert experiment.status == "promoted" and serving_pointers().challenger is None
    assert serving_pointers().champion == versions[1].version


def test_a_rollback_of_the_champion_stops_the_experiment(versions, tmp_path):
    model_version_promote(version=versions[2].version, actor="op")
    experiment = start(versions[1])
    model_version_rollback(actor="op", reason="bad")
    experiment.refresh_from_db()
    assert experiment.status == "stopped" and "champion changed" in experiment.outcome_reason


def test_a_shadow_without_a_share_scores_the_default_quarter_which_is_also_the_policys(versions):
    experiment = start(versions[1], mode="shadow")
    assert experiment.traffic_percent == SHADOW_TRAFFIC_PERCENT == RetrainPolicy().shadow_traffic_percent == 25
    assert RetrainPolicy().ab_traffic_percent == AB_TRAFFIC_PERCENT


@pytest.mark.parametrize("steps", [[10, 50, 100], (1, 100), [100]])
def test_the_registry_policy_and_services_accept_the_same_canary_schedules(steps):
    assert canary_steps_error(steps) is None
    RetrainPolicy(canary_steps=list(steps)).clean()


@pytest.mark.parametrize(
    "steps", [[], [50, 10, 100], [10, 50], [0, 100], [10, 10, 100], [10, True, 100], [10.5, 100], "10,100", None]
)
def test_the_policy_refuses_with_the_registrys_message_what_the_registry_refuses(steps):
    assert canary_steps_error(steps) == CANARY_STEPS_ERROR
    with pytest.raises(ValidationError, match="Canary steps must be whole percentages"):
        RetrainPolicy(canary_steps=steps).clean()


@pytest.mark.parametrize("percent", [0, 101, True])
def test_a_share_outside_1_to_100_is_refused_by_the_registry_and_by_the_policy(versions, percent):
    with pytest.raises(ApplicationError, match="between 1 and 100"):
        start(versions[1], mode="ab", traffic_percent=percent)
    with pytest.raises(ValidationError, match="between 1 and 100"):
        RetrainPolicy(ab_traffic_percent=percent).clean()
    assert not Experiment.objects.exists()


def test_steps_for_an_ab_test_or_a_share_for_a_canary_are_refused(versions):
    with pytest.raises(ApplicationError, match="canary only"):
        start(versions[1], mode="ab", steps=(10, 100))
    with pytest.raises(ApplicationError, match="follows its steps"):
        start(versions[1], mode="canary", steps=(10, 100), traffic_percent=10)
    assert not Experiment.objects.exists()
