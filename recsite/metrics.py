"""The metrics the processes count, for Prometheus (README, "Metrics").

Counted where they happen with prometheus_client's counters, histograms and gauges: in-memory increments, no
I/O on the serving path. Under gunicorn, and in Celery workers, prometheus_client runs in multiprocess mode
(PROMETHEUS_MULTIPROC_DIR, set before this module is first imported: gunicorn.conf.py, recsite/celery.py): each
process writes its values to memory-mapped files in that folder and a scrape adds them up, so `/metrics`
answers for every worker whichever one takes the request. The metric objects are module-level because that is
how prometheus_client registers them; they hold no state of ours, and in multiprocess mode none at all.

What the database already knows (training runs, triggers, the champion's metrics, drift, the training queue) is
read at scrape time instead (recsite.metrics_db), so it is the same whichever process answers and costs nothing
between scrapes. A process runtime's own counters (recommendations.runtime.ServingRuntime.counters) are copied
into prometheus_client by RuntimeCountersExport on the poller's tick."""

import os
import threading
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # a process writes its files there from the first metric on
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SCORING_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
TRAINING_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)

HTTP_REQUEST_DURATION = Histogram(
    "recsite_http_request_duration_seconds",
    "Time to answer a request, by URL pattern (never the raw path).",
    ["route", "method", "status"],
    buckets=LATENCY_BUCKETS,
)
RECOMMENDATIONS_SERVED = Counter(
    "recsite_recommendations_served", "Recommendation lists served.", ["version", "arm", "strategy"]
)
RECOMMENDATION_FALLBACKS = Counter(
    "recsite_recommendation_fallbacks", "Lists not ranked by the routed model, by why.", ["reason"]
)
SCORING_DURATION = Histogram(
    "recsite_scoring_duration_seconds",
    "Time to rank one list with a model (live request or shadow).",
    ["kind"],
    buckets=SCORING_BUCKETS,
)
EVENTS = Counter("recsite_events", "Events received, by type and outcome.", ["event_type", "outcome"])
INGEST_BATCH_SIZE = Histogram(
    "recsite_ingest_batch_size", "Records per ingestion request.", ["kind"], buckets=BATCH_BUCKETS
)

# A web process's runtime counters (ServingRuntime.counters), copied by RuntimeCountersExport.
MODEL_LOADS = Counter("recsite_model_loads", "Model versions this process loaded.")
MODEL_LOAD_FAILURES = Counter("recsite_model_load_failures", "Model versions this process failed to load.")
ITEM_SNAPSHOT_REBUILD_FAILURES = Counter(
    "recsite_item_snapshot_rebuild_failures", "Item snapshot rebuilds that failed (the old one kept serving)."
)
IMPRESSIONS_WRITTEN = Counter("recsite_impressions_written", "Impressions written to the database.")
IMPRESSIONS_DROPPED = Counter(
    "recsite_impressions_dropped", "Impressions given up (the buffer overflowed while flushes failed)."
)
IMPRESSION_FLUSH_FAILURES = Counter("recsite_impression_flush_failures", "Impression flushes that failed.")
SHADOW_JOBS = Counter(
    "recsite_shadow_jobs",
    "Shadow scoring jobs by outcome: submitted, completed (scored), dropped_* (shed), preempted, failed.",
    ["outcome"],
)
IMPRESSIONS_BUFFERED = Gauge(
    "recsite_impressions_buffered", "Impressions waiting for the next flush.", multiprocess_mode="livesum"
)
SERVING_VERSION = Gauge(
    "recsite_serving_model_version",
    "The version each live web process serves, per alias (0: none; one series per pid).",
    ["alias"],
    multiprocess_mode="liveall",
)
ITEM_SNAPSHOT_AGE = Gauge(
    "recsite_item_snapshot_age_seconds",
    "Age of the oldest item snapshot a live process serves from.",
    multiprocess_mode="livemax",
)
PROCESS_CACHE_ENTRIES = Gauge(
    "recsite_process_cache_entries",
    "Entries in the process caches, summed over live processes.",
    ["cache"],
    multiprocess_mode="livesum",
)
THROTTLE_CACHE_OPEN = Gauge(
    "recsite_throttle_cache_open",
    "1 while a live process's throttle ignores an unanswering cache.",
    multiprocess_mode="livemax",
)

# Celery workers.
CELERY_TASKS = Counter("recsite_celery_tasks", "Celery tasks finished, by name and outcome.", ["task", "outcome"])
CELERY_TASK_DURATION = Histogram(
    "recsite_celery_task_duration_seconds", "Celery task run time.", ["task"], buckets=TRAINING_BUCKETS
)
TRAINING_DURATION = Histogram(
    "recsite_training_duration_seconds",
    "Training time of a run (all stages up to registration).",
    buckets=TRAINING_BUCKETS,
)
TRAINING_PEAK_MEMORY = Gauge(
    "recsite_training_peak_memory_bytes",
    "Peak resident memory of the latest training run's process.",
    multiprocess_mode="mostrecent",
)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def process_metrics_exposition() -> bytes:
    """The process-counted metrics in Prometheus's text format: every process's, added up, in multiprocess
    mode; this process's otherwise (runserver, tests, management commands)."""
    if multiprocess_dir() is None:
        from prometheus_client import REGISTRY

        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def multiprocess_dir_reset(path: str, *, keep_pid: int | None = None) -> None:
    """Empty the folder of the values of a previous run's processes (a run's counters must start at zero),
    keeping the files of `keep_pid` if it already has some."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db") and (keep_pid is None or not name.endswith(f"_{keep_pid}.db")):
            os.remove(os.path.join(path, name))


def process_dead_mark(pid: int) -> None:
    """A process that exited leaves the live gauges (its counters stay counted)."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)


def events_count(*, counts: Mapping[str, int], outcome: str) -> None:
    """Count events by type: `counts` maps an event type to how many had this outcome."""
    for event_type, count in counts.items():
        EVENTS.labels(event_type, outcome).inc(count)


def recommendation_count(*, version: int | None, arm: str, strategy: str, fallback: str | None) -> None:
    RECOMMENDATIONS_SERVED.labels("none" if version is None else str(version), arm, strategy).inc()
    if fallback is not None:
        RECOMMENDATION_FALLBACKS.labels(fallback).inc()


def celery_task_count(*, task: str, outcome: str, seconds: float | None) -> None:
    CELERY_TASKS.labels(task, outcome).inc()
    if seconds is not None:
        CELERY_TASK_DURATION.labels(task).observe(seconds)


def training_measured(*, seconds: float, peak_memory_mb: float) -> None:
    TRAINING_DURATION.observe(seconds)
    TRAINING_PEAK_MEMORY.set(peak_memory_mb * 2**20)


_RUNTIME_COUNTERS = {
    "model_loads": MODEL_LOADS,
    "model_load_failures": MODEL_LOAD_FAILURES,
    "item_snapshot_rebuild_failures": ITEM_SNAPSHOT_REBUILD_FAILURES,
    "impressions_written": IMPRESSIONS_WRITTEN,
    "impressions_dropped": IMPRESSIONS_DROPPED,
    "impression_flush_failures": IMPRESSION_FLUSH_FAILURES,
}
_CACHES = ("verified_keys_cached", "known_users_cached", "known_items_cached")
# Every key of ServingRuntime.counters() this module exports (shadow_* by prefix), checked by the tests.
RUNTIME_KEYS_EXPORTED = frozenset(
    {
        *_RUNTIME_COUNTERS,
        *_CACHES,
        "impressions_buffered",
        "champion_version",
        "challenger_version",
        "item_snapshot_age_seconds",
        "throttle_cache_open",
    }
)


class RuntimeCountersExport:
    """Copies a runtime's counters into the metrics above: counters by what they grew since the last copy (so a
    counter keeps counting across processes, dead ones included), gauges as they are. One per runtime; the
    runtime's poller calls `refresh_if_due` on its tick, and a scrape calls `refresh` first."""

    def __init__(self, counters: Callable[[], dict]):
        self._counters = counters
        self._copied: dict[str, int] = {}
        self._lock = threading.Lock()  # the poller and a scrape may copy at once: each growth is added once

    def refresh_if_due(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        with self._lock:
            values = self._counters()
            for name, counter in _RUNTIME_COUNTERS.items():
                self._grow(counter, name, values[name])
            for name, value in values.items():
                if name.startswith("shadow_"):
                    self._grow(SHADOW_JOBS.labels(name.removeprefix("shadow_")), name, value)
            self._gauges_set(values)

    def _grow(self, counter, name: str, value: int) -> None:
        grown = value - self._copied.get(name, 0)
        if grown > 0:
            counter.inc(grown)
        self._copied[name] = value

    @staticmethod
    def _gauges_set(values: dict) -> None:
        IMPRESSIONS_BUFFERED.set(values["impressions_buffered"])
        for alias in ("champion", "challenger"):
            version = values[f"{alias}_version"]
            SERVING_VERSION.labels(alias).set(version or 0)
        if values["item_snapshot_age_seconds"] is not None:
            ITEM_SNAPSHOT_AGE.set(values["item_snapshot_age_seconds"])
        for name in _CACHES:
            PROCESS_CACHE_ENTRIES.labels(name.removesuffix("_cached")).set(values[name])
        THROTTLE_CACHE_OPEN.set(int(values["throttle_cache_open"]))
