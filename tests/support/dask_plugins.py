"""Dask worker plugins for the tests. Workers unpickle them by module: this one imports no Django."""

import distributed

from retraining.ml.events import EventLog


class EventsHeld(distributed.WorkerPlugin):
    """Records, on each worker, the events (keys) of every event log the worker holds as a task's input or result."""

    name = "events-held"

    def setup(self, worker):
        self.worker, self.logs = worker, []

    def transition(self, key, start, finish, **kwargs):
        if finish == "memory" and key in self.worker.data:
            value = self.worker.data[key]
            held = getattr(getattr(value, "queries", value), "log", value)  # a user shard's log, a chunk's queries'
            if isinstance(held, EventLog):
                self.logs.append((type(value).__name__, held.event_pk.tolist(), sorted(set(held.user.tolist()))))
