import uuid
from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from recommendations.models import EndUser, Interaction, Item, ItemFeatures, UserFeatures

pytestmark = pytest.mark.django_db

URL = "/api/v1/events"


def event(**overrides):
    return {
        "user_id": "u1",
        "item_id": "i1",
        "event_type": "rating",
        "value": 4.0,
        "timestamp": "2024-05-01T12:00:00Z",
        **overrides,
    }


def post(client, body):
    return client.post(URL, body, format="json")


def nothing_written():
    return not (Interaction.objects.exists() or EndUser.objects.exists() or UserFeatures.objects.exists())


def test_a_single_event_object_is_accepted(ingest_client):
    response = post(ingest_client, event())
    assert response.status_code == 201
    assert response.json() == {"accepted": 1, "duplicates": 0}
    stored = Interaction.objects.get()
    assert (stored.user.external_id, stored.item.external_id, stored.event_type, stored.value) == (
        "u1",
        "i1",
        "rating",
        4.0,
    )
    assert stored.timestamp.isoformat() == "2024-05-01T12:00:00+00:00"


def test_a_batch_is_accepted_and_users_are_created_on_first_event(ingest_client):
    body = {"events": [event(user_id=f"u{n}", item_id=f"i{n % 3}", event_type="view", value=None) for n in range(25)]}
    response = post(ingest_client, body)
    assert response.status_code == 201
    assert response.json() == {"accepted": 25, "duplicates": 0}
    assert EndUser.objects.count() == 25
    assert Interaction.objects.count() == 25


def test_every_event_type_is_accepted(ingest_client):
    types = ["view", "click", "like", "rating", "purchase", "dislike"]
    body = {"events": [event(event_type=t, value=3.0 if t == "rating" else None) for t in types]}
    assert post(ingest_client, body).status_code == 201
    assert sorted(Interaction.objects.values_list("event_type", flat=True)) == sorted(types)


def test_the_timestamp_defaults_to_now(ingest_client):
    before = timezone.now()
    body = event()
    del body["timestamp"]
    assert post(ingest_client, body).status_code == 201
    assert before <= Interaction.objects.get().timestamp <= timezone.now()


def test_a_timestamp_without_offset_is_taken_as_utc(ingest_client):
    assert post(ingest_client, event(timestamp="2024-05-01T12:00:00")).status_code == 201
    assert Interaction.objects.get().timestamp.isoformat() == "2024-05-01T12:00:00+00:00"


def test_optional_fields_are_stored(ingest_client):
    rec_id, ev_id = uuid.uuid4(), uuid.uuid4()
    body = event(event_id=str(ev_id), recommendation_id=str(rec_id), context={"page": "home", "position": 3})
    assert post(ingest_client, body).status_code == 201
    stored = Interaction.objects.get()
    assert (stored.event_id, stored.recommendation_id, stored.context) == (
        ev_id,
        rec_id,
        {"page": "home", "position": 3},
    )


def test_a_retry_with_the_same_event_id_adds_nothing(ingest_client):
    body = {"events": [event(event_id=str(uuid.uuid4()), item_id=f"i{n}") for n in range(3)]}
    assert post(ingest_client, body).json() == {"accepted": 3, "duplicates": 0}
    features_before = UserFeatures.objects.get().event_count
    assert post(ingest_client, body).json() == {"accepted": 0, "duplicates": 3}
    assert Interaction.objects.count() == 3
    assert UserFeatures.objects.get().event_count == features_before == 3


def test_a_partial_retry_writes_only_the_new_events(ingest_client):
    first = event(event_id=str(uuid.uuid4()))
    post(ingest_client, first)
    second = event(event_id=str(uuid.uuid4()), item_id="i2")
    assert post(ingest_client, {"events": [first, second]}).json() == {"accepted": 1, "duplicates": 1}
    assert Interaction.objects.count() == 2


def test_the_same_event_id_twice_in_one_batch_is_written_once(ingest_client):
    repeated = event(event_id=str(uuid.uuid4()))
    assert post(ingest_client, {"events": [repeated, repeated]}).json() == {"accepted": 1, "duplicates": 1}


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"bogus": 1}, "bogus"),
        ({"user_id": 7}, "user_id"),
        ({"item_id": ["x"]}, "item_id"),
        ({"user_id": ""}, "user_id"),
        ({"user_id": "x" * 129}, "user_id"),
        ({"event_type": "teleport"}, "event_type"),
        ({"value": 5.5}, "value"),
        ({"value": 0.0}, "value"),
        ({"value": None}, "value"),
        ({"value": "4"}, "value"),
        ({"value": True}, "value"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": 1714564800}, "timestamp"),
        ({"event_id": "not-a-uuid"}, "event_id"),
        ({"recommendation_id": 12}, "recommendation_id"),
        ({"context": [1, 2]}, "context"),
    ],
)
def test_a_bad_event_gets_a_400_naming_index_and_field_and_nothing_is_written(ingest_client, bad, field):
    body = {"events": [event(item_id="ok"), event(**bad)]}
    response = post(ingest_client, body)
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert {"index": 1, "field": field} in [{"index": e["index"], "field": e["field"]} for e in errors]
    assert nothing_written()


def test_a_missing_required_field_is_reported(ingest_client):
    body = event()
    del body["user_id"]
    response = post(ingest_client, body)
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "user_id"


def test_a_timestamp_more_than_five_minutes_ahead_is_refused(ingest_client):
    soon = (timezone.now() + timedelta(minutes=4)).isoformat()
    later = (timezone.now() + timedelta(minutes=6)).isoformat()
    assert post(ingest_client, event(timestamp=soon)).status_code == 201
    response = post(ingest_client, event(timestamp=later, item_id="i2"))
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "timestamp"


@pytest.mark.parametrize(
    "raw", ['{"user_id": "u", "item_id": "i", "event_type": "rating", "value": NaN}', '{"value": Infinity}']
)
def test_nan_and_infinity_are_refused(ingest_client, raw):
    response = ingest_client.post(URL, raw, content_type="application/json")
    assert response.status_code == 400
    assert nothing_written()


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "not json",
        "[]",
        "[1, 2]",
        '"text"',
        "42",
        "null",
        '{"events": []}',
        '{"events": {}}',
        '{"events": [1]}',
        '{"events": [], "x": 1}',
    ],
)
def test_malformed_bodies_get_a_400_and_never_a_500(ingest_client, raw):
    response = ingest_client.post(URL, raw, content_type="application/json")
    assert response.status_code == 400
    assert nothing_written()


def test_a_non_json_content_type_gets_a_415(ingest_client):
    response = ingest_client.post(URL, "user_id=u", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415


@override_settings(MAX_EVENTS_PER_REQUEST=10)
def test_an_oversize_batch_is_refused_whole(ingest_client):
    response = post(ingest_client, {"events": [event(item_id=f"i{n}") for n in range(11)]})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "events"
    assert nothing_written()


def test_the_default_batch_limit_is_one_thousand(ingest_client):
    response = post(ingest_client, {"events": [event(item_id="i", event_type="view", value=None)] * 1001})
    assert response.status_code == 400
    assert (
        post(ingest_client, {"events": [event(item_id="i", event_type="view", value=None)] * 1000}).status_code == 201
    )


@override_settings(RATING_MIN=1.0, RATING_MAX=5.0)
def test_the_rating_scale_is_configurable(ingest_client):
    assert post(ingest_client, event(value=0.5)).status_code == 400
    assert post(ingest_client, event(value=1.0)).status_code == 201


@override_settings(CATALOG_STRICT=True)
def test_an_unknown_item_is_refused_when_the_catalog_is_strict(ingest_client):
    Item.objects.create(external_id="known")
    response = post(ingest_client, {"events": [event(item_id="known"), event(item_id="unknown")]})
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"index": 1, "field": "item_id", "message": "Unknown item 'unknown' (the catalog is strict)."}
    ]
    assert nothing_written()


def test_an_unknown_item_is_stored_inactive_when_the_catalog_is_open(ingest_client):
    assert post(ingest_client, event(item_id="brand-new")).status_code == 201
    assert Item.objects.filter(external_id="brand-new", active=False).exists()


def test_events_are_visible_in_online_features_right_after_the_response(ingest_client):
    Item.objects.create(external_id="i1", categories=["Drama", "War"])
    post(ingest_client, {"events": [event(value=5.0), event(event_type="view", value=None, user_id="u2")]})
    user = UserFeatures.objects.get(user__external_id="u1")
    assert (user.event_count, user.rating_count, user.rating_sum, user.positive_count) == (1, 1, 5.0, 1)
    assert user.category_counts == {"Drama": 1, "War": 1}
    item = ItemFeatures.objects.get(item__external_id="i1")
    assert (item.event_count, item.rating_count, item.positive_count) == (2, 1, 1)
