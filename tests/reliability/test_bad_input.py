"""Hostile and malformed input gets a JSON 4xx in the one error shape, and writes nothing; whatever still
escapes is a JSON 500 with a request id, never an HTML page or a stack."""

import json
import logging

import pytest
from django.middleware.common import CommonMiddleware
from rest_framework.test import APIClient

from recommendations.models import EndUser, Interaction, Item, ItemFeatures, UserFeatures

pytestmark = pytest.mark.django_db

EVENTS = "/api/v1/events"


def event(**overrides):
    return {"user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": "2024-05-01T12:00:00Z", **overrides}


def post_raw(client, raw: str | bytes, url: str = EVENTS):
    return client.generic("POST", url, raw, content_type="application/json")


def nothing_written() -> bool:
    tables = (Interaction, EndUser, Item, UserFeatures, ItemFeatures)
    return not any(model.objects.exists() for model in tables)


def assert_error_shape(response, status: int) -> dict:
    assert response.status_code == status
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["error"], str) and isinstance(body["message"], str)
    assert isinstance(body["errors"], list)
    for error in body["errors"]:
        assert set(error) == {"index", "field", "message"}
    return body


def assert_refused(response, status: int = 400) -> dict:
    body = assert_error_shape(response, status)
    assert body["errors"], "a refused input names what was wrong"
    assert nothing_written()
    return body


# --- Numbers ------------------------------------------------------------------------------------------------------


def test_a_value_of_four_hundred_digits_is_a_400(ingest_client):
    raw = json.dumps(event(event_type="rating")).replace('"view"', '"rating"')[:-1] + ', "value": ' + "9" * 400 + "}"
    assert_refused(post_raw(ingest_client, raw))


def test_a_float_that_overflows_to_infinity_is_a_400(ingest_client):
    raw = json.dumps(event())[:-1] + ', "value": 1e400}'
    assert_refused(post_raw(ingest_client, raw))


def test_an_integer_beyond_64_bits_in_the_context_is_a_400(ingest_client):
    raw = json.dumps(event())[:-1] + ', "context": {"n": ' + "1" * 30 + "}}"
    assert_refused(post_raw(ingest_client, raw))


# --- NUL characters -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        event(context={"a\u0000": "b"}),
        event(context={"a": "b\u0000"}),
        event(context={"deep": [{"x": "\u0000"}]}),
        event(user_id="u\u0000"),
        event(item_id="\u0000"),
    ],
    ids=["context-key", "context-value", "nested-value", "user-id", "item-id"],
)
def test_a_nul_character_anywhere_in_the_body_is_a_400(ingest_client, body):
    assert_refused(ingest_client.post(EVENTS, body, format="json"))


def test_a_lone_surrogate_in_the_body_is_a_400(ingest_client):
    assert_refused(post_raw(ingest_client, json.dumps(event())[:-1] + ', "context": {"a": "\\ud800"}}'))


def test_an_escaped_backslash_before_u0000_is_plain_text_and_accepted(ingest_client):
    raw = json.dumps(event(context={"path": "\\u0000"}))
    assert post_raw(ingest_client, raw).status_code == 201
    assert Interaction.objects.get().context == {"path": "\\u0000"}


def test_a_nul_in_the_user_id_of_the_path_is_a_400(serve_client):
    assert_refused(serve_client.get("/api/v1/users/a%00b/recommendations"))


def test_an_item_id_of_nul_in_the_path_is_a_400(ingest_client):
    assert_refused(ingest_client.put("/api/v1/items/%00", {"title": "x"}, format="json"))


def test_a_nul_in_the_query_is_a_400(serve_client):
    assert_refused(serve_client.get("/api/v1/users/u1/recommendations?category=a%00"))


def test_a_nul_in_a_header_is_a_400(db):
    response = APIClient().get("/api/v1/users/u1/recommendations", HTTP_AUTHORIZATION="Api-Key a\x00b")
    assert_refused(response)


# --- Nesting and size ---------------------------------------------------------------------------------------------


def test_a_context_nested_a_thousand_deep_is_a_400(ingest_client):
    raw = json.dumps(event())[:-1] + ', "context": ' + '{"a": ' * 1000 + "1" + "}" * 1000 + "}"
    assert_refused(post_raw(ingest_client, raw))


def test_a_body_nested_a_hundred_thousand_deep_is_a_400(ingest_client):
    assert_refused(post_raw(ingest_client, "[" * 100_000 + "]" * 100_000))


def nested(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_nesting_up_to_the_documented_limit_of_32_is_accepted(ingest_client):
    # A single event is the body's first level: its context adds the rest.
    assert ingest_client.post(EVENTS, event(context=nested(31)), format="json").status_code == 201
    assert_error_shape(ingest_client.post(EVENTS, event(user_id="u2", context=nested(32)), format="json"), 400)


def test_objects_and_lists_alternating_deeper_than_32_are_a_400(ingest_client):
    context: dict | list = {"a": 1}
    for level in range(33):
        context = [context] if level % 2 else {"a": context}
    body = assert_refused(ingest_client.post(EVENTS, event(context=context), format="json"))
    assert body["errors"][0]["field"] == "body" and "nested more than 32 deep" in body["message"]


def test_brackets_inside_strings_do_not_count_as_nesting(ingest_client):
    assert ingest_client.post(EVENTS, event(context={"q": "[" * 1000}), format="json").status_code == 201


def test_a_ten_megabyte_body_is_a_json_413(ingest_client):
    body = json.dumps({"events": [event(context={"pad": "x" * 3000}) for _ in range(3400)]})
    assert len(body) > 10_000_000
    response = post_raw(ingest_client, body)
    assert_refused(response, 413)
    assert response.json()["error"] == "payload_too_large"


def test_a_full_batch_of_events_with_large_contexts_fits_the_body_limit(ingest_client):
    events = [event(user_id=f"u{n}", context={f"k{k}": "x" * 100 for k in range(30)}) for n in range(1000)]
    response = ingest_client.post(EVENTS, {"events": events}, format="json")
    assert response.status_code == 201, response.content[:300]


@pytest.mark.parametrize(
    "context, message",
    [({f"k{n}": n for n in range(33)}, "At most 32 keys."), ({"pad": "x" * 4100}, "At most 4096 bytes as JSON.")],
    ids=["too-many-keys", "too-large"],
)
def test_a_context_over_its_limits_is_a_400_naming_the_field(ingest_client, context, message):
    body = assert_refused(ingest_client.post(EVENTS, {"events": [event(), event(context=context)]}, format="json"))
    assert body["errors"] == [{"index": 1, "field": "context", "message": message}]


def test_more_than_32_categories_is_a_400(ingest_client):
    response = ingest_client.put("/api/v1/items/i1", {"categories": [f"c{n}" for n in range(33)]}, format="json")
    assert assert_refused(response)["errors"][0]["field"] == "categories"


# --- Timestamps ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "timestamp",
    ["0001-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-14:00"],
)
def test_a_timestamp_before_1970_or_off_the_calendar_is_a_400(ingest_client, timestamp):
    body = assert_refused(ingest_client.post(EVENTS, event(timestamp=timestamp), format="json"))
    assert body["errors"][0]["field"] == "timestamp"


def test_an_event_at_the_1970_floor_is_accepted(ingest_client):
    assert ingest_client.post(EVENTS, event(timestamp="1970-01-01T00:00:00Z"), format="json").status_code == 201


# --- The error shape for parse errors, 415 and unknown paths ----------------------------------------------------


def test_a_parse_error_has_the_errors_list(ingest_client):
    body = assert_refused(post_raw(ingest_client, "{"))
    assert body["errors"][0]["field"] == "body"


def test_a_415_has_the_errors_list(ingest_client):
    response = ingest_client.post(EVENTS, "user_id=u", content_type="application/x-www-form-urlencoded")
    assert assert_refused(response, 415)["errors"][0]["field"] == "Content-Type"


def test_an_unknown_api_path_is_a_json_404(serve_client):
    assert_error_shape(serve_client.get("/api/v1/no-such-thing"), 404)


def test_a_request_django_refuses_before_any_view_is_a_json_400_on_an_api_path(db):
    assert_error_shape(APIClient().get("/api/v1/health", HTTP_HOST="evil.example"), 400)


def test_a_missing_api_key_is_a_json_401_in_the_same_shape(db):
    assert_error_shape(APIClient().get("/api/v1/users/u1/recommendations"), 401)


# --- What still escapes -------------------------------------------------------------------------------------------


def test_an_unexpected_error_in_a_view_is_a_json_500_with_a_request_id_and_no_detail(
    ingest_client, monkeypatch, caplog
):
    def broken(**kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr("recommendations.api.views.event_ingest", broken)
    with caplog.at_level(logging.ERROR, logger="recsite.errors"):
        response = ingest_client.post(EVENTS, event(), format="json")
    body = assert_error_shape(response, 500)
    assert body["error"] == "server_error"
    assert body["request_id"] == response["X-Request-ID"]
    assert b"secret internal detail" not in response.content and b"Traceback" not in response.content
    assert body["request_id"] in caplog.text and "secret internal detail" in caplog.text


def test_an_error_outside_drf_on_an_api_path_is_a_json_500(db, monkeypatch):
    def broken(self, request):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(CommonMiddleware, "process_request", broken)
    response = APIClient(raise_request_exception=False).get("/api/v1/users/u1/recommendations")
    body = assert_error_shape(response, 500)
    assert body["request_id"] == response["X-Request-ID"]
    assert b"secret internal detail" not in response.content


def test_a_callers_plain_request_id_is_kept_and_a_forged_one_replaced(serve_client):
    assert serve_client.get("/api/v1/health", HTTP_X_REQUEST_ID="abc-123")["X-Request-ID"] == "abc-123"
    forged = serve_client.get("/api/v1/health", HTTP_X_REQUEST_ID="x\nlevel=ERROR")["X-Request-ID"]
    assert forged != "x\nlevel=ERROR" and len(forged) == 32


def test_every_response_carries_a_request_id(serve_client):
    first, second = serve_client.get("/api/v1/health"), serve_client.get("/api/v1/health")
    assert first["X-Request-ID"] != second["X-Request-ID"]
