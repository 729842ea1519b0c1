"""What a statement with no time range costs on the partitioned events table: serving's "items this user has seen"
(every item of one user's events, recommendations/sql.py's _SEEN_AGGREGATE), as a prepared statement, over the
same events split into more and more month partitions.

    .venv/bin/python bench/partition_seen.py [--partitions 4,12,36] [--events 200000] [--users 2000] [--calls 3000]

Builds a scratch table `seen_bench` (columns and index of the statement only) in --database (created when
missing), fills it with --events events of --users users spread evenly over the months (0: all in the DEFAULT
partition, as one plain table), and times --calls calls from one client per partition count: wall time per call,
and the CPU of the server backend per call (the steadier figure on a busy machine), with the load average."""

import argparse
import os
import random
import time

import psycopg2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database", default="bench_partitions")
    parser.add_argument("--partitions", default="4,12,36")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--calls", type=int, default=3_000)
    args = parser.parse_args()
    admin = psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [args.database])
        if not cursor.fetchone():
            cursor.execute(f"CREATE DATABASE {args.database}")
    connection = psycopg2.connect(host="127.0.0.1", user="postgres", dbname=args.database)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend,) = cursor.fetchone()
        for months in [int(part) for part in args.partitions.split(",")]:
            _build(cursor, months, args.events, args.users)
            for user in range(20):  # past PostgreSQL's first custom plans
                cursor.execute("EXECUTE seen(%s)", [user])
                cursor.fetchone()
            start, cpu, server_cpu = time.perf_counter(), time.process_time(), _cpu_seconds(backend)
            for _ in range(args.calls):
                cursor.execute("EXECUTE seen(%s)", [random.randrange(args.users)])
                cursor.fetchone()
            per_call = (time.perf_counter() - start) / args.calls * 1000
            client_cpu = (time.process_time() - cpu) / args.calls * 1000
            server = (_cpu_seconds(backend) - server_cpu) / args.calls * 1000
            load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
            print(
                f"{months:3d} month partitions + DEFAULT: {per_call:.3f} ms per call "
                f"(PostgreSQL backend CPU {server:.3f} ms, client CPU {client_cpu:.3f} ms; load average {load})"
            )
        cursor.execute("DROP TABLE seen_bench")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a local process (the server backend serving this connection), from /proc."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _build(cursor, months: int, events: int, users: int) -> None:
    cursor.execute("DROP TABLE IF EXISTS seen_bench")
    cursor.execute(
        "CREATE TABLE seen_bench (user_id bigint, item_id bigint, ts timestamptz NOT NULL) PARTITION BY RANGE (ts)"
    )
    cursor.execute("CREATE TABLE seen_bench_default PARTITION OF seen_bench DEFAULT")
    for month in range(months):
        start, end = (divmod(2024 * 12 + month + step, 12) for step in (0, 1))
        cursor.execute(
            f"CREATE TABLE seen_bench_{month} PARTITION OF seen_bench FOR VALUES "
            f"FROM ('{start[0]}-{start[1] + 1:02d}-01') TO ('{end[0]}-{end[1] + 1:02d}-01')"
        )
    cursor.execute("CREATE INDEX ON seen_bench (user_id, item_id)")
    days = max(months, 1) * 30
    cursor.execute(
        "INSERT INTO seen_bench SELECT g %% %s, (g * 7919) %% 5000, "
        "'2024-01-01'::timestamptz + (g %% %s) * interval '1 day' FROM generate_series(1, %s) g",
        [users, days, events],
    )
    cursor.execute("ANALYZE seen_bench")
    cursor.execute("DEALLOCATE ALL")
    cursor.execute("PREPARE seen(bigint) AS SELECT ARRAY(SELECT DISTINCT item_id FROM seen_bench WHERE user_id = $1)")


if __name__ == "__main__":
    main()
