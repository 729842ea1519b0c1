"""The broker is not a single point of blocking: with Redis down, retrain answers a JSON 503 at once and leaves
nothing in flight; a run committed but never sent is re-sent by the reconciler once the broker is back."""

import base64
import json
import os
import signal
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
import redis
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from recsite.celery import app
from retraining.models import TrainingRun
from retraining.services.policy import policy_active
from retraining.services.runs import TRAINING_QUEUE, training_runs_reconcile
from retraining.services.triggers import triggers_check
from tests.retraining.factories import dataset_store, learnable_dataset
from tests.support.processes import wait_until

pytestmark = pytest.mark.django_db(transaction=True)
FAST_SECONDS = 3.0


class PrivateRedis:
    """A redis-server of the test's own on a spare port, stopped and started again by its pid."""

    def __init__(self, directory):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.directory, self.process = directory, None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._answers, 10, 0.05, "the private redis-server")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def training_messages(self) -> list[int]:
        """The run ids of the training messages waiting in the broker."""
        waiting = self.client().lrange(TRAINING_QUEUE, 0, -1)
        bodies = [json.loads(base64.b64decode(json.loads(raw)["body"])) for raw in waiting]
        return [args[0] for args, _kwargs, _embed in bodies]

    def _answers(self) -> bool:
        try:
            return self.client().ping()
        except redis.ConnectionError:
            return False


@pytest.fixture
def broker(tmp_path):
    """The Celery app publishes to a private Redis for the test (its connection pools are dropped so that the next
    publish connects there)."""
    server = PrivateRedis(tmp_path)
    server.start()
    configured = app.conf.broker_url
    app.conf.broker_url = server.url
    app._after_fork()
    try:
        yield server
    finally:
        app.conf.broker_url = configured
        app._after_fork()
        server.kill()


def _in_flight() -> list[TrainingRun]:
    return list(TrainingRun.objects.filter(in_flight=True))


def test_retrain_with_the_broker_down_answers_a_json_503_at_once_and_the_next_after_it_returns_is_accepted(
    broker, admin_client_api
):
    admin_client_api.get("/api/v1/training-runs")  # the process's first request warms up (imports, the runtime)
    broker.kill()
    started = time.monotonic()
    refused = admin_client_api.post("/api/v1/retrain")
    assert time.monotonic() - started < FAST_SECONDS
    assert refused.status_code == 503 and refused["Content-Type"] == "application/json"
    body = refused.json()
    assert body["error"] == "broker_unavailable" and "broker" in body["message"]
    failed = TrainingRun.objects.get(pk=body["run_id"])
    assert failed.status == "failed" and "broker is unavailable" in failed.error
    assert _in_flight() == []

    broker.start()
    accepted = admin_client_api.post("/api/v1/retrain")
    assert accepted.status_code == 202 and accepted.json()["status"] == "queued"
    assert broker.training_messages() == [accepted.json()["run_id"]]


def test_retrain_from_the_admin_with_the_broker_down_says_why_and_leaves_nothing_in_flight(broker, staff_client):
    staff_client.get("/admin/retraining/trainingrun/")
    broker.kill()
    started = time.monotonic()
    response = staff_client.post("/admin/retraining/trainingrun/retrain/", follow=True)
    assert time.monotonic() - started < FAST_SECONDS
    assert response.status_code == 200
    assert any("broker is unavailable" in str(message) for message in response.context["messages"])
    assert _in_flight() == []


def test_the_retrain_command_with_the_broker_down_fails_with_the_reason_and_leaves_nothing_in_flight(broker):
    broker.kill()
    with pytest.raises(CommandError, match="broker is unavailable"):
        call_command("retrain")
    assert _in_flight() == []


def test_a_trigger_that_fires_with_the_broker_down_records_why_and_leaves_nothing_in_flight(broker):
    dataset_store(learnable_dataset(users=10, items=20, per_user=5))
    policy = policy_active()
    policy.volume_min_events = 1
    policy.save()
    broker.kill()
    evaluation = triggers_check(now=datetime(2030, 1, 1, tzinfo=UTC))
    assert evaluation.fired == "volume" and "broker is unavailable" in evaluation.action
    assert _in_flight() == []


def test_a_run_committed_but_never_sent_is_resent_by_the_reconciler_once_the_broker_is_back(broker):
    broker.kill()
    lost = TrainingRun.objects.create(trigger="volume")  # as if its process died between commit and send
    # The passes look 20 s ahead rather than the run being aged: an aged run would be due for the reconciler of
    # any real worker on this database too (the session's worker re-sent it to its own broker in CI).
    later = timezone.now() + timedelta(seconds=20)

    assert training_runs_reconcile(now=later) == {"failed_stale": [], "resent": []}
    assert TrainingRun.objects.get(pk=lost.pk).status == "queued"

    broker.start()
    assert training_runs_reconcile(now=later) == {"failed_stale": [], "resent": [lost.pk]}
    assert broker.training_messages() == [lost.pk]
    assert TrainingRun.objects.get(pk=lost.pk).dispatched_at is not None
    assert training_runs_reconcile(now=later)["resent"] == []  # sent once, not on every pass
