"""Fixtures of the reliability suite: private PostgreSQL and Redis servers the tests break on purpose, gunicorn
in front of them, and API keys in their databases. Each fixture stops what it started, by its own pid, and
removes its folders, whatever the test did."""

from contextlib import ExitStack

import pytest

from tests.reliability.servers import (
    PrivatePostgres,
    PrivateRedis,
    gunicorn_running,
    missing_binaries,
    postgres_copy,
)


@pytest.fixture(scope="session")
def private_server_binaries():
    missing = missing_binaries()
    if missing:
        pytest.skip(f"private servers need {', '.join(missing)}")


@pytest.fixture(scope="session")
def migrated_cluster(private_server_binaries):
    """A stopped cluster with database `recsite` migrated and an API key: each test's cluster is a copy of it (a
    copy takes a second; initdb and migrate take 10-25 s)."""
    template = PrivatePostgres.initdb()
    try:
        template.start()
        template.migrate()
        template.stop()
        yield template
    finally:
        template.destroy()


@pytest.fixture
def private_postgres(migrated_cluster):
    """A running PostgreSQL of the test's own that the test may stop or crash: database `recsite` migrated, and
    `.api_key` an admin key in it."""
    with postgres_copy(migrated_cluster) as server:
        yield server


@pytest.fixture
def private_redis(private_server_binaries, tmp_path):
    server = PrivateRedis(tmp_path)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_gunicorn(tmp_path):
    """start_gunicorn(database_url=..., redis_url=..., **env) -> a healthy Gunicorn, stopped after the test."""
    with ExitStack() as stack:
        yield lambda **kwargs: stack.enter_context(gunicorn_running(tmp_path, **kwargs))
