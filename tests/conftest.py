import os
import sys
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from recommendations.services.api_keys import api_key_create
from tests.support.processes import start_process, stop_process, wait_until


@pytest.fixture(autouse=True)
def model_store(settings, tmp_path):
    """Every test's artifacts go to its own folder, never to the developer's var/models."""
    settings.MODEL_STORE = tmp_path / "store"
    return settings.MODEL_STORE


@pytest.fixture
def replay_clock(settings):
    """The replay's accelerated clock switched on (REPLAY_CLOCK_ENABLED), for tests that freeze or move time with
    recommendations.clock.clock_set."""
    settings.REPLAY_CLOCK_ENABLED = True


@pytest.fixture
def api_client():
    return APIClient()


def _client_with(scopes):
    client = APIClient()
    _, secret = api_key_create(name=f"test-{'-'.join(scopes)}", scopes=scopes)
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {secret}")
    return client


@pytest.fixture
def ingest_client(db):
    return _client_with(["ingest"])


@pytest.fixture
def serve_client(db):
    return _client_with(["serve"])


@pytest.fixture
def admin_client_api(db):
    return _client_with(["admin"])


@pytest.fixture
def staff_client(client, django_user_model):
    client.force_login(django_user_model.objects.create_superuser("ops", "ops@example.com", "pw-for-tests"))
    return client


# --- Real Celery processes ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker, tmp_path_factory):
    """A real `celery worker` process on the configured broker (Redis in CI) and the test database. It serves
    the `default` queue only: tests that train start trainers of their own."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    celery = str(Path(sys.executable).with_name("celery"))
    process = start_process(
        [
            celery,
            "-A",
            "recsite",
            "worker",
            "--loglevel",
            "INFO",
            "--queues",
            "default",
            "--concurrency",
            "1",
            "--hostname",
            f"test-worker-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        log,
    )
    try:
        wait_until(lambda: b"ready" in log.read_bytes() or process.poll() is not None, 60, message="the worker")
        if process.poll() is not None:
            raise RuntimeError(f"the celery worker exited:\n{log.read_text()}")
        yield process
    finally:
        stop_process(process)


@pytest.fixture(autouse=True)
def runtime(settings):
    """Every test gets a fresh process runtime (recommendations.runtime): no models, snapshot, caches or clock
    left by another test, whose rows may have been rolled back. It is not started: in-process tests poll the
    champion, rebuild the item snapshot, write impressions and score shadows on the request path, not in threads
    (threads would hold their own connections outside the test's transaction); a test that wants a thread
    starts it (e.g. `runtime.shadow.start()`), and it is stopped afterwards."""
    from recommendations.runtime import ServingRuntime, process_runtime_replace

    settings.MODEL_POLL_THREAD = False
    settings.IMPRESSION_FLUSH_SECONDS = 0
    settings.FOLD_SWEEP_SECONDS = 0
    settings.ITEM_SNAPSHOT_SECONDS = 0  # each request sees the items as the test left them
    fresh = ServingRuntime()
    previous = process_runtime_replace(fresh)
    yield fresh
    fresh.stop()
    process_runtime_replace(previous)
