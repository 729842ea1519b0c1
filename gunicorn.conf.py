"""gunicorn's settings for the web service, and the hooks that start and stop each worker's runtime
(recommendations.runtime); gunicorn reads ./gunicorn.conf.py by itself, so Procfile, docker-compose.yml, the
Dockerfile and the benches all run with it (flags on a command line still win).

A gthread worker, not a sync one: a sync worker leaves the requests it cannot take yet in the kernel's accept
queue, invisible to the application, where under saturation they waited for seconds (p99 1.76 s at 64
connections). A gthread worker accepts every connection at once and queues its requests for its threads;
recsite.gunicorn_worker notes when, and recsite.shedding answers 503 to a request that waited longer than
SHED_QUEUE_SECONDS.

One thread per worker by default: a process still answers one request at a time, as the serving code's
measurements assume (the shadow scorer waits for moments with no live request, and counts the time spent on
them). More threads (WEB_THREADS) overlap database waits: ingestion at 64 connections answered 20-60% more
events per second with 4, but in a serving run the shadow scorer then found no idle moment (README,
"Throttling and load shedding"). Each thread holds its own database connection.

Metrics: the workers count in prometheus_client's multiprocess mode, in PROMETHEUS_MULTIPROC_DIR (default
var/metrics/web): set here, before any worker imports prometheus_client; emptied when the master starts (a run's
counters start at zero); a worker that exits leaves the live gauges (child_exit). README, "Metrics"."""

import os
import shutil
from pathlib import Path

workers = int(os.environ.get("WEB_CONCURRENCY", 2))
worker_class = "recsite.gunicorn_worker.QueueTimedThreadWorker"
threads = int(os.environ.get("WEB_THREADS", 1))

_VAR_DIR = Path(os.environ.get("RECSITE_VAR_DIR") or Path(__file__).resolve().parent / "var")
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_VAR_DIR / "metrics" / "web"))


def on_starting(server):
    """The master empties the metrics folder of the previous run's files before any worker starts."""
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)


def post_worker_init(worker):
    """Each worker starts its own runtime's threads (poller, impression flusher, shadow scorer) once it has
    loaded the application, after the fork: threads do not survive a fork, and a worker never shares them."""
    from recommendations.runtime import process_runtime

    process_runtime().start()


def worker_exit(server, worker):
    """Stop them on the way out, writing the buffered impressions."""
    from recommendations.runtime import process_runtime

    process_runtime().stop()


def child_exit(server, worker):
    """In the master, once a worker has exited (however it ended): its live gauges are dropped."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
