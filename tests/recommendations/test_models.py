import pytest

from recommendations import features
from recommendations.models import EndUser, UserFeatures

pytestmark = pytest.mark.django_db


def _state() -> features.UserState:
    return features.UserState(
        event_count=3,
        counts_by_type={"click": 2, "rating": 1},
        positive_count=1,
        rating_count=1,
        rating_sum=4.5,
        first_seen=1_700_000_000.25,
        last_seen=1_700_086_400.5,
        recent_items=[[7, 1_700_086_400.5], [3, 1_700_000_000.25]],
        category_counts={"drama": 2},
        category_last_seen={"drama": 1_700_086_400.5},
    )


def test_a_user_state_stored_in_its_row_reads_back_the_same():
    row = UserFeatures(user=EndUser.objects.create(external_id="u"))
    row.state_set(_state())
    row.save()
    assert UserFeatures.objects.get(pk=row.pk).state() == _state()


def test_folding_events_into_a_rows_state_leaves_the_row_as_it_was():
    row = UserFeatures(user=EndUser.objects.create(external_id="u"))
    row.state_set(_state())
    state = row.state()
    features.user_apply(state, features.Event(1, 9, "click", None, 1_700_100_000.0), ["comedy"])
    assert row.state() == _state() and state != _state()


def test_a_user_without_a_row_has_the_empty_state():
    assert UserFeatures(user=EndUser.objects.create(external_id="u")).state() == features.UserState()
