"""Serving during an experiment: routing by arm, shadow scoring, a failing challenger, and a canary judged on
what users did with the lists the API actually served."""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command
from django.test import override_settings

from recommendations.clock import clock_set
from recommendations.models import Impression, Interaction, Item
from recommendations.routing import route_for
from registry.artifacts import artifact_read
from registry.models import ModelStatus
from registry.selectors import serving_pointers
from registry.services import VersionInput, model_version_promote, model_version_register
from retraining.services.policy import policy_active
from retraining.services.rollout import challenger_deploy, rollout_check
from tests.recommendations.factories import outcomes_recorded, store_history, train_and_register

# The tests freeze time with clock_set.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("replay_clock")]
URL = "/api/v1/users/{}/recommendations"
USERS = [f"user-{n}" for n in range(80)]
T0 = datetime(2026, 7, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def two_versions(django_db_setup, django_db_blocker, tmp_path_factory):
    """History, v1 promoted and v2 registered from the same training (so their lists are identical and any
    difference a test sees comes from routing), committed once for the module."""
    folder = tmp_path_factory.mktemp("experiments")
    with django_db_blocker.unblock(), override_settings(MODEL_STORE=folder / "store"):
        store_history()
        first = train_and_register(folder)
        second = model_version_register(artifact_dir=folder / "run", data=_same_data(first))
        model_version_promote(version=first.version, actor="test")
        yield first, second
        call_command("flush", interactive=False, verbosity=0)


def _same_data(version):
    return VersionInput(
        metrics=version.metrics,
        baseline_metrics=version.baseline_metrics,
        dataset_stats=version.dataset_stats,
        parameters=version.parameters,
        manifest=version.manifest,
    )


@pytest.fixture
def versions(two_versions, settings):
    settings.MODEL_STORE = Path(two_versions[0].artifact_path).parent
    settings.MODEL_POLL_THREAD, settings.MODEL_POLL_SECONDS, settings.IMPRESSION_FLUSH_SECONDS = False, 0, 0
    settings.SHADOW_QUEUE_SIZE = 0
    clock_set(simulated_now=T0, speed=0.0)
    return two_versions


def start(version, mode, **kwargs):
    return challenger_deploy(version=version.version, mode=mode, actor="test", reason="", **kwargs)


def test_each_user_is_served_by_the_version_of_their_arm_and_the_impression_says_so(versions, serve_client):
    experiment = start(versions[1], "ab", traffic_percent=40)
    for user in USERS:
        body = serve_client.get(URL.format(user), {"k": 5}).json()
        route = route_for(user, serving_pointers())
        expected = versions[1].version if route.arm == "challenger" else versions[0].version
        assert body["model_version"] == expected and body["strategy"] == "model"
        impression = Impression.objects.get(recommendation_id=body["recommendation_id"])
        assert (impression.arm, impression.routed_version, impression.experiment_id) == (
            route.arm,
            expected,
            experiment.pk,
        )
    arms = set(Impression.objects.values_list("arm", flat=True))
    assert arms == {"champion", "challenger"}


def test_shadow_never_changes_the_response_and_logs_the_challengers_list(versions, serve_client):
    before = {user: serve_client.get(URL.format(user), {"k": 10}).json() for user in USERS[:20]}
    experiment = start(versions[1], "shadow", traffic_percent=100)
    for user in USERS[:20]:
        body = serve_client.get(URL.format(user), {"k": 10}).json()
        assert body["model_version"] == versions[0].version
        assert body["items"] == before[user]["items"]
        mirrored = Impression.objects.get(shadow_of=body["recommendation_id"])
        assert (mirrored.arm, mirrored.routed_version, mirrored.experiment_id) == (
            "shadow",
            versions[1].version,
            experiment.pk,
        )
        shown = Impression.objects.get(recommendation_id=body["recommendation_id"])
        assert mirrored.items == shown.items, "the same model scored the same request"


def test_a_shadow_that_fails_never_reaches_the_response(versions, serve_client, monkeypatch, runtime):
    start(versions[1], "shadow", traffic_percent=100)
    expected = serve_client.get(URL.format("user-3"), {"k": 10}).json()["items"]
    failed = runtime.shadow.stats["failed"]
    monkeypatch.setattr("recommendations.serving.recommend._shadow_score", _explode)
    response = serve_client.get(URL.format("user-3"), {"k": 10})
    assert response.status_code == 200 and response.json()["items"] == expected
    assert runtime.shadow.stats["failed"] == failed + 1


def _explode(*args, **kwargs):
    raise RuntimeError("the challenger exploded")


def test_a_challenger_that_cannot_load_is_replaced_by_the_champion_and_counted_as_errors(
    versions, serve_client, tmp_path
):
    broken = _broken_version(versions[0], tmp_path)
    start(broken, "ab", traffic_percent=100)
    Path(broken.artifact_path).write_bytes(b"damaged after the registry verified it")
    body = serve_client.get(URL.format("user-5"), {"k": 5})
    assert body.status_code == 200 and body.json()["model_version"] == versions[0].version
    impression = Impression.objects.get(recommendation_id=body.json()["recommendation_id"])
    assert (impression.arm, impression.strategy, impression.routed_version) == ("challenger", "error", broken.version)


def _broken_version(like, tmp_path):
    """A version whose artifact is whole when registered (the registry deploys nothing else); the test breaks it."""
    folder = tmp_path / "broken"
    folder.mkdir()
    files = artifact_read(path=like.artifact_path, size=like.artifact_size, sha256=like.artifact_sha256)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return model_version_register(artifact_dir=folder, data=_same_data(like))


def serve_round(client, *, click_rate: dict, rng, at):
    """Every user asks for a list; a user clicks its first item with the probability of the version that
    answered, as a real user would react to better or worse lists."""
    clock_set(simulated_now=at, speed=0.0)
    for user in USERS:
        body = client.get(URL.format(user), {"k": 5}).json()
        if rng.random() < click_rate[body["model_version"]]:
            Interaction.objects.create(
                user_id=Impression.objects.get(recommendation_id=body["recommendation_id"]).user_id,
                item=Item.objects.get(external_id=body["items"][0]["item_id"]),
                event_type="click",
                timestamp=at + timedelta(minutes=1),
                recommendation_id=body["recommendation_id"],
            )


@pytest.fixture
def canary_policy():
    policy = policy_active()
    policy.canary_steps, policy.rollout_min_step_minutes, policy.rollout_min_impressions = [20, 50, 100], 10, 60
    policy.save()
    return policy


def test_a_canary_users_dislike_is_rolled_back_and_everyone_returns_to_the_champion(
    versions, serve_client, canary_policy
):
    champion, challenger = versions
    start(challenger, "canary")
    rng = np.random.default_rng(0)
    for n in range(6):
        serve_round(
            serve_client,
            click_rate={champion.version: 0.6, challenger.version: 0.05},
            rng=rng,
            at=T0 + timedelta(minutes=n),
        )
    outcomes_recorded()
    check = rollout_check(now=T0 + timedelta(minutes=7))
    assert check.action == "rolled_back", check.reason
    challenger.refresh_from_db()
    assert challenger.status == ModelStatus.REJECTED
    assert {serve_client.get(URL.format(user)).json()["model_version"] for user in USERS} == {champion.version}


def test_a_canary_users_prefer_is_advanced_to_champion(versions, serve_client, canary_policy):
    champion, challenger = versions
    start(challenger, "canary")
    rng = np.random.default_rng(1)
    moment, actions = T0, []
    while not actions or actions[-1] not in ("promoted", "rolled_back"):
        for _ in range(6):
            moment += timedelta(minutes=1)
            serve_round(serve_client, click_rate={champion.version: 0.1, challenger.version: 0.7}, rng=rng, at=moment)
        moment += timedelta(minutes=11)
        outcomes_recorded()
        actions.append(rollout_check(now=moment).action)
        assert len(actions) < 6, actions
    assert actions == ["advanced", "promoted"], actions
    assert serving_pointers().champion == challenger.version
    assert {serve_client.get(URL.format(user)).json()["model_version"] for user in USERS} == {challenger.version}
