"""gunicorn's gthread worker, telling the application how long each request waited for a thread, and
spreading connections over the workers.

Under a sync worker a request that finds every worker busy waits in the kernel's accept queue, where no
code of ours can see it. A gthread worker accepts at once and queues the request for one of its threads;
this worker notes when (time.monotonic(), in the WSGI environ under QUEUED_AT) so that
recsite.shedding.LoadSheddingMiddleware can refuse one that waited too long, at the cost of a lookup.

Spreading connections: every worker polls the shared listening socket, and whichever wakes first accepts.
A client that keeps its connections alive (an application's HTTP pool, a proxy's upstream pool) then stays
wherever its connections landed, so two connections can share one worker while another worker idles, and
each of their requests waits for the other's (at 2 connections: p50 twice the service time). So the workers
publish how many connections each holds in a table of shared memory (ConnectionTable, made by the master
before it forks the first worker), and a worker accepts a new connection only when no other live worker holds
fewer; otherwise it leaves the connection for that worker for up to `WEB_ACCEPT_DEFER_MS` (default 20), after
which it accepts it anyway (the other worker may be stuck). The rule depends on the counts, not on which
process the scheduler wakes first: a deferral measured in a millisecond or two per held connection (the rule
before) lost the race on a loaded machine whenever the idle worker woke later than that. Nothing is refused,
and when no worker holds fewer, nothing waits. 0 turns it off; with one worker it is off.

It is imported by gunicorn's master before Django is set up, so it imports nothing of Django."""

import multiprocessing
import os
import threading
import time

from gunicorn.workers.gthread import ThreadWorker

QUEUED_AT = "recsite.queued_at"
ACCEPT_DEFER_DEFAULT_MS = "20"


class ConnectionTable:
    """Per worker, its pid and the connections it holds, in memory shared by the master and the workers it forks
    (a worker raised by TTIN reuses a dead worker's slot). A worker writes only its own slot."""

    def __init__(self, slots: int):
        self._pids = multiprocessing.RawArray("q", slots)
        self._held = multiprocessing.RawArray("q", slots)
        self._claiming = multiprocessing.Lock()

    def claim(self, pid: int) -> int | None:
        """A slot for the worker `pid` (one whose worker is gone, or a free one); None when all are taken."""
        with self._claiming:
            for slot, owner in enumerate(self._pids):
                if owner == 0 or not _alive(owner):
                    self._pids[slot], self._held[slot] = pid, 0
                    return slot
        return None

    def publish(self, slot: int, held: int) -> None:
        self._held[slot] = held

    def fewer_elsewhere(self, slot: int, held: int) -> bool:
        """Whether another live worker holds fewer connections than `held`."""
        return any(
            other != slot and pid != 0 and self._held[other] < held and _alive(pid)
            for other, pid in enumerate(self._pids)
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's (a recycled pid): not ours, but not free to take either
        return True
    return True


class QueueTimedThreadWorker(ThreadWorker):
    # Made in the master by the first worker object (gunicorn constructs each worker before forking it), so that
    # every worker forked afterwards shares it.
    connections: ConnectionTable | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if QueueTimedThreadWorker.connections is None and self.cfg.workers > 1:
            QueueTimedThreadWorker.connections = ConnectionTable(slots=4 * self.cfg.workers + 8)

    def init_process(self):
        self._request = threading.local()  # the queued time of the request the current thread handles
        self._defer_seconds = float(os.environ.get("WEB_ACCEPT_DEFER_MS", ACCEPT_DEFER_DEFAULT_MS)) / 1000
        self._slot: int | None = None  # claimed once the application is loaded (run), so a loading worker has none
        self._accept_after: float | None = None  # while set, the listeners are not polled until then
        super().init_process()

    def load_wsgi(self):
        super().load_wsgi()
        application, current = self.wsgi, self._request

        def stamped(environ, start_response):
            environ[QUEUED_AT] = current.queued_at
            return application(environ, start_response)

        self.wsgi = stamped

    def enqueue_req(self, conn):
        conn.queued_at = time.monotonic()
        super().enqueue_req(conn)

    def handle_request(self, req, conn):
        self._request.queued_at = conn.queued_at
        return super().handle_request(req, conn)

    # Spreading connections (module docstring).
    def run(self):
        if self.connections is not None and self._defer_seconds > 0:
            self._slot = self.connections.claim(os.getpid())
        super().run()

    def accept(self, listener):
        if self._accept_after is None and self._slot is not None:
            self._publish()
            if self.connections.fewer_elsewhere(self._slot, self.nr_conns):
                # The run loop re-enables accepting on every turn; it stays off until the deferral ends, and the
                # poll wakes up then. A connection still waiting afterwards is accepted.
                self._accept_after = time.monotonic() + self._defer_seconds
                self.set_accept_enabled(False)
                return
        self._accept_after = None
        super().accept(listener)
        self._publish()

    def set_accept_enabled(self, enabled):
        if enabled and self._accept_after is not None and time.monotonic() < self._accept_after:
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout):
        deferred_until = self._accept_after
        if deferred_until is not None:
            timeout = min(timeout, max(0.0, deferred_until - time.monotonic()))
        super().wait_for_and_dispatch_events(timeout)
        # Polled again after the deferral and nothing accepted (another worker took it): the next connection is
        # a new one, deferred afresh.
        if deferred_until is not None and self._accept_after == deferred_until and self._accepting:
            self._accept_after = None
        self._publish()  # connections a client closed on this turn

    def murder_keepalived(self, force=False):
        super().murder_keepalived(force)
        self._publish()

    def _publish(self):
        if self._slot is not None:
            self.connections.publish(self._slot, self.nr_conns)
