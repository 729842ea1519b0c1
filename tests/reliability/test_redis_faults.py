"""Redis is a broker and a cache, never the source of truth: with the web process's Redis killed mid-ingestion
(SIGKILL by its pid), events are still acknowledged and stored and recommendations are still served by the
champion. The guard matters for any cache, throttle or queue put on the request path later."""

import time

import pytest
from django.db import connection

from recommendations.services.api_keys import api_key_create
from registry.services import model_version_promote
from tests.recommendations.factories import store_history, train_and_register
from tests.reliability.ledger import IngestLoad, Ledger, http_json
from tests.support.processes import test_database_url as the_test_database_url  # not collected as a test
from tests.support.processes import wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]
KNOWN_USER = "user-3"  # in store_history's data


@pytest.fixture
def champion(settings, tmp_path):
    store_history()
    version = train_and_register(tmp_path)
    model_version_promote(version=version.version, actor="test")
    return version


def recommended_version(web, key: str) -> tuple[int, int | None]:
    status, body = http_json(f"{web.base}/api/v1/users/{KNOWN_USER}/recommendations?k=5", key)
    return status, body.get("model_version")


def test_with_redis_killed_events_are_still_stored_and_the_champion_still_serves(
    champion, private_redis, start_gunicorn, settings
):
    web = start_gunicorn(
        database_url=the_test_database_url(), redis_url=private_redis.url, MODEL_STORE=str(settings.MODEL_STORE)
    )
    _, key = api_key_create(name="redis-fault", scopes=["admin"])
    wait_until(lambda: recommended_version(web, key) == (200, champion.version), 30, message="the champion served")
    ledger = Ledger(prefix="redis")
    with IngestLoad(web.base, key, ledger) as load:
        time.sleep(1.5)
        private_redis.kill()
        killed = time.monotonic()
        time.sleep(2.0)
        served = [recommended_version(web, key) for _ in range(5)]
        time.sleep(1.0)
    assert not private_redis.answers()

    report = ledger.report(connection.cursor())
    ledger.assert_features_add_up(connection.cursor())
    after = [a for a in load.attempts if a.at >= killed]
    print(
        f"\nredis killed: {report}; {len(after)} ingest attempts after the kill, "
        f"{len(load.failures_between(killed, time.monotonic()))} failed; recommendations {served}"
    )
    assert after and load.failures_between(killed, time.monotonic()) == []
    assert report.duplicates == 0 and report.abandoned == 0 and not ledger.wrong_answers
    assert served == [(200, champion.version)] * 5
