"""Connections spread over gunicorn's workers (recsite/gunicorn_worker.py): a client that keeps two connections
alive gets them served by two workers, not queued behind each other in one while the other idles."""

import http.client
import sys
from pathlib import Path

import psutil
import pytest

from tests.support.processes import free_port, start_process, stop_process, wait_until

pytestmark = [pytest.mark.django_db(transaction=True)]
BIN = Path(sys.executable).parent


def owner(workers: list[psutil.Process], connection: http.client.HTTPConnection) -> int:
    """The worker holding the server side of this client connection."""
    port = connection.sock.getsockname()[1]
    for worker in workers:
        if any(c.raddr and c.raddr.port == port for c in worker.net_connections(kind="tcp")):
            return worker.pid
    raise AssertionError(f"no worker holds the connection from port {port}")


def health(connection: http.client.HTTPConnection) -> None:
    connection.request("GET", "/api/v1/health")
    response = connection.getresponse()
    response.read()
    assert response.status == 200


def test_two_kept_alive_connections_are_served_by_two_workers(tmp_path):
    port = free_port()
    log = tmp_path / "web.log"
    master = start_process(
        [str(BIN / "gunicorn"), "recsite.wsgi:application", "--workers", "2", "--bind", f"127.0.0.1:{port}"],
        log,
        DEBUG="false",
        WEB_ACCEPT_DEFER_MS="50",  # generous, so that a busy test machine still wakes the idle worker in time
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    try:
        workers: list[psutil.Process] = []
        serving: set[int] = set()

        def up() -> bool:
            """Both workers answer (a worker still loading the application accepts nothing yet): fresh probe
            connections land on either worker until each has answered one."""
            workers[:] = psutil.Process(master.pid).children()
            probe = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                health(probe)
                serving.add(owner(workers, probe))
            except (OSError, AssertionError):
                return False
            finally:
                probe.close()
            return len(workers) == 2 and len(serving) == 2

        wait_until(lambda: master.poll() is not None or up(), 120, interval=0.05, message="both gunicorn workers")
        assert master.poll() is None, log.read_text()
        owners = []
        for _ in range(6):  # without the spreading, each pair shares a worker half of the time
            first = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            second = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            health(first)
            health(second)
            owners.append((owner(workers, first), owner(workers, second)))
            health(first)  # both still served on their own connections
            health(second)
            first.close()
            second.close()
        assert all(a != b for a, b in owners), owners
    finally:
        stop_process(master)
