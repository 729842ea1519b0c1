"""Load shedding: a request that waited longer than SHED_QUEUE_SECONDS for a web thread is answered
503 with Retry-After before any work is done for it, so that under a load the workers cannot keep up
with, answered requests stay fast and the others learn at once to come back, instead of every request
queueing for seconds. Events posted for ingestion have a bound of their own, SHED_EVENTS_QUEUE_SECONDS
(longer: a refused batch throws away what its client built and sent, and its client wants it stored more than
answered fast). The wait is measured by recsite.gunicorn_worker (gunicorn.conf.py runs it); under
any other server the environ has no such time and nothing is shed. Health checks are never shed: an
overloaded process is alive, and a load balancer must not restart it for being busy."""

import time

from django.conf import settings
from django.http import JsonResponse

from recsite.gunicorn_worker import QUEUED_AT

HEALTH_PATH = "/api/v1/health"
EVENTS_PATH = "/api/v1/events"
RETRY_AFTER_SECONDS = 1


class LoadSheddingMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        queued_at = request.META.get(QUEUED_AT)
        bound = _bound(request)
        if queued_at is None or not bound:
            return self.get_response(request)
        waited = time.monotonic() - queued_at
        if waited <= bound:
            return self.get_response(request)
        _body_discard(request)
        message = f"The service is overloaded (this request waited {waited:.2f} s for a worker); retry later."
        response = JsonResponse(
            {"error": "overloaded", "message": message, "errors": []},
            status=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
        # Not logged by Django as an error, one line per refused request, just when the process has least time
        # for it: gunicorn's access log records each 503.
        response._has_been_logged = True
        return response


def _bound(request) -> float:
    """How long this request may have waited for a thread (0: never shed)."""
    if request.path == HEALTH_PATH:
        return 0
    if request.method == "POST" and request.path.rstrip("/") == EVENTS_PATH:
        return settings.SHED_EVENTS_QUEUE_SECONDS
    return settings.SHED_QUEUE_SECONDS


_DISCARD_CHUNK = 64 * 1024


def _body_discard(request) -> None:
    """Read the refused request's body (within the size the service accepts), so that the connection stays open
    for the client's retry. gunicorn drains at most 64 KiB of a body the application left unread and otherwise
    closes the connection with the rest unread, which makes the kernel reset it: a client still sending a batch
    of 1,000 events (~150 KB) then got no answer at all instead of the 503 (bench/ingest.py's "0" errors). A
    larger body is left to gunicorn: the request is refused either way, and the connection is closed."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    if length <= 0 or (limit is not None and length > limit):
        return
    try:
        while request.read(_DISCARD_CHUNK):
            pass
    except OSError:  # the client went away: nobody is left to answer
        return
