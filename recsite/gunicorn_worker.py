"""gunicorn's gthread worker, telling the application how long each request waited for a thread, and
spreading connections over the workers.

Under a sync worker a request that finds every worker busy waits in the kernel's accept queue, where no
code of ours can see it. A gthread worker accepts at once and queues the request for one of its threads;
this worker notes when (time.monotonic(), in the WSGI environ under QUEUED_AT) so that
recsite.shedding.LoadSheddingMiddleware can refuse one that waited too long, at the cost of a lookup.

Spreading connections: every worker polls the shared listening socket, and whichever wakes first accepts.
A client that keeps its connections alive (an application's HTTP pool, a proxy's upstream pool) then stays
wherever its connections landed, so two connections can share one worker while another worker idles, and
each of their requests waits for the other's (at 2 connections: p50 twice the service time). So a worker that
already holds connections lets a new one wait `WEB_ACCEPT_DEFER_MS` per connection it holds (at most 25 ms)
before it accepts: a worker holding fewer connections, an idle one first, takes it meanwhile; when every
worker holds some, the one holding fewest accepts first. Nothing is refused and nothing waits when one
worker holds none. 0 turns it off; with one worker it is off.

It is imported by gunicorn's master before Django is set up, so it imports nothing of Django."""

import os
import threading
import time

from gunicorn.workers.gthread import ThreadWorker

QUEUED_AT = "recsite.queued_at"
ACCEPT_DEFER_CAP_SECONDS = 0.025


def accept_defer_seconds(connections: int, *, per_connection: float) -> float:
    """How long a worker holding `connections` lets a new connection wait for a worker holding fewer."""
    return min(ACCEPT_DEFER_CAP_SECONDS, per_connection * connections)


class QueueTimedThreadWorker(ThreadWorker):
    def init_process(self):
        self._request = threading.local()  # the queued time of the request the current thread handles
        self._per_connection = float(os.environ.get("WEB_ACCEPT_DEFER_MS", "1")) / 1000 if self.cfg.workers > 1 else 0
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

    # Spreading connections (module docstring). The run loop re-enables accepting on every turn; it stays off
    # until the deferral ends, and the poll wakes up then. A connection still waiting afterwards is accepted.
    def accept(self, listener):
        if self._accept_after is None and self._per_connection and self.nr_conns:
            self._accept_after = time.monotonic() + accept_defer_seconds(
                self.nr_conns, per_connection=self._per_connection
            )
            self.set_accept_enabled(False)
            return
        self._accept_after = None
        super().accept(listener)

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
