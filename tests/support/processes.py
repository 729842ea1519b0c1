"""Helpers for tests that start real processes (web servers, Celery workers, beat) on the test database."""

import os
import random
import socket
import subprocess
import time
from pathlib import Path

from django.db import connection

REPO = Path(__file__).resolve().parent.parent.parent


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
    handle = open(log, "wb")  # noqa: SIM115 - the process writes to it after we return
    # Its own session, so that a test can kill the process with all its children (a worker's pool).
    return subprocess.Popen(
        args, cwd=REPO, env=process_env(**extra_env), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_process(process: subprocess.Popen, timeout: float = 15) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def free_port() -> int:
    """A TCP port nothing listens on now, for a server a test starts: any, or one in TEST_PORTS ("18800-18899")
    where a shared machine gives tests a range of their own."""
    first, _, last = os.environ.get("TEST_PORTS", "0-0").partition("-")
    candidates = random.sample(range(int(first), int(last) + 1), int(last) - int(first) + 1)
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise RuntimeError(f"no free port in TEST_PORTS={os.environ['TEST_PORTS']}")


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")
