"""What a web process serves from, hot-reloaded: the champion and, during an experiment, the challenger
(ModelHolder), and the item snapshot (ItemSnapshotHolder), refreshed by one Poller.

Hot reload: the poller's daemon thread (started by the process's runtime, recommendations.runtime) polls both
deployment pointers (one indexed query) every `MODEL_POLL_SECONDS` (default 1 s, so a new champion is noticed
well within 5 s), loads a new version's artifact, verifies its sha256, warms it up with a prediction, then
swaps one reference. A request reads that reference once, so it is answered entirely by one version
(recommendations.routing says which). A failed load logs, keeps the old model serving, and is retried after
`MODEL_RETRY_SECONDS`. If the thread is not running (tests, management commands, Celery) the request path
polls synchronously at the same interval.

The item snapshot (recommendations.item_snapshot) is rebuilt by the same thread every `ITEM_SNAPSHOT_SECONDS`."""

import logging
import threading
import time
from dataclasses import dataclass, field, replace

from django.conf import settings

from recommendations.item_snapshot import ItemSnapshot, item_snapshot_build
from recommendations.process_cache import PeriodicThread
from recommendations.serving.loading import ServingModel, serving_model_load
from registry.artifacts import ArtifactError
from registry.models import ModelVersion
from registry.selectors import ServingPointers, serving_pointers

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Deployed:
    """What this process serves, read once by a request: the pointers and the models they name. The
    champion pointer is the version actually loaded (a champion that failed to load leaves the previous one
    here); a challenger that failed to load stays in the pointers without a model, so the requests routed to
    it are answered by the champion and counted as errors."""

    pointers: ServingPointers = field(default_factory=ServingPointers)
    models: dict = field(default_factory=dict)

    @property
    def champion(self) -> ServingModel | None:
        return self.models.get(self.pointers.champion)


@dataclass(frozen=True)
class ServingHealth:
    """Whether this process serves the champion the pointer names: the version it serves, the one it should,
    and a short reason fit for unauthenticated callers when they differ (the details are in the log)."""

    serving: int | None
    expected: int | None
    error: str = ""

    @property
    def degraded(self) -> bool:
        return self.serving != self.expected


class ModelHolder:
    """The champion and, during an experiment, the challenger, as this process serves them."""

    def __init__(self):
        self._current = Deployed()
        self._expected: int | None = None
        self._checked_at = float("-inf")
        self._failed: dict[int, tuple[float, str]] = {}
        self._lock = threading.Lock()
        self.loads = 0  # versions loaded (counters)
        self.load_failures = 0

    def current(self) -> Deployed:
        return self._current

    def health(self) -> ServingHealth:
        serving, expected = self._current.pointers.champion, self._expected
        if serving == expected:
            return ServingHealth(serving, expected)
        failed = self._failed.get(expected)
        return ServingHealth(serving, expected, failed[1] if failed else f"v{expected} is not loaded yet")

    def refresh_if_due(self) -> None:
        if time.monotonic() - self._checked_at >= settings.MODEL_POLL_SECONDS:
            self.refresh()

    def refresh(self) -> None:
        """Load what the pointers name if it changed. Never raises: a failed load keeps the old champion."""
        with self._lock:
            self._checked_at = time.monotonic()
            try:
                pointers = serving_pointers()
            except Exception:
                logger.exception("could not read the deployment pointers; serving as before")
                return
            self._expected = pointers.champion
            previous = self._current
            loaded = dict(previous.models)
            for number in {pointers.champion, pointers.challenger} - {None} - set(loaded):
                model = self._load(number)
                if model is not None:
                    loaded[number] = model
            champion = pointers.champion
            if champion is not None and champion not in loaded:
                champion = previous.pointers.champion  # the new one failed to load: keep serving the old one
            pointers = replace(pointers, champion=champion)
            held = {v: m for v, m in loaded.items() if v in (champion, pointers.challenger)}
            self._current = Deployed(pointers, held)

    def _load(self, number: int) -> ServingModel | None:
        failed = self._failed.get(number)
        if failed is not None and time.monotonic() - failed[0] < settings.MODEL_RETRY_SECONDS:
            return None
        try:
            model = serving_model_load(ModelVersion.objects.get(version=number))
        except Exception as exc:
            kind = "its artifact fails verification" if isinstance(exc, ArtifactError) else "its models do not load"
            self._failed[number] = (time.monotonic(), f"v{number} could not be loaded: {kind}")
            self.load_failures += 1
            logger.exception("could not load v%s; serving %s", number, self._current.pointers)
            return None
        self._failed.pop(number, None)
        self.loads += 1
        logger.info("loaded v%s", number)
        return model


class ItemSnapshotHolder:
    """The item snapshot (recommendations.item_snapshot) this process serves from."""

    def __init__(self):
        self._current: ItemSnapshot | None = None
        self._lock = threading.Lock()
        self.rebuild_failures = 0  # counters

    def current(self) -> ItemSnapshot:
        """The snapshot, built on the spot if there is none yet (that may raise, as any query may)."""
        if self._current is None:
            self.refresh(keep_going=False)
        return self._current

    def age_seconds(self) -> float | None:
        """How long ago the snapshot being served was built (None: none yet)."""
        snapshot = self._current
        return None if snapshot is None else time.monotonic() - snapshot.built_at

    def refresh_if_due(self) -> None:
        if self._current is None or time.monotonic() - self._current.built_at >= settings.ITEM_SNAPSHOT_SECONDS:
            self.refresh()

    def refresh(self, *, keep_going: bool = True) -> None:
        """Rebuild the snapshot. A failure keeps the old one (and is raised only with keep_going=False)."""
        with self._lock:
            try:
                self._current = item_snapshot_build(previous=self._current)
            except Exception:
                self.rebuild_failures += 1
                if not keep_going:
                    raise
                logger.exception("could not rebuild the item snapshot; still serving the previous one")


class Poller:
    """Refreshes what the process serves from: every MODEL_POLL_SECONDS in a daemon thread once started
    (the runtime starts it in web workers), or on the request path, whatever is due, while it is not."""

    def __init__(self, *holders):
        self._holders = holders
        self._thread = PeriodicThread(
            name="serving-poller", seconds=lambda: settings.MODEL_POLL_SECONDS, tick=self._refresh_due
        )

    def ensure_fresh(self) -> None:
        if not self._thread.alive:
            self._refresh_due()

    def start(self) -> None:
        """Refresh now (a worker's first request then finds the champion loaded), then keep polling."""
        self._refresh_due()
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()

    def _refresh_due(self) -> None:
        for holder in self._holders:
            holder.refresh_if_due()
