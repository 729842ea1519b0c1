"""Two web hosts, one state: two gunicorn instances on their own ports and their own local folders (MODEL_STORE,
the artifact cache) share only PostgreSQL, Redis and an S3-compatible object store (moto's server). A version
promoted through one host's API is served by both within the poll interval (plus the load), each from a copy
of the artifact it fetched from the store and verified itself."""

import os
import time
from functools import partial

import pytest

from recommendations.services.api_keys import api_key_create
from registry.services import model_version_promote
from tests.recommendations.factories import store_history, train_and_register
from tests.reliability.ledger import http_json
from tests.support.object_store import s3_server
from tests.support.processes import test_database_url as the_test_database_url  # not collected as a test
from tests.support.processes import wait_until

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.django_db(transaction=True)]
KNOWN_USER = "user-3"  # in store_history's data
POLL_SECONDS = 1.0
LOAD_ALLOWANCE_SECONDS = 10.0  # download, verify and load a small model on a busy 2-core machine


@pytest.fixture
def s3(settings, tmp_path):
    settings.MODEL_STORE, settings.ARTIFACT_CACHE_DIR = tmp_path / "trainer", None
    with s3_server() as store:
        settings.STORAGES = {**settings.STORAGES, "artifacts": store.storage()}
        yield store


@pytest.fixture
def two_versions(s3, tmp_path):
    """v1 the champion, v2 a candidate, both trained and registered into the object store by this process."""
    store_history()
    first, second = train_and_register(tmp_path, "first"), train_and_register(tmp_path, "second")
    model_version_promote(version=first.version, actor="test")
    return first, second


def _served_by_every_worker(hosts, key: str, version: int, answers: int = 6) -> bool:
    """`answers` answers in a row from `version` from each host (a host runs 2 workers, each with its own model)."""
    for host in hosts:
        for _ in range(answers):
            status, body = http_json(f"{host.base}/api/v1/users/{KNOWN_USER}/recommendations?k=5", key)
            if (status, body.get("model_version")) != (200, version):
                return False
    return True


def test_a_version_promoted_through_one_host_is_served_by_both_from_the_shared_store(
    two_versions, s3, start_gunicorn, tmp_path
):
    first, second = two_versions
    _, key = api_key_create(name="two-hosts", scopes=["admin"])
    hosts = [
        start_gunicorn(
            database_url=the_test_database_url(),
            redis_url=os.environ.get("REDIS_URL"),
            MODEL_STORE=str(tmp_path / name),
            MODEL_POLL_SECONDS=str(POLL_SECONDS),
            RANKER_COMPILED="false",
            **s3.environment(),
        )
        for name in ("host-a", "host-b")
    ]
    wait_until(partial(_served_by_every_worker, hosts, key, first.version), 60, message=f"v{first.version} served")

    status, body = http_json(f"{hosts[0].base}/api/v1/models/{second.version}/promote", key, "POST", {})
    promoted = time.monotonic()
    assert status == 200, body
    wait_until(
        partial(_served_by_every_worker, hosts, key, second.version),
        POLL_SECONDS + LOAD_ALLOWANCE_SECONDS,
        interval=0.1,
        message=f"v{second.version} served by both hosts",
    )
    print(
        f"\nboth hosts served v{second.version} {time.monotonic() - promoted:.2f} s after the promotion "
        f"(poll interval {POLL_SECONDS} s)"
    )
    for name in ("host-a", "host-b"):
        cached = sorted(p.name for p in (tmp_path / name / "cache").glob("*.tar"))
        assert cached == sorted({f"{first.artifact_sha256}.tar", f"{second.artifact_sha256}.tar"}), name
