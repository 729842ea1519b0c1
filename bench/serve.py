"""Serving benchmark: recommendations under load on a real gunicorn server, beside a trivial DRF endpoint,
and a model hot swap under that load.

    .venv/bin/python bench/serve.py [--duration 30] [--clients 100] [--swap-after 12] [--port 8766]

Steps: recreate the database (bench_serve), migrate, import ml-latest-small with `import_movielens`, train
two models with `manage.py train --output DIR` (v1 on the events before the 90th percentile of time, v2 on
all of them, as a retraining would), register v1 and promote it, create a `serve` API key, start
`gunicorn --workers 2` with an access log recording each request's duration (%(D)s, microseconds), then
run each scenario for --duration seconds from a separate locust process (FastHttpUser, headless, as a
library) with --clients concurrent clients. All but hotswap run in --rounds rounds (3: health, recommend,
light, shadow, shadow-light in turn) and are pooled, so that the machine's drift during the run weighs on
what is compared alike; the per-round ratios are printed too.

  health     GET /api/v1/health: a DRF APIView without authentication that runs SELECT 1 (the reference)
  recommend  GET /api/v1/users/<one of the MovieLens users at random>/recommendations?k=10 (scope serve)
  light      like recommend at a load the server sustains: --light-clients clients, each pausing
             --light-wait seconds between requests (the reference for shadow-light)
  shadow     like recommend while v2 runs as a shadow challenger (issue 7) on --shadow-percent of the requests
             (default: the retraining policy's shadow_traffic_percent, 25): the champion
             answers, v2 scores the request afterwards in the web process when it is idle
  shadow-light  like light, with the same shadow; shadow scoring must add at most 20% to p99 latency, and
             the share of requests the shadow actually scored (shadow impressions / lists) is printed
  hotswap    like recommend; --swap-after seconds in, v2 is registered and promoted from another process
             (ranker_precompile + model_version_register + model_version_promote, as a training run would);
             every response's model_version is kept. The compiled-ranker cache is emptied first, so the ranker
             is compiled again as part of the swap

Server-side latency is read from gunicorn's access log: from the worker reading the request to the
response written, queueing for a worker excluded. Client-side latency (queueing included) is measured by
the load generator and also given as locust computes it. Targets (issue 4): recommend p50 <= 10 ms and
p99 <= 50 ms server-side, recommend throughput >= 40% of health's in the same run, no failed request
during the hot swap (and the served version changes). When a latency or throughput target fails, the
request path is profiled in one process (the Django test client over the same URLs: ms per request, SQL
time per statement, then cProfile) unless --no-profile.

The machine may be shared, and the load generator runs on it: a CPU table gives the web workers', their
PostgreSQL backends' and the load generator's CPU per request and the share other processes took.
Logs (gunicorn, access log, locust, training) stay in the temporary folder printed first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PYTHON,
    ROOT,
    CpuMeter,
    GunicornServer,
    PostgresBackends,
    ResultProcess,
    api_key_create,
    benchmark_run,
    child_pids,
    database_connect,
    database_recreate,
    django_env,
    http_json,
    interrupt_on_signals,
    manage,
    percentile,
    step,
    text_table,
)

DATASET = ROOT.parent / "shared" / "datasets" / "ml-latest-small"
HEALTH_PATH = "/api/v1/health"
RECOMMENDATIONS_PATH = "/api/v1/users/{user}/recommendations?k={k}"
ACCESS_LOG_FORMAT = '%(s)s %(D)s "%(r)s"'
ACCESS_LINE = re.compile(r'^(\d{3}) (\d+) "(\S+) (\S+)')
MODEL_VERSION = re.compile(rb'"model_version":\s*(null|\d+)')
V1_UNTIL_QUANTILE = 0.9
TARGET_P50_MS = 10
TARGET_P99_MS = 50
TARGET_THROUGHPUT_RATIO = 0.40
TARGET_SHADOW_P99_RATIO = 1.20
SWAP_WINDOW_S = 10  # after the promotion commits, the span counted as "during the swap"

_REGISTER_CODE = """
import json
from pathlib import Path
from registry.services import VersionInput, model_version_promote, model_version_register
from recommendations.serving.loading import ranker_precompile
from retraining.services.rollout import challenger_deploy
directory = Path({directory!r})
manifest = json.loads((directory / "manifest.json").read_text())
ranker_precompile(directory)  # as a training run registers a version (retraining.services.pipeline)
version = model_version_register(artifact_dir=directory, data=VersionInput(
    metrics=manifest["metrics"], baseline_metrics=manifest["baselines"], dataset_stats=manifest["dataset"],
    parameters=manifest["params"], manifest=manifest, trigger_reason="bench/serve.py"))
"""

REGISTER_SNIPPET = (
    _REGISTER_CODE
    + """
model_version_promote(version=version.version, actor="bench/serve.py", reason="serving benchmark")
print("RESULT " + json.dumps({{"version": version.version}}))
"""
)

SHADOW_START_SNIPPET = (
    _REGISTER_CODE
    + """
experiment = challenger_deploy(version=version.version, mode="shadow", traffic_percent={percent},
                               actor="bench/serve.py",
                               reason="serving benchmark: shadow overhead")
print("RESULT " + json.dumps({{"version": version.version, "experiment": experiment.pk,
                              "percent": experiment.traffic_percent}}))
"""
)

SHADOW_STOP_SNIPPET = """
import json
from django.utils import timezone
from registry.services import challenger_stop
challenger_stop(actor="bench/serve.py", reason="serving benchmark done", at=timezone.now())
print("RESULT " + json.dumps({"stopped": True}))
"""

PROFILE_SNIPPET = """
import cProfile, io, json, pstats, random, time
from collections import defaultdict
from django.db import connection
from django.test import Client
config = json.loads({config!r})
client = Client(HTTP_AUTHORIZATION="Api-Key " + config["api_key"])
rng = random.Random(1)
paths = ["/api/v1/users/%s/recommendations?k=10" % rng.choice(config["users"]) for _ in range(config["requests"])]
for path in paths[:30]:
    assert client.get(path).status_code == 200
sql = defaultdict(lambda: [0, 0.0])
def timed(execute, statement, params, many, context):
    started = time.perf_counter()
    try:
        return execute(statement, params, many, context)
    finally:
        entry = sql[statement[:110]]
        entry[0] += 1
        entry[1] += time.perf_counter() - started
versions = set()
started = time.perf_counter()
with connection.execute_wrapper(timed):
    for path in paths:
        response = client.get(path)
        versions.add(response.json()["model_version"])
elapsed = time.perf_counter() - started
profiler = cProfile.Profile()
profiler.enable()
for path in paths:
    client.get(path)
profiler.disable()
texts = {{}}
for order, restriction in (("cumulative", config["project"]), ("tottime", "")):
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats(order).print_stats(restriction, config["top"])
    texts[order] = buffer.getvalue()
print("RESULT " + json.dumps({{
    "requests": len(paths), "ms_per_request": elapsed * 1000 / len(paths), "versions": sorted(map(str, versions)),
    "sql": sorted(([s, n, t] for s, (n, t) in sql.items()), key=lambda row: -row[2]), "profile": texts}}))
"""


# --- The load generator (child process, locust as a library) -------------------------------------


def load_main(config: dict) -> None:
    """Run one scenario with locust; print every response as (finished, ms, status, model version) and
    locust's own figures as `RESULT {json}` on the last line."""
    import random
    import resource

    import gevent
    from locust import FastHttpUser, constant, task
    from locust.env import Environment
    from locust.exception import StopUser

    rng = random.Random(config["seed"])
    kind, users = config["kind"], config["users"]
    headers = {"Authorization": f"Api-Key {config['api_key']}"}
    samples: list[tuple] = []
    deadline_box = {"deadline": float("inf")}

    class ServeClient(FastHttpUser):
        host = config["base_url"]
        wait_time = constant(config.get("wait", 0))
        network_timeout = 60.0
        connection_timeout = 30.0

        @task
        def get(self):
            if time.monotonic() >= deadline_box["deadline"]:
                raise StopUser()
            if kind == "health":
                path = HEALTH_PATH
            else:
                path = RECOMMENDATIONS_PATH.format(user=rng.choice(users), k=config["k"])
            started = time.monotonic()
            with self.client.get(path, headers=headers, catch_response=True, name=kind) as response:
                finished = time.monotonic()
                status = response.status_code or 0
                version = None
                if status == 200 and kind != "health":
                    found = MODEL_VERSION.search(response.content or b"")
                    version = "?" if found is None else found.group(1).decode()
                samples.append((round(finished, 4), round((finished - started) * 1000, 2), status, version))
                if status == 200:
                    response.success()
                else:
                    response.failure(f"HTTP {status}: {(response.text or '')[:200]}")

    env = Environment(user_classes=[ServeClient], host=config["base_url"])
    runner = env.create_local_runner()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    deadline_box["deadline"] = time.monotonic() + config["duration"]
    runner.start(config["clients"], spawn_rate=max(100, config["clients"] * 10))
    gevent.sleep(1)
    while runner.user_count > 0:
        gevent.sleep(0.1)
    runner.quit()
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    total = env.stats.total
    print("RESULT " + json.dumps({
        "samples": samples,
        "locust_requests": total.num_requests,
        "locust_failures": total.num_failures,
        "locust_p50_ms": total.get_response_time_percentile(0.50),
        "locust_p99_ms": total.get_response_time_percentile(0.99),
        "locust_rps": total.total_rps,
        "loadgen_cpu_seconds": (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime),
    }), flush=True)  # fmt: skip


# --- Setup ------------------------------------------------------------------------------------------


def shell(code: str, *, env: dict[str, str], timeout: float = 600) -> dict:
    """`manage.py shell -c code`; returns the JSON the code prints on its `RESULT {json}` line."""
    stdout = manage("shell", "-c", code, env=env, timeout=timeout).stdout
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"manage.py shell printed no RESULT line:\n{stdout[-2000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def data_facts(url: str) -> dict:
    """The MovieLens users' ids and the cut-off time of v1's training data."""
    with contextlib.closing(database_connect(url)) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT external_id FROM recommendations_enduser ORDER BY id")
        users = [external_id for (external_id,) in cursor.fetchall()]
        cursor.execute(
            "SELECT percentile_disc(%s) WITHIN GROUP (ORDER BY timestamp), count(*) FROM recommendations_interaction",
            [V1_UNTIL_QUANTILE],
        )
        until, events = cursor.fetchone()
    return {"users": users, "v1_until": until, "events": events}


def models_train(*, env: dict[str, str], until: datetime, log_dir: Path) -> tuple[Path, Path]:
    """Two model directories: v1 on the events before `until`, v2 on all of them. Registering them is
    left to the benchmark (v2 is registered during the hot swap), so `train` only writes them."""
    directories = (log_dir / "model-v1", log_dir / "model-v2")
    only_write = ["--no-register"] if "--no-register" in manage("train", "--help", env=env).stdout else []
    for directory, cutoff in zip(directories, (until.isoformat(), None), strict=True):
        started = time.perf_counter()
        arguments = ["train", "--output", str(directory), "--json", *only_write]
        arguments += ["--until", cutoff] if cutoff else []
        summary = json.loads(manage(*arguments, env=env, timeout=3600).stdout.strip().splitlines()[-1])
        step(
            f"trained {directory.name} (until {cutoff or 'the end'}) in {time.perf_counter() - started:.0f} s: "
            f"{summary['dataset']['events']} events, NDCG@10 {summary['metrics'].get('ndcg@10', float('nan')):.4f}"
        )
    return directories


def shadow_coverage(url: str, *, experiment: int, kind_start: datetime) -> dict:
    """Lists served to known users during a shadow scenario, and how many of them the shadow scored."""
    with contextlib.closing(database_connect(url)) as connection, connection.cursor() as cursor:
        cursor.execute(
            "SELECT arm, count(*) FROM recommendations_impression WHERE experiment_id = %s AND served_at >= %s "
            "GROUP BY arm",
            [experiment, kind_start],
        )
        counts = dict(cursor.fetchall())
    lists, scored = counts.get("champion", 0), counts.get("shadow", 0)
    return {"lists": lists, "scored": scored, "share": scored / lists if lists else 0.0}


def model_register_and_promote(*, env: dict[str, str], directory: Path) -> int:
    return shell(REGISTER_SNIPPET.format(directory=str(directory)), env=env)["version"]


def warm_up(*, base_url: str, api_key: str, users: list[str], version: int, timeout: float = 60) -> None:
    """Concurrent bursts until every worker has its poller running and answers with `version`, so the
    scenarios measure the model rather than the first requests' popular fallback."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answers: list[object] = []

        def fetch(user: str, answers: list[object] = answers) -> None:
            status, payload = http_json(
                "GET", base_url + RECOMMENDATIONS_PATH.format(user=user, k=10), api_key=api_key, timeout=30
            )
            answers.append(payload.get("model_version") if status == 200 else f"HTTP {status}")

        threads = [threading.Thread(target=fetch, args=(users[n % len(users)],)) for n in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if all(answer == version for answer in answers):
            return
        time.sleep(0.5)
    raise RuntimeError(f"the workers did not all serve v{version} within {timeout:g} s: {answers}")


# --- Scenarios ----------------------------------------------------------------------------------


def access_log_read(path: Path, start: int, end: int) -> list[tuple[int, float, str]]:
    """(status, ms, path) of the access log lines between two byte offsets."""
    with open(path, "rb") as handle:
        handle.seek(start)
        text = handle.read(end - start).decode(errors="replace")
    rows = []
    for line in text.splitlines():
        found = ACCESS_LINE.match(line)
        if found:
            rows.append((int(found.group(1)), int(found.group(2)) / 1000, found.group(4)))
    return rows


def scenario_measure(
    *, kind: str, server: GunicornServer, access_log: Path, url: str, config: dict, log_dir: Path, during=None
) -> dict:
    """One scenario in a separate locust process; `during` (if any) is called while it runs and its
    value kept. The tally gains the server-side latencies of its requests and the CPU spent."""
    step(f"{kind}: {config['clients']} clients, {config['duration']:g} s")
    command = [PYTHON, __file__, "_load", json.dumps({**config, "kind": kind})]
    backends = PostgresBackends(url)
    meter = CpuMeter(web=lambda: [server.process.pid, *child_pids(server.process.pid)], db=backends)
    offset = access_log.stat().st_size
    meter.start()
    try:
        with ResultProcess(command, log_path=log_dir / f"locust-{kind}.log") as load:
            side = during() if during else None
            result = load.result(timeout=config["duration"] + 180)
    finally:
        cpu = meter.stop()
        backends.close()
    time.sleep(0.5)  # the last access lines
    marker = "/recommendations" if kind != "health" else HEALTH_PATH
    served = [row for row in access_log_read(access_log, offset, access_log.stat().st_size) if marker in row[2]]
    samples = result.pop("samples")
    ok = [s for s in samples if s[2] == 200]
    first_start = min((s[0] - s[1] / 1000 for s in samples), default=0.0)
    seconds = max((s[0] for s in samples), default=0.0) - first_start
    result.update(
        kind=kind,
        side=side,
        samples=samples,
        seconds=seconds,
        requests=len(samples),
        ok=len(ok),
        failed=len(samples) - len(ok),
        client_ms=sorted(s[1] for s in ok),
        server_ms=sorted(ms for status, ms, _ in served if status == 200),
        server_requests=len(served),
        server_errors=sum(1 for status, _, _ in served if status != 200),
        cpu=cpu,
    )
    result["req_per_s"] = result["ok"] / seconds if seconds else 0.0
    step(
        f"{kind}: {result['ok']} ok, {result['failed']} failed in {seconds:.1f} s = {result['req_per_s']:.0f} req/s; "
        f"server p50 {percentile(result['server_ms'], 0.5):.1f} ms p99 {percentile(result['server_ms'], 0.99):.1f} ms"
    )
    return result


def swap_analyse(result: dict, *, old: int, new: int) -> dict:
    """Failures during the swap and when the served version changed, from every response of the run."""
    promoted_at, committed_at = result["side"]["started"], result["side"]["finished"]
    samples = result["samples"]
    during = [s for s in samples if promoted_at <= s[0] <= committed_at + SWAP_WINDOW_S]
    versions: dict[str, int] = {}
    for s in samples:
        versions[str(s[3])] = versions.get(str(s[3]), 0) + 1
    new_times = [s[0] for s in samples if s[3] == str(new)]
    old_times = [s[0] for s in samples if s[3] == str(old)]
    first_new = min(new_times) if new_times else None
    last_old = max(old_times) if old_times else None
    return {
        "failed_total": result["failed"],
        "failed_during": sum(1 for s in during if s[2] != 200),
        "requests_during": len(during),
        "max_ms_during": max((s[1] for s in during), default=float("nan")),
        "p99_ms_during": percentile(sorted(s[1] for s in during if s[2] == 200), 0.99),
        "versions": versions,
        "promote_seconds": committed_at - promoted_at,
        "first_new_after_s": None if first_new is None else first_new - committed_at,
        "last_old_after_s": None if last_old is None else last_old - committed_at,
        "changed": bool(new_times) and (last_old is None or last_old < max(new_times)),
        "old_after_last_new": sum(1 for t in old_times if new_times and t > min(new_times) + 5.0),
    }


def profile_run(*, env: dict[str, str], api_key: str, users: list[str], requests: int) -> dict:
    project = "^" + re.escape(str(ROOT)) + r"/(?!\.venv/)"  # the project's own functions, not the libraries'
    config = json.dumps({"api_key": api_key, "users": users, "requests": requests, "top": 30, "project": project})
    return shell(PROFILE_SNIPPET.format(config=config), env={**env, "MODEL_POLL_THREAD": "false"}, timeout=1800)


# --- Report -------------------------------------------------------------------------------------


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def report(results: dict[str, dict]) -> list[str]:
    header = ["scenario", "ok", "failed", "seconds", "req/s", "srv p50", "srv p99", "cli p50", "cli p99",
              "locust p50", "locust p99"]  # fmt: skip
    rows = [header]
    for name, r in results.items():
        rows.append(
            [name, str(r["ok"]), str(r["failed"]), f"{r['seconds']:.1f}", f"{r['req_per_s']:.0f}",
             f"{percentile(r['server_ms'], 0.5):.1f}", f"{percentile(r['server_ms'], 0.99):.1f}",
             f"{percentile(r['client_ms'], 0.5):.1f}", f"{percentile(r['client_ms'], 0.99):.1f}",
             f"{r['locust_p50_ms']:.0f}", f"{r['locust_p99_ms']:.0f}"]
        )  # fmt: skip
    return text_table(rows, [9, 7, 6, 7, 6, 7, 7, 7, 7, 10, 10])


def cpu_report(results: dict[str, dict]) -> list[str]:
    rows = [["scenario", "web ms", "pg ms", "loadgen ms", "machine busy", "others"]]
    for name, r in results.items():
        cpu, requests = r["cpu"], max(1, r["ok"])
        ours = cpu["web"] + cpu["db"] + r["loadgen_cpu_seconds"]
        others = max(0.0, cpu["machine_busy"] - ours) / cpu["machine_total"]
        rows.append(
            [name, f"{cpu['web'] / requests * 1000:.2f}", f"{cpu['db'] / requests * 1000:.2f}",
             f"{r['loadgen_cpu_seconds'] / requests * 1000:.2f}", f"{cpu['machine_busy'] / cpu['machine_total']:.0%}",
             f"{others:.0%}"]
        )  # fmt: skip
    return text_table(rows, [9, 7, 7, 10, 12, 7])


def targets_report(results: dict[str, dict], swap: dict | None, versions: tuple[int, int]) -> tuple[list[str], bool]:
    recommend, health = results["recommend"], results["health"]
    p50, p99 = percentile(recommend["server_ms"], 0.5), percentile(recommend["server_ms"], 0.99)
    ratio = recommend["req_per_s"] / health["req_per_s"] if health["req_per_s"] else 0.0
    checks = [
        (f"recommend throughput {recommend['req_per_s']:.0f} req/s = {ratio:.1%} of health's "
         f"{health['req_per_s']:.0f} req/s (>= {TARGET_THROUGHPUT_RATIO:.0%})", ratio >= TARGET_THROUGHPUT_RATIO),
        (f"recommend server-side p50 {p50:.1f} ms (<= {TARGET_P50_MS} ms)", p50 <= TARGET_P50_MS),
        (f"recommend server-side p99 {p99:.1f} ms (<= {TARGET_P99_MS} ms)", p99 <= TARGET_P99_MS),
    ]  # fmt: skip
    for loaded, reference in (("shadow", "recommend"), ("shadow-light", "light")):
        if loaded in results:
            with_shadow = percentile(results[loaded]["server_ms"], 0.99)
            without = percentile(results[reference]["server_ms"], 0.99)
            ratio = with_shadow / without if without else float("inf")
            checks.append(
                (
                    f"{loaded}: server-side p99 {with_shadow:.1f} ms = {ratio:.2f}x {reference}'s {without:.1f} ms "
                    f"(<= {TARGET_SHADOW_P99_RATIO:.2f}x)",
                    ratio <= TARGET_SHADOW_P99_RATIO,
                )
            )
    if swap is not None:
        old, new = versions
        first, last = swap["first_new_after_s"], swap["last_old_after_s"]
        first_text = "never" if first is None else f"{first:+.2f} s"
        last_text = "never" if last is None else f"{last:+.2f} s"
        checks += [
            (f"hot swap: {swap['failed_during']} failed of {swap['requests_during']} requests from the promotion to "
             f"{SWAP_WINDOW_S} s after it ({swap['failed_total']} failed in the whole run)",
             swap["failed_during"] == 0 and swap["failed_total"] == 0),
            (f"hot swap: model_version v{old} -> v{new}; first v{new} answer {first_text} after the promotion "
             f"committed, last v{old} {last_text}; answers per version {swap['versions']}",
             swap["changed"] and first is not None and first <= 5.0),
        ]  # fmt: skip
    ok = all(passed for _, passed in checks)
    return [f"  {_verdict(passed)}  {text}" for text, passed in checks], ok


def profile_report(profile: dict) -> list[str]:
    lines = [f"Profile of the request path in one process (Django test client, {profile['requests']} requests, "
             f"versions served {profile['versions']}): {profile['ms_per_request']:.2f} ms per request without "
             f"the profiler", "SQL per request (count, ms), by total time:"]  # fmt: skip
    for statement, count, seconds in profile["sql"][:12]:
        per_request = seconds * 1000 / profile["requests"]
        lines.append(f"  {count / profile['requests']:5.2f} x {per_request:6.2f} ms  {' '.join(statement.split())}")
    lines += ["", "cProfile, the project's functions by cumulative time:", profile["profile"]["cumulative"],
              "cProfile, by own time:", profile["profile"]["tottime"]]  # fmt: skip
    return lines


# --- The orchestrator -------------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=30, help="seconds per scenario (default 30)")
    parser.add_argument("--clients", type=int, default=100, help="concurrent locust users (default 100)")
    server_arguments(parser, port=8766, database="bench_serve")
    parser.add_argument(
        "--swap-after", type=float, default=12, help="seconds into the hotswap scenario to promote v2 (default 12)"
    )
    parser.add_argument("--no-hotswap", action="store_true", help="skip the hot-swap scenario")
    parser.add_argument("--no-shadow", action="store_true", help="skip the light and shadow scenarios")
    parser.add_argument("--light-clients", type=int, default=10, help="clients of the light scenarios (default 10)")
    parser.add_argument(
        "--light-wait", type=float, default=0.1, help="seconds each light client pauses between requests (default 0.1)"
    )
    parser.add_argument(
        "--shadow-percent",
        type=int,
        default=None,
        help="share of requests the shadow challenger scores (default: the retraining policy's)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the pooled scenarios (default 3)")
    parser.add_argument("--no-profile", action="store_true", help="do not profile when a target fails")
    parser.add_argument("--profile-requests", type=int, default=300, help="requests profiled (default 300)")
    return parser.parse_args(argv)


def movielens_database(*, url: str, dataset: Path, log_dir: Path) -> tuple[dict[str, str], dict]:
    """A fresh database at `url` holding `dataset`: the environment of its processes and its data_facts."""
    env = django_env(database_url=url, var_dir=log_dir / "var")
    step(f"recreating {url}, migrating, importing {dataset}")
    database_recreate(url)
    manage("migrate", "--noinput", env=env)
    manage("import_movielens", str(dataset), "--no-progress", env=env, timeout=900)
    return env, data_facts(url)


def server_arguments(parser: argparse.ArgumentParser, *, port: int, database: str) -> None:
    """The options bench/serve.py and bench/serve_wrk.py share: the server, its database and the data."""
    parser.add_argument("--k", type=int, default=10, help="recommendations per request (default 10)")
    parser.add_argument("--port", type=int, default=port, help=f"gunicorn's port on 127.0.0.1 (default {port})")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument(
        "--database-url", default=f"postgres://postgres@127.0.0.1:5432/{database}", help="dropped and recreated"
    )
    parser.add_argument("--dataset", type=Path, default=DATASET, help="an ml-latest-small directory")


def run(args, log_dir: Path) -> dict:
    url = args.database_url
    env, facts = movielens_database(url=url, dataset=args.dataset, log_dir=log_dir)
    until = facts["v1_until"]
    step(f"{facts['events']} events, {len(facts['users'])} users; training v1 (until {until:%Y-%m-%d}) and v2")
    v1_dir, v2_dir = models_train(env=env, until=until, log_dir=log_dir)
    old = model_register_and_promote(env=env, directory=v1_dir)
    api_key = api_key_create(name="bench-serve", scopes="serve", env=env)
    access_log = log_dir / "access.log"
    access_log.touch()
    extra = ("--access-logfile", str(access_log), "--access-logformat", ACCESS_LOG_FORMAT)
    figures: dict = {"results": {}, "swap": None, "rounds": None, "versions": (old, None), "facts": facts}
    with GunicornServer(
        env=env, port=args.port, workers=args.workers, log_path=log_dir / "gunicorn.log", extra_args=extra
    ) as server:
        step(f"gunicorn --workers {args.workers} is healthy on {server.base_url}; warming up on v{old}")
        warm_up(base_url=server.base_url, api_key=api_key, users=facts["users"], version=old)
        config = {"base_url": server.base_url, "api_key": api_key, "users": facts["users"], "k": args.k,
                  "clients": args.clients, "duration": args.duration, "seed": 7}  # fmt: skip
        measure = dict(server=server, access_log=access_log, url=url, config=config, log_dir=log_dir)
        try:
            pooled, figures["rounds"] = rounds_measure(args=args, env=env, directory=v2_dir, measure=measure)
            figures["results"].update(pooled)
            if not args.no_hotswap:

                def swap() -> dict:
                    time.sleep(args.swap_after)
                    # v2's ranker was compiled for the shadow scenarios: empty the cache so that it is
                    # compiled again, as a newly trained model's would be
                    shutil.rmtree(log_dir / "var" / "models" / "compiled", ignore_errors=True)
                    started = time.monotonic()
                    version = model_register_and_promote(env=env, directory=v2_dir)
                    finished = time.monotonic()
                    step(f"hotswap: v{version} registered and promoted in {finished - started:.1f} s")
                    return {"started": started, "finished": finished, "version": version}

                result = scenario_measure(kind="hotswap", during=swap, **measure)
                figures["results"]["hotswap"] = result
                figures["versions"] = (old, result["side"]["version"])
                figures["swap"] = swap_analyse(result, old=old, new=result["side"]["version"])
        except BaseException:
            print(f"--- gunicorn log (tail) ---\n{server.log_tail()}", file=sys.stderr)
            raise
    figures["api_key"], figures["env"] = api_key, env
    return figures


def rounds_measure(*, args, env: dict[str, str], directory: Path, measure: dict) -> tuple[dict, dict]:
    """--rounds rounds of: health, recommend, light, then with v2 shadowing --shadow-percent of the requests,
    shadow and shadow-light. Each scenario is pooled over the rounds, so that the machine's drift during
    the run (and the database growing with impressions) weighs on what is compared alike; the per-round
    ratios and the shadow's coverage are kept."""
    light = {**measure, "config": {**measure["config"], "clients": args.light_clients, "wait": args.light_wait}}
    runs: dict[str, list] = {kind: [] for kind in ("health", "recommend", "light", "shadow", "shadow-light")}
    coverage: dict = {}
    for number in range(1, args.rounds + 1):
        step(f"round {number} of {args.rounds}")
        alone = (("health", measure), ("recommend", measure)) + ((("light", light),) if not args.no_shadow else ())
        for kind, setup in alone:
            runs[kind].append(scenario_measure(kind=kind, **setup))
        if args.no_shadow:
            continue
        started = shell(SHADOW_START_SNIPPET.format(directory=str(directory), percent=args.shadow_percent), env=env)
        step(
            f"v{started['version']} shadows {started['percent']}% of the requests (experiment "
            f"{started['experiment']}); waiting for the pollers"
        )
        coverage["percent"] = started["percent"]
        time.sleep(3)
        for kind, setup in (("shadow", measure), ("shadow-light", light)):
            since = datetime.now(UTC)
            runs[kind].append(scenario_measure(kind=kind, **setup))
            time.sleep(2)  # the impressions' last flush
            scored = shadow_coverage(measure["url"], experiment=started["experiment"], kind_start=since)
            for key in ("scored", "lists"):
                coverage.setdefault(kind, {"scored": 0, "lists": 0})[key] += scored[key]
            step(f"{kind}: the shadow scored {scored['scored']} of {scored['lists']} lists ({scored['share']:.0%})")
        shell(SHADOW_STOP_SNIPPET, env=env)
    for kind in ("shadow", "shadow-light"):
        if kind in coverage:
            scored, lists = coverage[kind]["scored"], coverage[kind]["lists"]
            coverage[kind]["share"] = scored / lists if lists else 0.0

    def p99(result):
        return percentile(result["server_ms"], 0.99)

    ratios = {"throughput": [r["req_per_s"] / h["req_per_s"] for h, r in zip(runs["health"], runs["recommend"])]}
    if not args.no_shadow:
        ratios["shadow"] = [p99(s) / p99(r) for r, s in zip(runs["recommend"], runs["shadow"])]
        ratios["shadow-light"] = [p99(s) / p99(r) for r, s in zip(runs["light"], runs["shadow-light"])]
    return {kind: _pooled(found) for kind, found in runs.items() if found}, {"coverage": coverage, "ratios": ratios}


def _pooled(results: list[dict]) -> dict:
    """Several runs of one scenario as one: requests, latencies and CPU together; locust's own percentiles
    (which cannot be pooled) are the rounds' median."""
    if len(results) == 1:
        return results[0]
    pooled = {"kind": results[0]["kind"], "side": None, "samples": [s for r in results for s in r["samples"]]}
    for key in ("seconds", "requests", "ok", "failed", "server_requests", "server_errors", "loadgen_cpu_seconds"):
        pooled[key] = sum(r[key] for r in results)
    for key in ("client_ms", "server_ms"):
        pooled[key] = sorted(ms for r in results for ms in r[key])
    for key in ("locust_p50_ms", "locust_p99_ms"):
        pooled[key] = sorted(r[key] for r in results)[len(results) // 2]
    pooled["cpu"] = {key: sum(r["cpu"][key] for r in results) for key in results[0]["cpu"]}
    pooled["req_per_s"] = pooled["ok"] / pooled["seconds"] if pooled["seconds"] else 0.0
    return pooled


def main(argv) -> int:
    args = parse_args(argv)
    interrupt_on_signals()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    print(f"bench/serve.py {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC; logs in {log_dir}", flush=True)
    figures = run(args, log_dir)
    results = figures["results"]
    target_lines, ok = targets_report(results, figures["swap"], figures["versions"])
    profile = None
    if not ok and not args.no_profile:
        step(f"a target failed: profiling {args.profile_requests} requests in one process")
        profile = profile_run(env=figures["env"], api_key=figures["api_key"], users=figures["facts"]["users"],
                              requests=args.profile_requests)  # fmt: skip

    finished = f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    print(f"\n=== Serving on PostgreSQL, gunicorn --workers {args.workers}, {args.clients} clients, "
          f"ml-latest-small, {finished} ===")  # fmt: skip
    print("\n".join(report(results)))
    print("(ms; srv = gunicorn access log %(D)s, queueing excluded; cli = load generator, queueing included;\n"
          " locust = locust's own rounded percentiles; req/s = 200 answers per second of the run)\n")  # fmt: skip
    print(f"CPU on {os.cpu_count()} cores, load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}:")
    print("\n".join(cpu_report(results)))
    print("(CPU per answered request; others = unrelated processes' share of the machine)\n")
    swap = figures["swap"]
    if swap is not None:
        print(f"Hot swap: promotion took {swap['promote_seconds']:.2f} s (a manage.py process: register + promote); "
              f"client latency from it to {SWAP_WINDOW_S} s after: p99 {swap['p99_ms_during']:.1f} ms, "
              f"max {swap['max_ms_during']:.1f} ms\n")  # fmt: skip
    rounds = figures["rounds"]
    if rounds["coverage"]:
        coverage = dict(rounds["coverage"])
        percent = coverage.pop("percent")
        print(
            f"Shadow coverage at a {percent}% shadow share (lists the shadow challenger scored / lists served to "
            f"known users): "
            + ", ".join(f"{kind} {c['scored']}/{c['lists']} = {c['share']:.0%}" for kind, c in coverage.items())
        )
    print(
        f"Every scenario but hotswap is pooled over {args.rounds} rounds (health, recommend, light, shadow, "
        f"shadow-light in turn); round by round:"
    )
    for name, values in rounds["ratios"].items():
        what = "recommend/health throughput" if name == "throughput" else f"{name} p99 over its reference's"
        print(f"  {what}: {', '.join(f'{v:.2f}' for v in values)}")
    print()
    print("Targets (issues 4 and 7):")
    print("\n".join(target_lines))
    if profile is not None:
        print("\n" + "\n".join(profile_report(profile)))
    return 0 if ok else 1


if __name__ == "__main__":
    benchmark_run(main, load_main)
