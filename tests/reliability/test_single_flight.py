"""At most one training run in flight, guaranteed by the database: concurrent retrain requests released
together by a barrier, each on its own connection, create exactly one run and enqueue it once; every other
request gets a 409 naming that run."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from rest_framework.test import APIClient

from recommendations.services.api_keys import api_key_create
from retraining.models import TrainingRun
from retraining.services import runs

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]
REQUESTS = 8


@pytest.fixture
def enqueued(monkeypatch) -> list[int]:
    """The run ids handed to the broker (recorded instead of sent: no trainer runs here)."""
    sent: list[int] = []
    monkeypatch.setattr(runs, "training_run_enqueue", lambda *, run_id: sent.append(run_id))
    return sent


def concurrent_retrain_requests(count: int) -> list[tuple[int, dict]]:
    _, secret = api_key_create(name="ops", scopes=["admin"])
    barrier = threading.Barrier(count)

    def request(_):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {secret}")
        try:
            barrier.wait(timeout=30)
            response = client.post("/api/v1/retrain")
            return response.status_code, response.json()
        finally:
            connection.close()  # each thread's own connection

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(request, range(count)))


def test_concurrent_retrain_requests_start_exactly_one_run_and_the_others_get_409_with_its_id(enqueued):
    answers = concurrent_retrain_requests(REQUESTS)

    run = TrainingRun.objects.get()
    statuses = sorted(status for status, _ in answers)
    print(f"\n{REQUESTS} concurrent retrain requests: {statuses.count(202)} accepted, {statuses.count(409)} refused")
    assert statuses == [202] + [409] * (REQUESTS - 1)
    assert [body["run_id"] for _, body in answers] == [run.pk] * REQUESTS
    assert {body["error"] for status, body in answers if status == 409} == {"run_in_flight"}
    assert enqueued == [run.pk]
