"""Everything a process keeps between requests, in one object per process: the models it serves and the
item snapshot (with the poller that refreshes them), the impression buffer, the shadow scorer, the process
caches (verified API keys, known users and items), the clock, and the throttle's local counts and cache
breaker. Modules of recommendations/ hold no mutable state of their own; they ask `process_runtime()`.

Built in exactly one place, `process_runtime()`, the first time a process asks, and again in a forked child
(the runtime remembers the pid that built it): a gunicorn worker, a Celery prefork child or a management
command each get their own, and a child never uses its parent's locks, caches or (absent) threads. The
reference lives on the app's AppConfig, which Django builds once per process: no module holds it.

Daemon threads (poller, fold sweeper, impression flusher, shadow scorer) run only once `start()` is called: gunicorn's
post_worker_init hook does it in each web worker (gunicorn.conf.py). Elsewhere nothing is started and the same
work happens on the caller's path: models and the snapshot are refreshed when due, impressions are written at
once and shadow jobs run inline."""

import os
from typing import TYPE_CHECKING

from django.apps import apps
from django.conf import settings

if TYPE_CHECKING:
    pass

VERIFIED_KEYS_MAX = 1000
KNOWN_ROWS_MAX = 100_000


class ServingRuntime:
    def __init__(self):
        # Imported here, not at the top: these modules import process_runtime from this one.
        from recommendations.clock import ProcessClock
        from recommendations.process_cache import PeriodicThread, ProcessCache
        from recommendations.services.impressions import ImpressionBuffer
        from recommendations.services.online_features import online_features_sweep
        from recommendations.serving.holders import ItemSnapshotHolder, ModelHolder, Poller
        from recommendations.shadow import ShadowScorer
        from recommendations.throttling import CacheBreaker, LocalCounts
        from recsite.metrics import RuntimeCountersExport

        self.pid = os.getpid()
        self.models: ModelHolder = ModelHolder()
        self.items: ItemSnapshotHolder = ItemSnapshotHolder()
        self.metrics = RuntimeCountersExport(self.counters)
        # The poller's tick also copies the counters into the metrics /metrics exports (recsite.metrics).
        self.poller: Poller = Poller(self.models, self.items, self.metrics)
        # Folds the event batches a crash (or a busy folder) left waiting: services.online_features.
        self.fold_sweeper = PeriodicThread(
            name="fold-sweeper", seconds=lambda: settings.FOLD_SWEEP_SECONDS, tick=online_features_sweep
        )
        self.impressions = ImpressionBuffer()
        self.shadow = ShadowScorer()
        self.clock = ProcessClock()
        self.verified_keys = ProcessCache(max_entries=VERIFIED_KEYS_MAX)
        self.known_users = ProcessCache(max_entries=KNOWN_ROWS_MAX)
        self.known_items = ProcessCache(max_entries=KNOWN_ROWS_MAX)
        self.throttle_counts = LocalCounts()
        self.throttle_breaker = CacheBreaker()

    def start(self) -> None:
        """Start the daemon threads the settings ask for (MODEL_POLL_THREAD, FOLD_SWEEP_SECONDS > 0,
        IMPRESSION_FLUSH_SECONDS > 0, SHADOW_QUEUE_SIZE > 0)."""
        if settings.MODEL_POLL_THREAD:
            self.poller.start()
        if settings.FOLD_SWEEP_SECONDS > 0:
            self.fold_sweeper.start()
        self.impressions.start()
        self.shadow.start()

    def stop(self) -> None:
        """Stop the threads (writing the buffered impressions); the process's work goes back to its callers."""
        self.poller.stop()
        self.fold_sweeper.stop()
        self.shadow.stop()
        self.impressions.stop()

    def counters(self) -> dict:
        """This process's counters as a plain dict (what an operator view exports)."""
        deployed = self.models.current()
        return {
            "champion_version": deployed.pointers.champion,
            "challenger_version": deployed.pointers.challenger,
            "model_loads": self.models.loads,
            "model_load_failures": self.models.load_failures,
            "item_snapshot_rebuild_failures": self.items.rebuild_failures,
            "item_snapshot_age_seconds": self.items.age_seconds(),
            "impressions_written": self.impressions.written,
            "impressions_dropped": self.impressions.dropped,
            "impressions_buffered": self.impressions.buffered(),
            "impression_flush_failures": self.impressions.flush_failures,
            **{f"shadow_{name}": count for name, count in sorted(self.shadow.stats.items())},
            "verified_keys_cached": len(self.verified_keys),
            "known_users_cached": len(self.known_users),
            "known_items_cached": len(self.known_items),
            "throttle_cache_open": self.throttle_breaker.is_open(),
        }


def process_runtime() -> ServingRuntime:
    """This process's runtime, built here if the process has none yet (or only its parent's)."""
    config = apps.get_app_config("recommendations")
    runtime = config.runtime
    if runtime is None or runtime.pid != os.getpid():
        # No lock (a child forked while another thread held one would wait forever): gunicorn's hook builds it
        # before the first request; elsewhere two first callers at once may each build one, and the second wins.
        runtime = config.runtime = ServingRuntime()
    return runtime


def process_runtime_replace(runtime: ServingRuntime | None) -> ServingRuntime | None:
    """Install `runtime` as this process's (None: the next caller builds one); returns the one it replaces.
    For tests, which each get a fresh runtime."""
    config = apps.get_app_config("recommendations")
    previous, config.runtime = config.runtime, runtime
    return previous
