"""Rate limits per API key and scope, the failed-authentication limit per address, and failing open when
the cache (Redis) is down or does not answer."""

import logging
import socket
import time
import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured
from rest_framework.test import APIClient

from recommendations import throttling
from recommendations.models import Interaction
from recommendations.services.api_keys import api_key_create
from recsite.settings import _throttle_rates

pytestmark = pytest.mark.django_db

EVENTS = "/api/v1/events"


@pytest.fixture
def rates(settings):
    def set_rates(**scoped):
        settings.REST_FRAMEWORK = {
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {**settings.THROTTLE_RATE_DEFAULTS, **scoped},
        }

    return set_rates


def client(*scopes: str, address: str | None = None) -> APIClient:
    """A client with a new key; `address` is its own client address (REMOTE_ADDR) when a test counts by it."""
    api = APIClient(REMOTE_ADDR=address or "127.0.0.1")
    _, secret = api_key_create(name=f"throttle-{uuid.uuid4().hex[:8]}", scopes=list(scopes))
    api.credentials(HTTP_AUTHORIZATION=f"Api-Key {secret}")
    return api


def unique_address() -> str:
    """Failed authentications are counted per address in the shared cache: each test counts from zero."""
    return f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"


def post_event(api: APIClient):
    return api.post(
        EVENTS, {"event_id": str(uuid.uuid4()), "user_id": "u", "item_id": "i", "event_type": "view"}, format="json"
    )


def assert_throttled(response):
    assert response.status_code == 429
    body = response.json()
    assert body["error"] == "throttled" and body["message"] and body["errors"] == []
    assert 1 <= int(response["Retry-After"]) <= 60


def test_a_key_past_its_scopes_rate_gets_a_429_with_retry_after_and_nothing_is_written(rates):
    rates(ingest="3/min")
    api = client("ingest")
    assert [post_event(api).status_code for _ in range(3)] == [201, 201, 201]
    assert_throttled(post_event(api))
    assert Interaction.objects.count() == 3


def test_each_scope_has_its_own_rate(rates):
    rates(ingest="2/min", serve="4/min")
    ingest, serve = client("ingest"), client("serve")
    assert [post_event(ingest).status_code for _ in range(3)] == [201, 201, 429]
    statuses = [serve.get("/api/v1/users/u/recommendations").status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 200, 429]


def test_one_keys_limit_does_not_touch_another_key(rates):
    rates(ingest="2/min")
    first, second = client("ingest"), client("ingest")
    assert [post_event(first).status_code for _ in range(3)] == [201, 201, 429]
    assert [post_event(second).status_code for _ in range(2)] == [201, 201]


def test_web_processes_share_a_keys_count_through_the_cache(rates, monkeypatch, runtime):
    rates(ingest="4/min")
    monkeypatch.setattr(throttling, "SYNC_SECONDS", 0.0)
    api = client("ingest")
    processes = [throttling.LocalCounts(), throttling.LocalCounts()]
    statuses = []
    for n in range(6):
        monkeypatch.setattr(runtime, "throttle_counts", processes[n % 2])
        statuses.append(post_event(api).status_code)
    assert statuses == [201, 201, 201, 201, 429, 429]


def test_endpoints_without_a_scope_are_not_limited(rates):
    rates(ingest="1/min", serve="1/min", admin="1/min")
    api = APIClient()
    assert [api.get("/api/v1/health").status_code for _ in range(3)] == [200, 200, 200]


def test_many_failed_authentications_from_one_address_get_a_429_before_the_key_is_checked(
    rates, django_assert_num_queries
):
    rates(auth_failure="5/min")
    address = unique_address()
    guesser = APIClient(REMOTE_ADDR=address, HTTP_AUTHORIZATION="Api-Key abcdefgh.notarealsecret")
    assert [guesser.post(EVENTS, {}, format="json").status_code for _ in range(5)] == [401] * 5
    with django_assert_num_queries(0):
        assert_throttled(guesser.post(EVENTS, {}, format="json"))
    other = APIClient(REMOTE_ADDR=unique_address(), HTTP_AUTHORIZATION="Api-Key abcdefgh.notarealsecret")
    assert other.post(EVENTS, {}, format="json").status_code == 401


def test_a_key_this_process_verified_keeps_working_from_an_address_that_failed_too_often(rates, settings):
    rates(auth_failure="2/min")
    settings.API_KEY_CACHE_SECONDS = 60
    address = unique_address()
    api = client("ingest", address=address)
    assert post_event(api).status_code == 201
    guesser = APIClient(REMOTE_ADDR=address, HTTP_AUTHORIZATION="Api-Key abcdefgh.notarealsecret")
    assert [guesser.post(EVENTS, {}, format="json").status_code for _ in range(3)] == [401, 401, 429]
    assert post_event(api).status_code == 201


def test_behind_a_proxy_failures_are_counted_per_forwarded_address(rates, settings):
    rates(auth_failure="2/min")
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    proxy = unique_address()

    def guess(client_address):
        return APIClient(
            REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR=client_address, HTTP_AUTHORIZATION="Api-Key abcdefgh.notarealsecret"
        ).post(EVENTS, {}, format="json")

    first, second = unique_address(), unique_address()
    assert [guess(first).status_code for _ in range(3)] == [401, 401, 429]
    assert guess(second).status_code == 401


def test_without_proxies_a_forged_forwarded_address_does_not_escape_the_limit(rates):
    rates(auth_failure="2/min")
    address = unique_address()

    def guess():
        return APIClient(
            REMOTE_ADDR=address,
            HTTP_X_FORWARDED_FOR=unique_address(),
            HTTP_AUTHORIZATION="Api-Key abcdefgh.notarealsecret",
        ).post(EVENTS, {}, format="json")

    assert [guess().status_code for _ in range(3)] == [401, 401, 429]


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def redis_cache_at(settings, port: int) -> None:
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": f"redis://127.0.0.1:{port}/0",
            "OPTIONS": {"socket_connect_timeout": 0.25, "socket_timeout": 0.25},
        }
    }


def test_when_the_cache_is_down_requests_are_let_through_and_the_outage_is_logged_once(rates, settings, caplog):
    rates(ingest="1/min", auth_failure="1/min")
    api = client("ingest")
    redis_cache_at(settings, closed_port())
    with caplog.at_level(logging.WARNING, logger="recommendations.throttling"):
        assert [post_event(api).status_code for _ in range(3)] == [201, 201, 201]
        guesser = APIClient(REMOTE_ADDR=unique_address(), HTTP_AUTHORIZATION="Api-Key abcdefgh.notarealsecret")
        assert [guesser.post(EVENTS, {}, format="json").status_code for _ in range(3)] == [401, 401, 401]
    assert Interaction.objects.count() == 3
    outages = [record for record in caplog.records if "Throttling is off" in record.getMessage()]
    assert len(outages) == 1


def _connections_drained(listener: socket.socket) -> int:
    """How many connections wait in the listener's backlog; each is accepted and closed."""
    count = 0
    while True:
        try:
            connection, _ = listener.accept()
        except BlockingIOError:
            return count
        connection.close()
        count += 1


def test_a_cache_that_does_not_answer_delays_requests_by_its_timeout_once_per_outage(rates, settings):
    rates(ingest="1/min")
    api = client("ingest")
    with socket.socket() as silent:  # accepts connections (the kernel does) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        silent.setblocking(False)
        redis_cache_at(settings, silent.getsockname()[1])
        started = time.monotonic()
        assert post_event(api).status_code == 201
        first_duration = time.monotonic() - started
        assert _connections_drained(silent) >= 1  # the first request tried the cache and waited for it
        for _ in range(4):
            assert post_event(api).status_code == 201
        # The later requests of the outage period do not try the silent cache again (counted, not timed: a
        # request's time on a shared machine says little, a connection attempt is what would cost the timeout).
        assert _connections_drained(silent) == 0
    assert first_duration < 2.0


def test_the_cache_is_tried_again_after_the_outage_period(rates, settings, monkeypatch):
    rates(ingest="1/min")
    api = client("ingest")
    real_caches = settings.CACHES
    redis_cache_at(settings, closed_port())
    assert post_event(api).status_code == 201
    settings.CACHES = real_caches
    monkeypatch.setattr(throttling, "OUTAGE_SECONDS", 0.0)
    assert [post_event(api).status_code for _ in range(2)] == [201, 429]


@pytest.mark.parametrize("text", ["ingest=10", "ingest=ten/min", "nosuchscope=1/min", "ingest=5/fortnight"])
def test_a_malformed_throttle_rate_fails_loudly(text):
    with pytest.raises(ImproperlyConfigured):
        _throttle_rates(text)


def test_throttle_rates_override_only_the_scopes_they_name():
    rates = _throttle_rates("serve=50/s, auth_failure=10/m")
    assert rates["serve"] == "50/s" and rates["auth_failure"] == "10/m"
    assert rates["ingest"] == "100000/min"
