import pytest
from rest_framework.test import APIClient

from recommendations.services.api_keys import api_key_create


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
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.db import connection

REPO = Path(__file__).resolve().parent.parent


def test_database_url() -> str:
    """The URL of the database pytest-django created, for processes the tests start."""
    settings = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{settings['NAME']}"
    host, port = settings.get("HOST") or "127.0.0.1", settings.get("PORT") or 5432
    password = f":{settings['PASSWORD']}" if settings.get("PASSWORD") else ""
    return f"postgres://{settings['USER']}{password}@{host}:{port}/{settings['NAME']}"


def process_env(**extra) -> dict:
    env = {**os.environ, "DATABASE_URL": test_database_url(), "PYTHONUNBUFFERED": "1", **extra}
    env.pop("CELERY_TASK_ALWAYS_EAGER", None)
    return env


def start_process(args: list[str], log: Path, **extra_env) -> subprocess.Popen:
    handle = open(log, "wb")
    # Its own session, so that a test can kill the process with all its children (a worker's pool).
    return subprocess.Popen(args, cwd=REPO, env=process_env(**extra_env), stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_process(process: subprocess.Popen, timeout: float = 15) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    """A TCP port nothing listens on now, for a server a test starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


@pytest.fixture(scope="session")
def celery_worker_process(django_db_setup, django_db_blocker, tmp_path_factory):
    """A real `celery worker` process on the configured broker (Redis in CI) and the test database. It serves
    the `default` queue only: tests that train start trainers of their own."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    celery = str(Path(sys.executable).with_name("celery"))
    process = start_process(
        [celery, "-A", "recsite", "worker", "--loglevel", "INFO", "--queues", "default",
         "--concurrency", "1", "--hostname", f"test-worker-{os.getpid()}@%h", "--without-gossip", "--without-mingle"],
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
    settings.ITEM_SNAPSHOT_SECONDS = 0  # each request sees the items as the test left them
    fresh = ServingRuntime()
    previous = process_runtime_replace(fresh)
    yield fresh
    fresh.stop()
    process_runtime_replace(previous)
