"""Metrics across real processes: gunicorn's workers add up in one scrape whichever worker answers it, a worker
that dies leaves the live gauges but not the counters, and a Celery worker serves its pool's metrics on its port."""

import json
import os
import signal
import socket
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from recommendations.services.api_keys import api_key_create
from retraining.tasks import reconcile_runs_task
from tests.support.processes import start_process, stop_process, wait_until

pytestmark = [pytest.mark.django_db(transaction=True)]
BIN = Path(sys.executable).parent
TOKEN = "metrics-test-token"


def port_in_range() -> int:
    """A free port among those this suite may use (18300-18399)."""
    for port in range(18300, 18400):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 18300-18399")


def get(url: str, **headers) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError:
        return 0, b""


def samples_of(text: bytes, name: str) -> list:
    return [
        sample
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
        if sample.name == name
    ]


@pytest.fixture
def web(tmp_path):
    port = port_in_range()
    log = tmp_path / "web.log"
    process = start_process(
        [str(BIN / "gunicorn"), "recsite.wsgi:application", "--workers", "2", "--bind", f"127.0.0.1:{port}"],
        log,
        DEBUG="false",
        METRICS_TOKEN=TOKEN,
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: get(f"{base}/api/v1/health")[0] == 200 or process.poll() is not None, 120, message="gunicorn"
        )
        assert process.poll() is None, log.read_text()
        yield base, process
    finally:
        stop_process(process)
        print(log.read_text(errors="replace")[-3000:])


def worker_pids(master: int) -> set[int]:
    return {int(pid) for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split()}


def scrape(base: str) -> bytes:
    status, body = get(f"{base}/metrics", Authorization=f"Bearer {TOKEN}")
    assert status == 200, body
    return body


def test_two_gunicorn_workers_add_up_in_every_scrape_and_a_dead_workers_gauges_go_but_its_counts_stay(web):
    base, master = web
    _, key = api_key_create(name="metrics", scopes=["ingest"])
    for n in range(12):  # one connection each, so the kernel hands them to both workers
        body = json.dumps({"user_id": f"u{n}", "item_id": "i1", "event_type": "view", "event_id": str(uuid.uuid4())})
        request = urllib.request.Request(
            f"{base}/api/v1/events",
            data=body.encode(),
            method="POST",
            headers={"Authorization": f"Api-Key {key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 201
    pids = worker_pids(master.pid)
    assert len(pids) == 2

    def accepted(text: bytes) -> float:
        return sum(s.value for s in samples_of(text, "recsite_events_total") if s.labels["outcome"] == "accepted")

    def serving_pids(text: bytes) -> set[int]:
        return {int(s.labels["pid"]) for s in samples_of(text, "recsite_serving_model_version")}

    for _ in range(6):  # whichever worker answers, the sum is the same
        text = scrape(base)
        assert accepted(text) == 12
    wait_until(lambda: serving_pids(scrape(base)) == pids, 15, message="both workers' gauges")
    assert get(f"{base}/metrics")[0] == 200  # loopback is allowed locally without the token too
    assert get(f"{base}/metrics", Authorization="Bearer wrong")[0] == 200

    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: len(worker_pids(master.pid) - pids) == 1, 60, message="a replacement worker")
    survivors = worker_pids(master.pid)
    wait_until(lambda: serving_pids(scrape(base)) == survivors, 30, message="the dead worker's gauges to go")
    assert accepted(scrape(base)) == 12  # its counts stay


def test_a_celery_worker_serves_its_pools_metrics_on_its_port(tmp_path):
    port = port_in_range()
    log = tmp_path / "worker.log"
    queue = f"metrics-{port}"  # its own queue: the session's worker on `default` must not take the task
    process = start_process(
        [
            str(BIN / "celery"),
            "-A",
            "recsite",
            "worker",
            "--loglevel",
            "INFO",
            "--queues",
            queue,
            "--concurrency",
            "1",
            "--hostname",
            f"metrics-{port}@%h",
            "--without-gossip",
            "--without-mingle",
        ],
        log,
        CELERY_METRICS_PORT=str(port),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"),
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_until(lambda: b"ready" in log.read_bytes() or process.poll() is not None, 60, message="the worker")
        assert process.poll() is None, log.read_text()
        reconcile_runs_task.apply_async(queue=queue)

        def succeeded() -> float:
            status, text = get(url)
            return status == 200 and sum(
                s.value
                for s in samples_of(text, "recsite_celery_tasks_total")
                if s.labels == {"task": "retraining.reconcile_runs", "outcome": "success"}
            )

        assert wait_until(succeeded, 60, message="the task counted on the worker's port") == 1
        assert samples_of(get(url)[1], "recsite_celery_task_duration_seconds_count")
    finally:
        stop_process(process)
        print(log.read_text(errors="replace")[-3000:])
