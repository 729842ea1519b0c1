"""gunicorn's gthread worker, telling the application how long each request waited for a thread.

Under a sync worker a request that finds every worker busy waits in the kernel's accept queue, where no
code of ours can see it. A gthread worker accepts at once and queues the request for one of its threads;
this worker notes when (time.monotonic(), in the WSGI environ under QUEUED_AT) so that
recsite.shedding.LoadSheddingMiddleware can refuse one that waited too long, at the cost of a lookup.
It is imported by gunicorn's master before Django is set up, so it imports nothing of Django."""

import threading
import time

from gunicorn.workers.gthread import ThreadWorker

QUEUED_AT = "recsite.queued_at"


class QueueTimedThreadWorker(ThreadWorker):
    def init_process(self):
        self._request = threading.local()  # the queued time of the request the current thread handles
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
