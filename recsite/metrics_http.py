"""`GET /metrics` for Prometheus, who may read it, and the request timing behind
recsite_http_request_duration_seconds.

Access (README, "Metrics"): a request carrying `Authorization: Bearer <METRICS_TOKEN>`, or coming from an address
in METRICS_ALLOWED_NETWORKS, is served; any other gets a JSON 403. The address is the connection's peer
(REMOTE_ADDR), never X-Forwarded-For, which a client could forge. With neither setting, a local deployment
(DEBUG or DEPLOYMENT=local) allows loopback only and a production one refuses everyone.

A plain Django view, not a DRF one: it is not part of the API (no API key, no throttle) and stays out of the
OpenAPI schema."""

import hmac
import time
from ipaddress import ip_address

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from django.urls import Resolver404, resolve
from prometheus_client import CONTENT_TYPE_LATEST

from recommendations.runtime import process_runtime
from recsite import metrics
from recsite.errors import error_body
from recsite.metrics_db import database_metrics_exposition


def metrics_view(request):
    if request.method not in ("GET", "HEAD"):
        response = JsonResponse(
            error_body("method_not_allowed", f"Method {request.method} is not allowed."), status=405
        )
        response["Allow"] = "GET, HEAD"
        return response
    if not metrics_access_allowed(request):
        message = (
            "Metrics are readable with the bearer token METRICS_TOKEN or from METRICS_ALLOWED_NETWORKS; "
            "this request has neither."
        )
        return JsonResponse(error_body("forbidden", message), status=403)
    process_runtime().metrics.refresh()  # this process's runtime counters as of now
    body = metrics.process_metrics_exposition() + database_metrics_exposition()
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


def metrics_access_allowed(request) -> bool:
    token = settings.METRICS_TOKEN
    presented = request.META.get("HTTP_AUTHORIZATION", "")
    if token and hmac.compare_digest(presented.encode(), f"Bearer {token}".encode()):
        return True
    try:
        peer = ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(peer in network for network in settings.METRICS_ALLOWED_NETWORKS)


class RequestMetricsMiddleware:
    """Times every request, labelled by the URL pattern it matched (bounded: never the raw path), the method
    (bounded to the usual ones) and the status. Before the load shedder in MIDDLEWARE, so that shed requests count
    too."""

    METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        method = request.method if request.method in self.METHODS else "other"
        metrics.HTTP_REQUEST_DURATION.labels(_route_of(request), method, str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response


def _route_of(request) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None:  # answered before URL resolution (a static file, a shed request) or not found
        if request.path_info.startswith("/" + settings.STATIC_URL.lstrip("/")):
            return "static"
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return "unmatched"
    return match.route or match.view_name or "unmatched"
