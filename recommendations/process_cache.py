"""A per-process cache of rows that every request would otherwise read although they rarely change
(verified API keys; user ids, item ids and categories for ingestion).

Each web process keeps its own copy and nothing else reads it: an entry is trusted for at most `ttl`
seconds after it was read from the database, which bounds how stale a process can be, and a miss always
goes to the database, the source of truth. Eviction drops the entries read longest ago once
`max_entries` is reached, so memory stays bounded whatever the catalogue size."""

import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from django.db import close_old_connections


class ProcessCache:
    def __init__(self, *, max_entries: int):
        self._entries: dict[Hashable, tuple[Any, float]] = {}
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def get(self, key: Hashable, *, ttl: float) -> Any | None:
        """The value stored under `key` less than `ttl` seconds ago, else None."""
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[1] >= ttl:
            return None
        return entry[0]

    def get_many(self, keys: Iterable[Hashable], *, ttl: float) -> dict[Hashable, Any]:
        cached = ((key, self.get(key, ttl=ttl)) for key in keys)
        return {key: value for key, value in cached if value is not None}

    def update(self, entries: Mapping[Hashable, Any]) -> None:
        now = time.monotonic()
        with self._lock:
            for key, value in entries.items():
                self._entries.pop(key, None)  # re-inserted last: the dict's order is the order of reads
                self._entries[key] = (value, now)
            while len(self._entries) > self._max_entries:
                del self._entries[next(iter(self._entries))]

    def discard(self, keys: Iterable[Hashable]) -> None:
        with self._lock:
            for key in keys:
                self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class PeriodicThread:
    """A daemon thread that calls `tick` every `seconds()` between start() and stop() (the process runtime's
    poller and impression flusher), closing the thread's stale database connections after each call."""

    def __init__(self, *, name: str, seconds: Callable[[], float], tick: Callable[[], None]):
        self._name, self._seconds, self._tick = name, seconds, tick
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> bool:
        """Stop the thread and wait for it (5 s at most); True if it was running."""
        thread, self._thread = self._thread, None
        self._stop.set()
        if thread is None:
            return False
        thread.join(timeout=5)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._seconds()):
            try:
                self._tick()
            finally:
                close_old_connections()
