"""Serving throughput and latency with wrk, a load generator light enough not to take the CPU the server needs.

    .venv/bin/python bench/serve_wrk.py [--duration 20] [--rounds 3] [--connections 64] [--port 8767]

Set-up as bench/serve.py (whose helpers it uses): recreate the database (bench_serve_wrk), import
ml-latest-small, train v1, register and promote it, create a `serve` API key, start `gunicorn --workers 2`.
Then, in --rounds rounds, each scenario for --duration seconds from one `wrk -t1` process:

  health      GET /api/v1/health at --connections connections: a DRF APIView that runs SELECT 1 (the reference)
  recommend   GET /api/v1/users/<a MovieLens user drawn at random per request>/recommendations?k=10 at
              --connections connections: every request scores (the service keeps no cache of served lists;
              the user's state is read from the database each time), so this is the uncached figure
  latency     recommend at 2 connections: p50 and p99 when the server is not saturated

Rounds alternate the scenarios so that the machine's drift weighs on each alike; figures are pooled (requests
over seconds; latency percentiles of each round's wrk, the median round shown). Targets (issue 13): recommend
at 64 connections >= 0.40x health's throughput in the same run; at 2 connections p50 <= 5 ms, p99 <= 20 ms.
The CPU table gives wrk's own CPU (the client), the web workers', PostgreSQL's and the rest of the machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    CpuMeter,
    GunicornServer,
    PostgresBackends,
    api_key_create,
    benchmark_run,
    child_pids,
    interrupt_on_signals,
    step,
    text_table,
)
from serve import (
    HEALTH_PATH,
    RECOMMENDATIONS_PATH,
    model_register_and_promote,
    models_train,
    movielens_database,
    server_arguments,
    warm_up,
)

TARGET_THROUGHPUT_RATIO = 0.40
TARGET_P50_MS = 5.0
TARGET_P99_MS = 20.0

# A random user per request; `done` prints wrk's summary as one JSON line.
LUA = """
local users = {users}
local headers = {{["Authorization"] = "Api-Key {api_key}"}}
local template = "{template}"
math.randomseed({seed})
request = function()
  if template == "" then return wrk.format("GET", "{health}") end
  local path = string.gsub(template, "{{user}}", users[math.random(#users)])
  return wrk.format("GET", path, headers)
end
statuses = {{}}
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
local threads = {{}}
setup = function(thread) table.insert(threads, thread) end
done = function(summary, latency, requests)
  local counted = {{}}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      table.insert(counted, string.format('"%d":%d', status, n))
    end
  end
  local e = summary.errors
  io.write(string.format(
    'RESULT {{"requests":%d,"seconds":%.3f,"non_2xx":%d,"socket_errors":%d,"p50_ms":%.3f,"p99_ms":%.3f,' ..
    '"statuses":{{%s}}}}\\n',
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, table.concat(counted, ",")))
end
"""


def wrk_script(path: Path, *, users: list[str], api_key: str, recommend: bool, k: int) -> Path:
    lua_users = "{" + ",".join(json.dumps(user) for user in users) + "}"
    template = RECOMMENDATIONS_PATH.format(user="{user}", k=k) if recommend else ""
    path.write_text(LUA.format(users=lua_users, api_key=api_key, template=template, seed=7, health=HEALTH_PATH))
    return path


def wrk_run(
    *,
    kind: str,
    base_url: str,
    script: Path,
    connections: int,
    duration: float,
    server: GunicornServer,
    database_url: str,
    log_dir: Path,
) -> dict:
    step(f"{kind}: wrk -t1 -c{connections} for {duration:g} s")
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--timeout", "10s", "-s", str(script), base_url]
    backends = PostgresBackends(database_url)
    with (log_dir / f"wrk-{kind}.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log)
        meter = CpuMeter(
            client=lambda: [process.pid], web=lambda: [server.process.pid, *child_pids(server.process.pid)], db=backends
        )
        meter.start()
        output, _ = process.communicate(timeout=duration + 60)
        cpu = meter.stop()
        backends.close()
        log.write(output)
    lines = [line for line in output.decode().splitlines() if line.startswith("RESULT ")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({process.returncode}): {output.decode()[-2000:]}")
    result = json.loads(lines[-1][len("RESULT ") :]) | {"kind": kind, "cpu": cpu}
    result["ok"] = result["requests"] - result["non_2xx"] - result["socket_errors"]
    result["req_per_s"] = result["ok"] / result["seconds"]
    step(f"{kind}: {result['req_per_s']:.0f} req/s, p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
         f"statuses {result['statuses']}, {result['socket_errors']} socket errors")  # fmt: skip
    return result


def pooled(results: list[dict]) -> dict:
    ok, seconds = sum(r["ok"] for r in results), sum(r["seconds"] for r in results)
    return {
        "kind": results[0]["kind"],
        "ok": ok,
        "failed": sum(r["non_2xx"] + r["socket_errors"] for r in results),
        "req_per_s": ok / seconds,
        "p50_ms": median(r["p50_ms"] for r in results),
        "p99_ms": median(r["p99_ms"] for r in results),
        "cpu": {key: sum(r["cpu"][key] for r in results) for key in results[0]["cpu"]},
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20, help="seconds per scenario and round (default 20)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three scenarios (default 3)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections of the throughput scenarios")
    server_arguments(parser, port=8767, database="bench_serve_wrk")
    return parser.parse_args(argv)


def measure(args, log_dir: Path) -> dict[str, list[dict]]:
    url = args.database_url
    env, facts = movielens_database(url=url, dataset=args.dataset, log_dir=log_dir)
    v1_dir, _ = models_train(env=env, until=facts["v1_until"], log_dir=log_dir)
    version = model_register_and_promote(env=env, directory=v1_dir)
    api_key = api_key_create(name="bench-serve-wrk", scopes="serve", env=env)
    health = wrk_script(log_dir / "health.lua", users=facts["users"], api_key=api_key, recommend=False, k=args.k)
    recommend = wrk_script(log_dir / "recommend.lua", users=facts["users"], api_key=api_key, recommend=True, k=args.k)
    runs: dict[str, list[dict]] = {"health": [], "recommend": [], "latency": []}
    with GunicornServer(env=env, port=args.port, workers=args.workers, log_path=log_dir / "gunicorn.log") as server:
        warm_up(base_url=server.base_url, api_key=api_key, users=facts["users"], version=version)
        common = dict(
            base_url=server.base_url, duration=args.duration, server=server, database_url=url, log_dir=log_dir
        )
        for number in range(1, args.rounds + 1):
            step(f"round {number} of {args.rounds}")
            runs["health"].append(wrk_run(kind="health", script=health, connections=args.connections, **common))
            runs["recommend"].append(
                wrk_run(kind="recommend", script=recommend, connections=args.connections, **common)
            )
            runs["latency"].append(wrk_run(kind="latency", script=recommend, connections=2, **common))
    return runs


def report(runs: dict[str, list[dict]], args) -> tuple[list[str], bool]:
    figures = {kind: pooled(results) for kind, results in runs.items()}
    rows = [["scenario", "conns", "req/s", "p50 ms", "p99 ms", "failed", "client CPU/s", "web CPU/s", "db CPU/s"]]
    for kind, result in figures.items():
        cpu, seconds = result["cpu"], sum(r["seconds"] for r in runs[kind])
        conns = 2 if kind == "latency" else args.connections
        rows.append([kind, str(conns), f"{result['req_per_s']:.0f}", f"{result['p50_ms']:.2f}",
                     f"{result['p99_ms']:.2f}", str(result["failed"]), f"{cpu['client'] / seconds:.2f}",
                     f"{cpu['web'] / seconds:.2f}", f"{cpu['db'] / seconds:.2f}"])  # fmt: skip
    ratio = figures["recommend"]["req_per_s"] / figures["health"]["req_per_s"]
    per_round = [r["req_per_s"] / h["req_per_s"] for h, r in zip(runs["health"], runs["recommend"], strict=True)]
    latency = figures["latency"]
    checks = [
        (f"recommend/health throughput at {args.connections} connections {ratio:.2f} >= {TARGET_THROUGHPUT_RATIO}",
         ratio >= TARGET_THROUGHPUT_RATIO),
        (f"p50 at 2 connections {latency['p50_ms']:.2f} ms <= {TARGET_P50_MS:g}", latency["p50_ms"] <= TARGET_P50_MS),
        (f"p99 at 2 connections {latency['p99_ms']:.2f} ms <= {TARGET_P99_MS:g}", latency["p99_ms"] <= TARGET_P99_MS),
        ("no failed request", all(f["failed"] == 0 for f in figures.values())),
    ]  # fmt: skip
    lines = text_table(rows, [10, 6, 8, 8, 8, 7, 13, 10, 9])
    lines += [
        "(req/s = 2xx answers per second, pooled over rounds; p50/p99 = wrk's client-side latency, median round;",
        " CPU/s = CPU seconds per second of load: client = wrk, web = gunicorn master + workers, db = PostgreSQL)",
        f"recommend/health per round: {', '.join(f'{v:.2f}' for v in per_round)}",
        "Targets (issue 13):",
        *(f"  [{'ok' if ok else 'FAIL'}] {text}" for text, ok in checks),
    ]
    return lines, all(ok for _, ok in checks)


def main(argv) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    interrupt_on_signals()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-serve-wrk-"))
    print(f"bench/serve_wrk.py {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; logs in {log_dir}", flush=True)
    runs = measure(args, log_dir)
    lines, ok = report(runs, args)
    print(f"\n=== Serving with wrk -t1, gunicorn --workers {args.workers}, ml-latest-small, {args.rounds} rounds of "
          f"{args.duration:g} s, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} ===")  # fmt: skip
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    benchmark_run(main)
