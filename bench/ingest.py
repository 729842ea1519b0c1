"""Ingestion benchmark: a real gunicorn server on a scratch PostgreSQL database, driven by locust.

    .venv/bin/python bench/ingest.py [--duration 40] [--clients 4] [--single-clients 32] [--port 8765]

Steps: recreate the database, migrate, load the ml-latest-small catalog through POST /api/v1/items,
create an API key with `create_api_key`, start `gunicorn --workers 2`, then run each scenario for a fixed
duration from a separate locust process (FastHttpUser, headless, as a library):

  batch   1,000-event requests (ml-latest-small ratings, fresh event_ids and user ids), --clients clients
  single  one event per request, --single-clients clients
  hot     like batch, but every event is on ONE item: a hot item must not serialize ingestion
  shared  like batch, but each event has a random user among ml-latest-small's 610 (the same 610 for every
          client) and a random rated item: concurrent batches that share users must not serialize ingestion

Beside them: PostgreSQL's raw COPY of the same rows into a table of the same shape as
recommendations_interaction (same indexes and foreign keys), the check that every event acknowledged
with a 201 is stored (and folded into the online features), and, when `import_movielens` exists, the time
to import ml-latest-small into a fresh database. Targets (issue 2): batch >= 5,000 events/s with features
updated, single >= 300 requests/s, import < 30 s.

The machine may be shared: a second table gives the CPU per 1,000 events of the web workers, their
PostgreSQL backends and the load generator, the share of the machine other processes took meanwhile, and
the ceiling (events/s if web + PostgreSQL had every core), which noise does not move much, and how many
PostgreSQL backends waited for a lock on average (what serializes concurrent batches).

Rating times are mapped onto the last 30 days, as a live stream would carry them; --original-timestamps
sends the 1996-2018 originals instead. Logs (gunicorn, locust) stay in the temporary folder printed first.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PYTHON,
    ROOT,
    CpuMeter,
    GunicornServer,
    PostgresBackends,
    api_key_create,
    benchmark_run,
    child_pids,
    database_connect,
    database_recreate,
    database_url,
    django_env,
    http_json,
    interrupt_on_signals,
    manage,
    process_group_stop,
)

DATASET = ROOT.parent / "shared" / "datasets" / "ml-latest-small"
EVENTS_PATH = "/api/v1/events"
BATCH_SIZE = 1000
HOT_ITEM = "356"  # Forrest Gump, the most rated movie of ml-latest-small
RECENT_DAYS = 30
TARGET_BATCH_EVENTS_PER_S = 5000
TARGET_SINGLE_REQUESTS_PER_S = 300
TARGET_IMPORT_SECONDS = 30


@dataclass(frozen=True)
class Scenario:
    name: str
    clients: int
    batch_size: int
    hot_item: str | None = None
    shared_users: bool = False


# --- Rows ---------------------------------------------------------------------------------------


def ratings_read(dataset: Path, *, original_timestamps: bool = False) -> list[tuple[str, str, str, int]]:
    """(userId, movieId, rating, timestamp) of ratings.csv, in file order (grouped by user).

    Unless `original_timestamps`, times are mapped linearly (order kept) onto the last RECENT_DAYS days,
    as a live stream would carry them; the 1996-2018 originals are the import path's business."""
    with open(dataset / "ratings.csv", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        rows = [(user, movie, rating, int(ts)) for user, movie, rating, ts in reader]
    if original_timestamps:
        return rows
    oldest, newest = min(row[3] for row in rows), max(row[3] for row in rows)
    end = int(time.time()) - 60
    scale = RECENT_DAYS * 86400 / max(1, newest - oldest)
    return [(user, movie, rating, end - int((newest - ts) * scale)) for user, movie, rating, ts in rows]


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventBodies:
    """Request bodies made of ratings rows, with a fresh event_id per event and user ids under `prefix`,
    so that no event of a run is a duplicate and no two clients share a user. JSON is assembled from
    pre-rendered fragments to keep the load generator's CPU out of the way of the server's.

    With `shared_users`, event `index` pairs a random one of the rows' distinct users with a random row's
    item, rating and time (seeded by the client): every batch then touches most users."""

    def __init__(self, rows, *, hot_item: str | None, shared_users: bool = False, seed: int = 0):
        self.users = [user for user, _, _, _ in rows]
        if shared_users:
            chooser, distinct = random.Random(seed), sorted(set(self.users))
            self.users = [chooser.choice(distinct) for _ in rows]
            rows = [chooser.choice(rows) for _ in rows]
        self.tails = [
            f'","item_id":"{hot_item or movie}","event_type":"rating","value":{rating},"timestamp":"{_iso(ts)}"}}'
            for _, movie, rating, ts in rows
        ]

    def __len__(self):
        return len(self.tails)

    def event(self, index: int, prefix: str) -> str:
        return f'{{"event_id":"{uuid.uuid4()}","user_id":"{prefix}{self.users[index]}{self.tails[index]}'

    def body(self, start: int, count: int, prefix: str) -> tuple[bytes, int]:
        size = len(self.tails)
        if count == 1:
            return self.event(start % size, prefix).encode(), 1
        events = ",".join(self.event((start + offset) % size, prefix) for offset in range(count))
        return f'{{"events":[{events}]}}'.encode(), count


# --- The load generator (child process, locust as a library) -------------------------------------


def load_main(config: dict) -> None:
    """Run one scenario with locust and print its tally as `RESULT {json}` on the last line."""
    import gevent
    from locust import FastHttpUser, constant, task
    from locust.env import Environment
    from locust.exception import StopUser

    scenario = Scenario(**config["scenario"])
    rows = ratings_read(Path(config["dataset"]), original_timestamps=config["original_timestamps"])
    headers = {"Authorization": f"Api-Key {config['api_key']}", "Content-Type": "application/json"}
    tally = {"requests": 0, "ok_requests": 0, "events_sent": 0, "events_acked": 0, "duplicates": 0,
             "rejected_events": 0, "unknown_outcome_events": 0, "errors": {}, "error_samples": {}}  # fmt: skip
    latencies: list[float] = []
    window = {"first": None, "last": None}
    deadline_box = {"deadline": float("inf")}
    client_numbers = iter(range(10**6))

    class IngestClient(FastHttpUser):
        host = config["base_url"]
        wait_time = constant(0)
        network_timeout = 120.0
        connection_timeout = 30.0

        def on_start(self):
            self.number = next(client_numbers)
            self.bodies = EventBodies(
                rows, hot_item=scenario.hot_item, shared_users=scenario.shared_users, seed=self.number
            )
            self.cursor = self.number * len(rows) // scenario.clients
            # Shared users: every client writes to the same 610 users.
            self.prefix = config["user_prefix"] + ("" if scenario.shared_users else f"c{self.number}-")

        @task
        def post_events(self):
            if time.monotonic() >= deadline_box["deadline"]:
                raise StopUser()
            body, count = self.bodies.body(self.cursor, scenario.batch_size, self.prefix)
            self.cursor += count
            started = time.monotonic()
            window["first"] = window["first"] or started
            with self.client.post(
                EVENTS_PATH, data=body, headers=headers, catch_response=True, name=scenario.name
            ) as response:
                finished = time.monotonic()
                _tally_response(response, count, finished - started)
            window["last"] = finished

    def _tally_response(response, count, seconds):
        tally["requests"] += 1
        tally["events_sent"] += count
        latencies.append(seconds)
        accepted = None
        if response.status_code == 201:
            try:
                payload = response.json()
                accepted, duplicates = int(payload["accepted"]), int(payload["duplicates"])
            except (ValueError, KeyError, TypeError):
                accepted = None
        if accepted is not None:
            tally["ok_requests"] += 1
            tally["events_acked"] += accepted
            tally["duplicates"] += duplicates
            response.success()
            return
        key = str(response.status_code)
        tally["errors"][key] = tally["errors"].get(key, 0) + 1
        # What a status 0 was (locust's word for no response: a reset, a timeout, a refused connection).
        tally["error_samples"].setdefault(key, repr(getattr(response, "error", None) or response.text)[:300])
        # The contract: a 4xx writes nothing. A 5xx, a timeout or a reset connection may or may not have.
        if 400 <= (response.status_code or 0) < 500:
            tally["rejected_events"] += count
        else:
            tally["unknown_outcome_events"] += count
        response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")

    env = Environment(user_classes=[IngestClient], host=config["base_url"])
    runner = env.create_local_runner()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    deadline_box["deadline"] = time.monotonic() + config["duration"]
    runner.start(scenario.clients, spawn_rate=max(100, scenario.clients * 10))
    gevent.sleep(1)
    while runner.user_count > 0:
        gevent.sleep(0.1)
    runner.quit()
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    total = env.stats.total
    tally.update(
        seconds=(window["last"] - window["first"]) if window["first"] and window["last"] else 0.0,
        latencies_ms=sorted(round(s * 1000, 2) for s in latencies),
        locust_requests=total.num_requests,
        locust_failures=total.num_failures,
        loadgen_cpu_seconds=(cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime),
    )
    print("RESULT " + json.dumps(tally), flush=True)


# --- The orchestrator -----------------------------------------------------------------------------


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def catalog_load(*, base_url: str, api_key: str, dataset: Path) -> int:
    """All movies of movies.csv through POST /api/v1/items, 1,000 per request; genres become categories."""
    with open(dataset / "movies.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        items = [
            {
                "item_id": row["movieId"],
                "title": row["title"],
                "categories": [genre for genre in row["genres"].split("|") if genre and genre != "(no genres listed)"],
            }
            for row in reader
        ]
    for start in range(0, len(items), BATCH_SIZE):
        status, payload = http_json(
            "POST", base_url + "/api/v1/items", body={"items": items[start : start + BATCH_SIZE]}, api_key=api_key
        )
        if status != 200:
            raise RuntimeError(f"item upsert answered {status}: {payload}")
    return len(items)


def warm_up(*, base_url: str, api_key: str, rows, user_prefix: str) -> int:
    """A few requests so each gunicorn worker has imported everything and opened its connection."""
    bodies = EventBodies(rows[:200], hot_item=None)
    acked = 0
    for number in range(6):
        body, _ = bodies.body(number * 30, 30 if number % 2 else 1, user_prefix)
        status, payload = http_json("POST", base_url + EVENTS_PATH, body=json.loads(body), api_key=api_key)
        if status != 201:
            raise RuntimeError(f"warm-up request answered {status}: {payload}")
        acked += payload["accepted"]
    return acked


def scenario_run(*, scenario: Scenario, config: dict, log_dir: Path) -> dict:
    """One scenario in a separate locust process; returns its tally."""
    config = {**config, "scenario": scenario.__dict__}
    log_path = log_dir / f"locust-{scenario.name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [PYTHON, __file__, "_load", json.dumps(config)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=log, start_new_session=True,
        )  # fmt: skip
        try:
            stdout, _ = process.communicate(timeout=config["duration"] + 180)
        finally:
            process_group_stop(process)
    lines = [line for line in stdout.decode().splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(
            f"locust process for {scenario.name} failed ({process.returncode}):\n{log_path.read_text()[-3000:]}"
        )
    return json.loads(lines[-1][len("RESULT ") :])


def interactions_count(url: str, *, user_prefix: str | None = None) -> int:
    with contextlib.closing(database_connect(url)) as connection, connection.cursor() as cursor:
        if user_prefix is None:
            cursor.execute("SELECT count(*) FROM recommendations_interaction")
        else:
            cursor.execute(
                "SELECT count(*) FROM recommendations_interaction i JOIN recommendations_enduser u ON u.id = i.user_id "
                "WHERE u.external_id LIKE %s",
                [user_prefix + "%"],
            )
        return cursor.fetchone()[0]


def feature_totals(url: str) -> tuple[int, int]:
    """Sum of event_count over user and item feature rows: each stored event is counted once in each."""
    with contextlib.closing(database_connect(url)) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT coalesce(sum(event_count), 0) FROM recommendations_userfeatures), "
            "(SELECT coalesce(sum(event_count), 0) FROM recommendations_itemfeatures)"
        )
        return cursor.fetchone()


def copy_rate(url: str, rows, *, repeats: int) -> tuple[int, float]:
    """PostgreSQL's raw COPY of the same rows into a scratch table shaped like recommendations_interaction
    (columns, defaults, indexes, unique constraint, deferred foreign keys). Returns (rows, seconds)."""
    table = "bench_copy_interaction"
    with contextlib.closing(database_connect(url)) as connection:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
            cursor.execute(f"CREATE TABLE {table} (LIKE recommendations_interaction INCLUDING ALL)")
            cursor.execute(
                f"ALTER TABLE {table} "
                f"ADD FOREIGN KEY (user_id) REFERENCES recommendations_enduser (id) DEFERRABLE INITIALLY DEFERRED, "
                f"ADD FOREIGN KEY (item_id) REFERENCES recommendations_item (id) DEFERRABLE INITIALLY DEFERRED"
            )
            cursor.execute("SELECT external_id, id FROM recommendations_item")
            items = dict(cursor.fetchall())
            cursor.execute("SELECT id FROM recommendations_enduser ORDER BY id LIMIT 5000")
            users = [user_id for (user_id,) in cursor.fetchall()]
        connection.commit()
        total_rows, total_seconds = 0, 0.0
        now = datetime.now(UTC).isoformat()
        for repeat in range(repeats):
            buffer = io.StringIO()
            for user, movie, rating, ts in rows:
                user_id = users[(int(user) + repeat * 611) % len(users)]
                buffer.write(f"{uuid.uuid4()},{user_id},{items[movie]},rating,{rating},{_iso(ts)},{now}\n")
            buffer.seek(0)
            started = time.perf_counter()
            with connection.cursor() as cursor:
                columns = "event_id, user_id, item_id, event_type, value, timestamp, received_at"
                cursor.copy_expert(f"COPY {table} ({columns}) FROM STDIN WITH (FORMAT csv)", buffer)
            connection.commit()
            total_seconds += time.perf_counter() - started
            total_rows += len(rows)
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE {table}")
        connection.commit()
    return total_rows, total_seconds


def import_time(*, base_url: str, var_dir: Path, dataset: Path) -> dict | None:
    """Seconds for `manage.py import_movielens` into a fresh database, or None if the command is not there."""
    if not (ROOT / "recommendations" / "services" / "movielens.py").exists():
        return None
    url = database_url(base_url, "bench_ingest_import")
    database_recreate(url)
    env = django_env(database_url=url, var_dir=var_dir)
    manage("migrate", "--noinput", env=env)
    started = time.perf_counter()
    process = manage("import_movielens", str(dataset), env=env, timeout=900)
    seconds = time.perf_counter() - started
    with contextlib.closing(database_connect(url)) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT (SELECT count(*) FROM recommendations_interaction), (SELECT count(*) FROM recommendations_item), "
            "(SELECT count(*) FROM recommendations_enduser)"
        )
        events, items, users = cursor.fetchone()
    return {
        "seconds": seconds,
        "events": events,
        "items": items,
        "users": users,
        "output": process.stdout.strip().splitlines()[-3:],
    }


def _verdict(value: float, target: float, *, below: bool = False) -> str:
    return "PASS" if (value < target if below else value >= target) else "FAIL"


def _table(rows: list[list[str]], widths: list[int]) -> list[str]:
    """Rows of cells: the first column left-aligned, the sized ones right-aligned, any further one as is."""
    lines = []
    for cells in rows:
        sized = [
            f"{cells[0]:<{widths[0]}}",
            *(f"{cell:>{width}}" for cell, width in zip(cells[1:], widths[1:], strict=False)),
        ]
        lines.append(" ".join(sized + list(cells[len(widths) :])).rstrip())
    return lines


def _per_s(count: int, seconds: float) -> float:
    return count / seconds if seconds else 0.0


def report(results: dict[str, dict], scenarios: list[Scenario], copy: tuple[int, float]) -> list[str]:
    """The summary table: each scenario's throughput and latency beside PostgreSQL's raw COPY, with verdicts."""
    copy_rows, copy_seconds = copy
    copy_per_s = copy_rows / copy_seconds
    header = [
        "scenario",
        "clients",
        "requests",
        "events",
        "seconds",
        "events/s",
        "req/s",
        "p50 ms",
        "p99 ms",
        "of COPY",
    ]
    rows = [
        [*header, " target"],
        ["COPY", "1", "-", str(copy_rows), f"{copy_seconds:.2f}", f"{copy_per_s:.0f}", "-", "-", "-", "100%"],
    ]
    batch = results.get("batch")
    for scenario in scenarios:
        r = results[scenario.name]
        events_per_s, requests_per_s = _per_s(r["events_acked"], r["seconds"]), _per_s(r["ok_requests"], r["seconds"])
        p50, p99 = percentile(r["latencies_ms"], 0.50), percentile(r["latencies_ms"], 0.99)
        if scenario.batch_size == 1:
            target = (
                f">= {TARGET_SINGLE_REQUESTS_PER_S} req/s: {_verdict(requests_per_s, TARGET_SINGLE_REQUESTS_PER_S)}"
            )
        else:
            target = f">= {TARGET_BATCH_EVENTS_PER_S} ev/s: {_verdict(events_per_s, TARGET_BATCH_EVENTS_PER_S)}"
        if (scenario.hot_item or scenario.shared_users) and batch:
            target += f", {scenario.name}/batch = {events_per_s / _per_s(batch['events_acked'], batch['seconds']):.2f}"
        rows.append(
            [scenario.name, str(scenario.clients), str(r["ok_requests"]), str(r["events_acked"]), f"{r['seconds']:.1f}",
             f"{events_per_s:.0f}", f"{requests_per_s:.1f}", f"{p50:.1f}", f"{p99:.1f}",
             f"{events_per_s / copy_per_s:.1%}", " " + target]
        )  # fmt: skip
    return _table(rows, [8, 7, 8, 8, 7, 9, 7, 8, 8, 8])


def cpu_report(results: dict[str, dict], scenarios: list[Scenario]) -> list[str]:
    """CPU per 1,000 acknowledged events of the web workers, their PostgreSQL backends and the load
    generator. On a shared machine, `others` is the share of the machine used by unrelated processes
    (the noise in the throughput figures); `ceiling` is events/s if web + PostgreSQL had every core."""
    cores = os.cpu_count() or 1
    rows = [["scenario", "web ms", "pg ms", "loadgen ms", "machine busy", "others", "ceiling ev/s", "lock waits"]]
    for scenario in scenarios:
        r = results[scenario.name]
        cpu, events = r["cpu"], max(1, r["events_acked"])
        server = cpu["web"] + cpu["db"]
        others = max(0.0, cpu["machine_busy"] - server - cpu["loadgen"]) / cpu["machine_total"]
        rows.append(
            [scenario.name, *(f"{cpu[k] / events * 1e6:.0f}" for k in ("web", "db", "loadgen")),
             f"{cpu['machine_busy'] / cpu['machine_total']:.0%}", f"{others:.0%}",
             f"{cores * events / server:.0f}" if server else "-", f"{cpu['lock_waits']:.2f}"]
        )  # fmt: skip
    return _table(rows, [8, 8, 8, 10, 12, 7, 12, 10])


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=40, help="seconds per scenario (default 40)")
    parser.add_argument(
        "--clients", type=int, default=4, help="concurrent clients of the batch and hot scenarios (default 4)"
    )
    parser.add_argument(
        "--single-clients", type=int, default=32, help="concurrent clients of the single-event scenario (default 32)"
    )
    parser.add_argument("--port", type=int, default=8765, help="gunicorn's port on 127.0.0.1 (default 8765)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/bench_ingest", help="dropped and recreated"
    )
    parser.add_argument(
        "--dataset", type=Path, default=DATASET, help="an ml-latest-small directory (ratings.csv, movies.csv)"
    )
    parser.add_argument(
        "--scenarios", default="batch,single,hot,shared", help="which of batch,single,hot,shared to run (default all)"
    )
    parser.add_argument("--copy-repeats", type=int, default=3, help="COPY the ratings this many times (default 3)")
    parser.add_argument(
        "--original-timestamps",
        action="store_true",
        help=f"send the 1996-2018 rating times instead of mapping them onto the last {RECENT_DAYS} days",
    )
    parser.add_argument("--skip-import", action="store_true", help="do not time import_movielens")
    return parser.parse_args(argv)


def step(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


class FoldBacklog(PostgresBackends):
    """PostgresBackends that also samples the events waiting for the online-features fold (PendingFold rows, where
    the table exists): the largest backlog seen, and `drain()` to wait for it to empty once the load stops."""

    TABLE = "recommendations_pendingfold"

    def __init__(self, url: str):
        super().__init__(url)
        self.max_waiting = 0
        self.exists = self._query(f"SELECT to_regclass('{self.TABLE}') IS NOT NULL")

    def _query(self, statement: str):
        with self.connection.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchone()[0]

    def waiting_events(self) -> int:
        if not self.exists:
            return 0
        return self._query(f"SELECT coalesce(sum(jsonb_array_length(event_ids)), 0) FROM {self.TABLE}")

    def __call__(self) -> list[int]:
        self.max_waiting = max(self.max_waiting, self.waiting_events())
        return super().__call__()

    def drain(self, *, timeout: float = 30.0) -> tuple[int, float]:
        """(events waiting when the load stopped, seconds until none was), polled every 50 ms."""
        started, at_stop = time.monotonic(), self.waiting_events()
        while self.waiting_events() and time.monotonic() - started < timeout:
            time.sleep(0.05)
        return at_stop, time.monotonic() - started


def scenario_measure(*, scenario: Scenario, server: GunicornServer, url: str, config: dict, log_dir: Path) -> dict:
    """Run one scenario; its tally gains the CPU spent by web workers, PostgreSQL backends, the load
    generator and the machine, and the number of its events found stored."""
    shape = f"{scenario.clients} clients x {scenario.batch_size} event(s)/request"
    step(f"{scenario.name}: {shape}, {config['duration']:g} s")
    prefix = f"{scenario.name}-{config['run_tag']}-"
    backends = FoldBacklog(url)
    meter = CpuMeter(web=lambda: [server.process.pid, *child_pids(server.process.pid)], db=backends)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    meter.start()
    try:
        result = scenario_run(scenario=scenario, config={**config, "user_prefix": prefix}, log_dir=log_dir)
    finally:
        cpu = meter.stop()
        cpu["lock_waits"] = backends.lock_waits()
        # The server's fold runs after each commit; what waits is folded within FOLD_SWEEP_SECONDS.
        at_stop, drain_seconds = backends.drain()
        result["fold_backlog"] = {"max": backends.max_waiting, "at_stop": at_stop, "drain_seconds": drain_seconds}
        backends.close()
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu["loadgen"] = sum(getattr(children_after, f) - getattr(children_before, f) for f in ("ru_utime", "ru_stime"))
    result.update(cpu=cpu, stored=interactions_count(url, user_prefix=prefix))
    step(
        f"{scenario.name}: {result['ok_requests']} requests, {result['events_acked']} events acknowledged "
        f"in {result['seconds']:.1f} s, {result['stored']} stored, errors {result['errors'] or 'none'} "
        f"(locust: {result['locust_requests']} requests, {result['locust_failures']} failures)"
    )
    for code, sample in result.get("error_samples", {}).items():
        step(f"{scenario.name}: first {code}: {sample}")
    backlog = result["fold_backlog"]
    step(
        f"{scenario.name}: events waiting for the features fold: at most {backlog['max']} (sampled every 0.5 s), "
        f"{backlog['at_stop']} when the load stopped, none {backlog['drain_seconds']:.2f} s later"
    )
    return result


def run(args, scenarios: list[Scenario], log_dir: Path) -> dict:
    """Everything that touches the database and the server; returns the figures to report."""
    run_tag = uuid.uuid4().hex[:6]
    url = args.database_url
    env = django_env(database_url=url, var_dir=log_dir / "var")
    step(f"recreating {url} and migrating")
    database_recreate(url)
    manage("migrate", "--noinput", env=env)
    api_key = api_key_create(name=f"bench-ingest-{run_tag}", scopes="ingest", env=env)
    rows = ratings_read(args.dataset, original_timestamps=args.original_timestamps)
    results: dict[str, dict] = {}
    with GunicornServer(env=env, port=args.port, workers=args.workers, log_path=log_dir / "gunicorn.log") as server:
        step(f"gunicorn --workers {args.workers} is healthy on {server.base_url}")
        started = time.perf_counter()
        items = catalog_load(base_url=server.base_url, api_key=api_key, dataset=args.dataset)
        step(f"catalog: {items} items through POST /api/v1/items in {time.perf_counter() - started:.1f} s")
        warm_up_acked = warm_up(base_url=server.base_url, api_key=api_key, rows=rows, user_prefix=f"warmup-{run_tag}-")
        config = {
            "base_url": server.base_url,
            "api_key": api_key,
            "dataset": str(args.dataset),
            "duration": args.duration,
            "original_timestamps": args.original_timestamps,
            "run_tag": run_tag,
        }
        try:
            for scenario in scenarios:
                results[scenario.name] = scenario_measure(
                    scenario=scenario, server=server, url=url, config=config, log_dir=log_dir
                )
        except BaseException:
            print(f"--- gunicorn log (tail) ---\n{server.log_tail()}", file=sys.stderr)
            raise
        backlog = FoldBacklog(url)  # requests still in flight when the last scenario stopped fold meanwhile
        backlog.drain()
        backlog.close()
    figures = {
        "results": results,
        "acked_total": warm_up_acked + sum(r["events_acked"] for r in results.values()),
        "stored_total": interactions_count(url),
        "feature_totals": feature_totals(url),
    }
    step(f"COPY reference: {len(rows)} rows x {args.copy_repeats}")
    figures["copy"] = copy_rate(url, rows, repeats=args.copy_repeats)
    figures["import"] = None
    if not args.skip_import:
        step("timing import_movielens into a fresh database")
        figures["import"] = import_time(base_url=url, var_dir=log_dir / "var", dataset=args.dataset)
    return figures


def lost_events_report(figures: dict, scenarios: list[Scenario]) -> tuple[list[str], bool]:
    """Every event acknowledged with a 201 must be stored, and folded into its user's and item's features."""
    lines, ok = ["No acknowledged event lost:"], True
    results = figures["results"]
    for scenario in scenarios:
        r = results[scenario.name]
        acked, stored, unknown = r["events_acked"], r["stored"], r["unknown_outcome_events"]
        # A 5xx or a dropped connection may have committed or not; only then may more be stored than acknowledged.
        good = acked <= stored <= acked + unknown
        ok &= good
        lines.append(
            f"  {scenario.name:<8} acknowledged {acked:>8}  stored {stored:>8}  "
            f"(duplicates {r['duplicates']}, outcome unknown {unknown})  "
            f"{'OK' if good else 'MISMATCH'}"
        )
    unknown_total = sum(r["unknown_outcome_events"] for r in results.values())
    acked_total, stored_total = figures["acked_total"], figures["stored_total"]
    good = acked_total <= stored_total <= acked_total + unknown_total
    ok &= good
    lines.append(
        f"  total    acknowledged {acked_total:>8}  stored {stored_total:>8}  "
        f"(all rows of recommendations_interaction, warm-up included)  {'OK' if good else 'MISMATCH'}"
    )
    user_events, item_events = figures["feature_totals"]
    good = user_events == item_events == stored_total
    ok &= good
    lines.append(
        f"  features sum(UserFeatures.event_count) = {user_events}, sum(ItemFeatures.event_count) = {item_events}: "
        f"{'OK, every stored event is folded into its user and its item' if good else 'MISMATCH'}"
    )
    return lines, ok


def import_report(imported: dict | None, args) -> str:
    if imported is None:
        if args.skip_import:
            return "import_movielens: skipped (--skip-import)"
        return "import_movielens: not timed, recommendations/services/movielens.py does not exist yet"
    return (
        f"import_movielens {args.dataset}: {imported['seconds']:.1f} s into a fresh database "
        f"({imported['events']} events, {imported['items']} items, {imported['users']} users; "
        f"target < {TARGET_IMPORT_SECONDS} s: {_verdict(imported['seconds'], TARGET_IMPORT_SECONDS, below=True)})"
    )


def code_version() -> str:
    """The commit the server runs, with '+changes' when the working tree differs from it."""
    git = ["git", "-C", str(ROOT)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def main(argv) -> int:
    args = parse_args(argv)
    interrupt_on_signals()
    all_scenarios = {
        "batch": Scenario("batch", args.clients, BATCH_SIZE),
        "single": Scenario("single", args.single_clients, 1),
        "hot": Scenario("hot", args.clients, BATCH_SIZE, hot_item=HOT_ITEM),
        "shared": Scenario("shared", args.clients, BATCH_SIZE, shared_users=True),
    }
    scenarios = [all_scenarios[name.strip()] for name in args.scenarios.split(",") if name.strip()]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    started = f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"
    print(f"bench/ingest.py {started}, code {code_version()}; logs in {log_dir}", flush=True)
    figures = run(args, scenarios, log_dir)

    finished = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    print(f"\n=== Ingestion on PostgreSQL, gunicorn --workers {args.workers}, {finished} ===")
    print("\n".join(report(figures["results"], scenarios, figures["copy"])))
    print("(p50/p99: request latency seen by the client, including queueing for a gunicorn worker)\n")
    print(f"CPU on {os.cpu_count()} cores, load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}:")
    print("\n".join(cpu_report(figures["results"], scenarios)))
    print(
        "(CPU per 1,000 acknowledged events; others = unrelated processes' share of the machine; lock waits = "
        "PostgreSQL backends waiting for a lock, on average, sampled every 0.5 s)\n"
    )
    lines, ok = lost_events_report(figures, scenarios)
    print("\n".join(lines) + "\n")
    print(import_report(figures["import"], args))
    return 0 if ok else 1


if __name__ == "__main__":
    benchmark_run(main, load_main)
