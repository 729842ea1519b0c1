import pytest

from recommendations.routing import bucket_of, route_for
from registry.selectors import ServingPointers

USERS = [f"user-{n}" for n in range(10_000)]


def pointers(mode, percent, experiment=7):
    return ServingPointers(champion=1, challenger=2, mode=mode, traffic_percent=percent, experiment_id=experiment)


@pytest.mark.parametrize("percent", [1, 10, 25, 50, 90])
def test_the_challengers_share_of_10000_users_is_within_2_points_of_the_configured_share(percent):
    share = sum(route_for(user, pointers("ab", percent)).arm == "challenger" for user in USERS) / len(USERS)
    assert abs(share - percent / 100) <= 0.02


def test_a_user_always_gets_the_same_arm_in_one_experiment_and_an_independent_one_in_the_next():
    first = [route_for(user, pointers("ab", 50)).arm for user in USERS]
    assert first == [route_for(user, pointers("ab", 50)).arm for user in USERS]
    other = [route_for(user, pointers("ab", 50, experiment=8)).arm for user in USERS]
    agreement = sum(a == b for a, b in zip(first, other)) / len(USERS)
    assert 0.47 < agreement < 0.53, "a new experiment must draw a new split, not reuse the old one"


def test_raising_a_canarys_share_keeps_every_user_already_in_it():
    at_10 = {user for user in USERS if route_for(user, pointers("canary", 10)).arm == "challenger"}
    at_50 = {user for user in USERS if route_for(user, pointers("canary", 50)).arm == "challenger"}
    assert at_10 < at_50


def test_in_shadow_the_champion_answers_and_the_challenger_shadows_the_share():
    routes = [route_for(user, pointers("shadow", 30)) for user in USERS]
    assert {route.arm for route in routes} == {"champion"} and {route.version for route in routes} == {1}
    assert abs(sum(route.shadow_version == 2 for route in routes) / len(USERS) - 0.30) <= 0.02


def test_without_a_challenger_everyone_gets_the_champion():
    assert route_for("u", ServingPointers(champion=3)).version == 3
    assert route_for("u", ServingPointers()).version is None


def test_the_bucket_is_stable_across_processes():
    assert bucket_of("user-1", 7) == 1767, "the split must not depend on Python's per-process hash seed"
