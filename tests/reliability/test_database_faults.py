"""PostgreSQL goes away under ingest load through a real gunicorn: a clean fast restart, then a crash
(`pg_ctl -m immediate`, recovered from the WAL on the next start), both on the same private cluster and the same
gunicorn. Each outage runs once per module (the ledgers' ids are apart); the tests below each check one guarantee
on what the client saw and what the database holds afterwards."""

import time
from dataclasses import dataclass

import pytest

from tests.reliability.ledger import NO_ANSWER, IngestLoad, Ledger, http_json
from tests.reliability.servers import PrivatePostgres, gunicorn_running, postgres_copy
from tests.support.processes import wait_until

pytestmark = pytest.mark.reliability
LOAD_BEFORE_S = 2.0  # ingest load before the fault, so that requests are in flight when it strikes
DOWN_S = 2.0  # how long the database stays down
LOAD_AFTER_S = 3.0  # load after the first success, to show the web processes keep serving
SOAK_CRASHES = 5
LOST_ANSWERS = 20
HANG_UP_BATCH = 25  # events: enough work that the server is still at it when the client hangs up after 2 ms
GRACE_S = 2.0  # requests already in flight when the first one succeeded may still fail


@dataclass
class Outage:
    mode: str
    server: PrivatePostgres
    ledger: Ledger
    load: IngestLoad
    down: float  # time.monotonic() when the database was stopped
    up: float  # when it answered again
    recovered_s: float  # from `up` to the first acknowledged batch
    workers_before: set
    workers_after: set
    health_after: int


def database_down_and_back(server: PrivatePostgres, load: IngestLoad, mode: str, down_s: float = DOWN_S):
    """(when the database went down, when it answered again), once the load has had a batch acknowledged since."""
    time.sleep(LOAD_BEFORE_S)
    down = time.monotonic()
    server.stop("fast" if mode == "restart" else "immediate")
    time.sleep(down_s)
    server.start()
    up = time.monotonic()
    wait_until(lambda: load.first_success_after(up), 30, message="an acknowledged batch after the restart")
    return down, up


def outage_under_load(web, server: PrivatePostgres, key: str, mode: str) -> Outage:
    ledger = Ledger(prefix=f"db-{mode}")
    workers = web.worker_pids
    with IngestLoad(web.base, key, ledger) as load:
        down, up = database_down_and_back(server, load, mode)
        time.sleep(LOAD_AFTER_S)
    return Outage(
        mode=mode,
        server=server,
        ledger=ledger,
        load=load,
        down=down,
        up=up,
        recovered_s=load.first_success_after(up) - up,
        workers_before=workers,
        workers_after=web.worker_pids,
        health_after=http_json(f"{web.base}/api/v1/health")[0],
    )


@pytest.fixture(scope="module")
def web_on_private_postgres(migrated_cluster, tmp_path_factory):
    with (
        postgres_copy(migrated_cluster) as server,
        gunicorn_running(tmp_path_factory.mktemp("web"), database_url=server.url()) as web,
    ):
        yield web, server


@pytest.fixture(scope="module", params=["restart", "crash"])
def outage(request, web_on_private_postgres):
    web, server = web_on_private_postgres
    happened = outage_under_load(web, server, server.api_key, request.param)
    with server.cursor() as cursor:
        report = happened.ledger.report(cursor)
    failed = happened.load.failures_between(happened.down, happened.up + happened.recovered_s)
    print(
        f"\npostgres {happened.mode}: {report}; {len(failed)} failed attempts while down "
        f"({happened.up - happened.down:.1f}s); first acknowledged batch {happened.recovered_s:.2f}s after "
        f"the server was back; {len(happened.load.attempts)} attempts in all"
    )
    return happened


def test_the_fault_reached_the_client(outage):
    assert outage.load.failures_between(outage.down, outage.up + outage.recovered_s), "the test tested nothing"


def test_every_acknowledged_event_is_stored_exactly_once(outage):
    with outage.server.cursor() as cursor:
        report = outage.ledger.report(cursor)  # fails if an acknowledged event is missing
    assert report.acknowledged > 0 and report.duplicates == 0 and report.abandoned == 0


def test_a_retry_with_the_same_event_ids_is_answered_as_duplicates_and_adds_nothing(outage):
    assert outage.ledger.resent > 0
    assert not outage.ledger.wrong_answers, outage.ledger.wrong_answers[:3]


def test_the_online_features_add_up_to_the_stored_events(outage):
    with outage.server.cursor() as cursor:
        outage.ledger.assert_features_add_up(cursor)


def test_the_same_web_workers_serve_again_once_the_database_is_back(outage):
    assert outage.recovered_s < 10
    assert outage.workers_after == outage.workers_before, "a web worker was restarted"
    assert outage.load.failures_between(outage.up + outage.recovered_s + GRACE_S, time.monotonic()) == []
    assert outage.health_after == 200


def test_no_valid_batch_is_refused_with_a_4xx_during_the_outage(outage):
    assert outage.load.client_errors() == []


def test_the_outage_is_answered_in_json_never_with_an_html_page(outage):
    assert outage.load.html_answers() == []


def test_a_batch_whose_answer_the_client_never_got_is_found_as_duplicates_on_retry(web_on_private_postgres):
    """The client hangs up before the answer (a timeout shorter than the request), then retries the same batch."""
    web, server = web_on_private_postgres
    ledger = Ledger(prefix="hang-up")
    answers = set()
    for _ in range(LOST_ANSWERS):
        batch = {"events": [ledger.new_event() for _ in range(HANG_UP_BATCH)]}
        hung_up, _ = http_json(f"{web.base}/api/v1/events", server.api_key, "POST", batch, timeout=0.002)
        status, body = http_json(f"{web.base}/api/v1/events", server.api_key, "POST", batch)
        assert status == 201, body
        ledger.acknowledge(batch["events"])
        ledger.answers_lost += hung_up == NO_ANSWER and body["duplicates"] > 0
        answers.add((body["accepted"], body["duplicates"]))
    with server.cursor() as cursor:
        report = ledger.report(cursor)
        ledger.assert_features_add_up(cursor)
    print(f"\nclient hang-ups, {LOST_ANSWERS} batches: {report}")
    assert answers <= {(HANG_UP_BATCH, 0), (0, HANG_UP_BATCH)}
    assert report.duplicates == 0 and report.answers_lost > 0


@pytest.mark.slow
def test_repeated_crashes_under_heavier_load_lose_no_acknowledged_event(private_postgres, start_gunicorn):
    web = start_gunicorn(database_url=private_postgres.url())
    workers = web.worker_pids
    ledger = Ledger(prefix="soak", users=60, items=100)
    started = time.monotonic()
    with IngestLoad(web.base, private_postgres.api_key, ledger, threads=6, batch=10) as load:
        recoveries = []
        for _ in range(SOAK_CRASHES):
            _, up = database_down_and_back(private_postgres, load, "crash", down_s=1.0)
            recoveries.append(load.first_success_after(up) - up)
        time.sleep(LOAD_AFTER_S)
    with private_postgres.cursor() as cursor:
        report = ledger.report(cursor)
        ledger.assert_features_add_up(cursor)
    print(
        f"\n{SOAK_CRASHES} postgres crashes in {time.monotonic() - started:.0f}s: {report}; first acknowledged "
        f"batch after each restart: {', '.join(f'{seconds:.2f}s' for seconds in recoveries)}"
    )
    assert report.duplicates == 0 and report.abandoned == 0 and not ledger.wrong_answers
    assert not load.client_errors() and web.worker_pids == workers
