"""Where an ingested event's CPU goes, statement by statement: `event_ingest` of 1,000-event batches in this one
process (no HTTP, no concurrency) on a scratch PostgreSQL database, every statement and commit timed.

    .venv/bin/python bench/ingest_statements.py [--scenario shared|batch] [--batches 30] [--auto-explain-ms 100]

Steps: recreate the database, migrate, create ml-latest-small's rated items, ingest 2 warm-up batches, then
--batches timed ones: shared = each event a random one of the 610 users (bench/ingest.py's shared scenario),
batch = fresh users, ~170 events each. Prints the PostgreSQL backend's CPU (read from /proc: PostgreSQL must run on
this machine) and this process's CPU per 1,000 events, then each statement's time per 1,000 events (wall time:
on a loaded machine it includes waiting for a core, so compare shares, or runs made back to back). With
--auto-explain-ms, auto_explain (loaded in this session only) prints the plan of every statement slower than that.
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, database_recreate, django_env, manage

DATASET = ROOT.parent / "shared" / "datasets" / "ml-latest-small"
BATCH_SIZE = 1000


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=("shared", "batch"), default="shared")
    parser.add_argument("--batches", type=int, default=30, help="timed batches of 1,000 events (default 30)")
    parser.add_argument(
        "--database-url", default="postgres://postgres@127.0.0.1:5432/bench_statements", help="dropped and recreated"
    )
    parser.add_argument("--dataset", type=Path, default=DATASET, help="an ml-latest-small directory")
    parser.add_argument("--auto-explain-ms", type=int, default=0, help="print the plans of slower statements")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    database_recreate(args.database_url)
    env = django_env(database_url=args.database_url, var_dir=Path(tempfile.mkdtemp(prefix="bench-statements-")))
    manage("migrate", "--no-input", env=env)
    os.environ.update(env)
    import django

    sys.path.insert(0, str(ROOT))
    django.setup()
    _run(args)


def _batches(args, rows: list[list[str]], count: int) -> list[list]:
    from recommendations.services.events import EventInput

    chooser, now = random.Random(7), datetime.now(tz=UTC)
    users = sorted({row[0] for row in rows})
    batches = []
    for number in range(count):
        batch = []
        for index in range(BATCH_SIZE):
            _, movie, rating, _ = chooser.choice(rows)
            user = chooser.choice(users) if args.scenario == "shared" else f"fresh{number}-{index // 170}"
            batch.append(
                EventInput(
                    user_id=user,
                    item_id=movie,
                    event_type="rating",
                    value=float(rating),
                    timestamp=now - timedelta(seconds=chooser.randint(60, 30 * 86400)),
                    event_id=uuid.uuid4(),
                )
            )
        batches.append(batch)
    return batches


def _backend_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run(args) -> None:
    from django.db import connection

    from recommendations.models import Item
    from recommendations.services.events import event_ingest

    with open(args.dataset / "ratings.csv", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    Item.objects.bulk_create([Item(external_id=movie) for movie in sorted({row[1] for row in rows})])
    times: dict[str, float] = collections.defaultdict(float)
    counts: collections.Counter = collections.Counter()

    def timed(execute, sql, params, many, context):
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            key = " ".join(sql.split()[:4])[:70]
            times[key] += time.perf_counter() - started
            counts[key] += 1

    connection.ensure_connection()
    commit = connection._commit

    def timed_commit():  # deferred foreign-key checks run here
        started = time.perf_counter()
        try:
            return commit()
        finally:
            times["COMMIT"] += time.perf_counter() - started
            counts["COMMIT"] += 1

    connection._commit = timed_commit
    with connection.cursor() as cursor:
        if args.auto_explain_ms:
            for statement in (
                "LOAD 'auto_explain'",
                f"SET auto_explain.log_min_duration = {args.auto_explain_ms}",
                "SET auto_explain.log_analyze = on",
                "SET auto_explain.log_level = notice",
                "SET client_min_messages = notice",
            ):
                cursor.execute(statement)
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    batches = _batches(args, rows, args.batches + 2)
    for batch in batches[:2]:
        event_ingest(events=batch)
    times.clear()
    counts.clear()
    backend, own, wall = _backend_cpu_seconds(pid), time.process_time(), time.perf_counter()
    with connection.execute_wrapper(timed):
        for batch in batches[2:]:
            event_ingest(events=batch)
    backend, own = _backend_cpu_seconds(pid) - backend, time.process_time() - own
    wall = time.perf_counter() - wall
    per_1000 = 1e6 / (args.batches * BATCH_SIZE)
    print(
        f"{args.scenario}: {args.batches} batches in {wall:.1f} s; CPU per 1,000 events: PostgreSQL backend "
        f"{backend * per_1000:.0f} ms, this process {own * per_1000:.0f} ms; load average {os.getloadavg()[0]:.1f}"
    )
    total = sum(times.values())
    for key, seconds in sorted(times.items(), key=lambda item: -item[1]):
        print(f"  {seconds * per_1000:7.1f} ms {seconds / total:4.0%}  x{counts[key]:<4d} {key}")
    for notice in connection.connection.notices:
        print(notice[:4000])


if __name__ == "__main__":
    main()
