from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import CommandError, call_command

from recommendations.clock import clock_set, system_now
from recommendations.models import Interaction, SystemClock
from recsite.errors import ApplicationError

PAST = datetime(2020, 1, 1, tzinfo=UTC)


def _leftover_row(speed: float = 3600.0) -> None:
    """A SystemClock row as a replay leaves it behind: anchored in the past and running fast."""
    SystemClock.objects.create(simulated_anchor=PAST, real_anchor=datetime.now(UTC), speed=speed)


@pytest.mark.django_db
def test_a_leftover_replay_clock_row_does_not_change_now_while_the_replay_clock_is_off(settings):
    settings.REPLAY_CLOCK_ENABLED = False
    _leftover_row()
    before = datetime.now(UTC)
    now = system_now()
    assert before <= now <= datetime.now(UTC)


@pytest.mark.django_db
def test_with_the_replay_clock_on_the_same_row_sets_the_time(settings):
    settings.REPLAY_CLOCK_ENABLED = True
    _leftover_row(speed=0.0)
    assert system_now() == PAST


@pytest.mark.django_db
def test_setting_the_clock_is_refused_with_a_clear_message_while_the_replay_clock_is_off(settings):
    settings.REPLAY_CLOCK_ENABLED = False
    with pytest.raises(ApplicationError, match="REPLAY_CLOCK_ENABLED=1"):
        clock_set(simulated_now=PAST, speed=1.0)
    assert not SystemClock.objects.exists()


@pytest.mark.django_db
def test_the_replay_clock_runs_at_its_speed_from_its_anchor(settings):
    settings.REPLAY_CLOCK_ENABLED = True
    clock_set(simulated_now=PAST, speed=3600.0)
    assert PAST <= system_now() < PAST + timedelta(hours=1) * 60  # a minute of real time at most


@pytest.mark.django_db
def test_the_replay_command_refuses_before_importing_anything_while_the_replay_clock_is_off(settings, tmp_path):
    settings.REPLAY_CLOCK_ENABLED = False
    with pytest.raises(CommandError, match="REPLAY_CLOCK_ENABLED=1"):
        call_command("replay", "tests/fixtures/movielens-100k-mini")
    assert not Interaction.objects.exists() and not SystemClock.objects.exists()
