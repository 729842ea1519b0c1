"""Peak memory of training in-process against each worker's on a local Dask cluster, on one synthetic timeline.

Steps: recreate a PostgreSQL database of its own, migrate, write a synthetic timeline with `generate_synthetic`
and import it with `import_movielens`; then `manage.py train --json --no-register` twice in child processes:
in-process, and with DASK_SCHEDULER_ADDRESS pointing at a `distributed.LocalCluster` of `--workers` worker
processes (one thread each) that this script starts. Prints the in-process peak (the train process's maximum
RSS), the trainer's peak on the Dask path, each worker's peak (its maximum RSS, from the kernel, since the worker
started) and idle RSS before training, the ratio worker peak / in-process peak, the metrics of both paths, the
wall and CPU times and the machine's load average (the machine may be shared: read the figures beside it).

    .venv/bin/python bench/dask_memory.py --events 300000 --users 3000 --items 2000
    .venv/bin/python bench/dask_memory.py --events 1000000 --users 10000 --items 6000 --skip-import  # reuse the db
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import PYTHON, ROOT, database_recreate, database_url, django_env, free_port, manage, step

METRICS = ("ndcg@10", "recall@10", "map@10", "rmse", "mae")


def timeline_import(*, env: dict, url: str, users: int, items: int, events: int, seed: int) -> float:
    started = time.perf_counter()
    database_recreate(url)
    manage("migrate", "--verbosity", "0", env=env)
    data_dir = ROOT / "var" / "bench" / f"dask-memory-{users}-{items}-{events}-{seed}"
    step(f"generate_synthetic: {users} users, {items} items, {events} events")
    manage(
        "generate_synthetic",
        *("--users", str(users), "--items", str(items), "--events", str(events)),
        *("--output", str(data_dir), "--seed", str(seed)),
        env=env,
        timeout=3600,
    )
    step(f"import_movielens {data_dir}")
    manage("import_movielens", str(data_dir), "--no-progress", env=env, timeout=3600)
    return time.perf_counter() - started


def train(env: dict, output: Path) -> dict:
    """`manage.py train --json` in a child process: its summary, wall time, CPU seconds and maximum RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [PYTHON, str(ROOT / "manage.py"), "train", "--json", "--no-register", "--output", str(output)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"manage.py train failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    result["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return result


def _worker_usage() -> dict:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(f"/proc/{os.getpid()}/status") as status:
        rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return {"max_rss_mb": usage.ru_maxrss / 1024, "rss_mb": rss_kb / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}


def cluster_train(env: dict, output: Path, workers: int) -> tuple[dict, dict, dict]:
    """The training on a fresh LocalCluster: its summary, and each worker's usage before and after."""
    import distributed

    sys.path.insert(0, str(ROOT))  # the workers (spawned from this process) unpickle the app's functions
    with (
        distributed.LocalCluster(
            n_workers=workers,
            processes=True,
            threads_per_worker=1,
            host="127.0.0.1",
            dashboard_address=f"127.0.0.1:{free_port()}",
            worker_dashboard_address=None,
            memory_limit=0,  # measure, never pause or restart a worker for its memory
        ) as cluster,
        distributed.Client(cluster.scheduler_address) as client,
    ):
        idle = client.run(_worker_usage)
        result = train(dict(env, DASK_SCHEDULER_ADDRESS=cluster.scheduler_address), output)
        done = client.run(_worker_usage)
    return result, idle, done


def report(local: dict, on_cluster: dict, idle: dict, done: dict) -> None:
    d = local["dataset"]
    print(f"\n{d['events']} events, {d['users']} users, {d['items']} items; load average now {os.getloadavg()}")
    print("| run | peak RSS (MB) | wall (s) | CPU (s) | " + " | ".join(METRICS) + " | most-popular NDCG@10 |")
    print("|---|---|---|---|" + "---|" * (len(METRICS) + 1))
    for name, r in (("in-process", local), ("Dask trainer (driver)", on_cluster)):
        row = " | ".join(f"{r['metrics'][m]:.4f}" for m in METRICS)
        pop = r["baselines"]["popularity"]["ndcg@10"]
        print(f"| {name} | {r['peak_memory_mb']:.0f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {row} | {pop:.4f} |")
    in_process = local["peak_memory_mb"]
    print("\n| worker | idle RSS before (MB) | peak RSS (MB) | peak / in-process peak | CPU in training (s) |")
    print("|---|---|---|---|---|")
    for address in sorted(done):
        peak = done[address]["max_rss_mb"]
        cpu = done[address]["cpu_s"] - idle[address]["cpu_s"]
        print(f"| {address} | {idle[address]['rss_mb']:.0f} | {peak:.0f} | {peak / in_process:.2f} | {cpu:.1f} |")
    for name, r in (("in-process", local), ("on Dask", on_cluster)):
        print(f"stage times {name}:", json.dumps(r["timings_s"]))
        print(f"peak RSS after each stage {name}:", json.dumps(r["stage_peak_memory_mb"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--users", type=int, default=3_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--database", default="bench_dask_memory")
    parser.add_argument("--base-url", default=os.environ.get("BENCH_PG", "postgres://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--skip-import", action="store_true", help="train on the database as it is")
    args = parser.parse_args()
    url = database_url(args.base_url, args.database)
    var_dir = ROOT / "var" / "bench" / "dask-memory"
    env = django_env(database_url=url, var_dir=var_dir)
    print(f"load average at start: {os.getloadavg()}; {os.cpu_count()} cores", flush=True)
    if not args.skip_import:
        seconds = timeline_import(
            env=env, url=url, users=args.users, items=args.items, events=args.events, seed=args.seed
        )
        print(f"imported in {seconds:.0f} s", flush=True)
    step("training in-process")
    local = train(env, var_dir / "in-process")
    print(f"in-process: {local['wall_s']:.0f} s, peak {local['peak_memory_mb']:.0f} MB; load {os.getloadavg()}")
    step(f"training on a local Dask cluster of {args.workers} workers")
    on_cluster, idle, done = cluster_train(env, var_dir / "dask", args.workers)
    report(local, on_cluster, idle, done)


if __name__ == "__main__":
    sys.exit(main())
