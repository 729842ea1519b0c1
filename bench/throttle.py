"""Micro-benchmark: what the throttle check adds to each API request (recommendations.throttling).

    REDIS_URL=redis://127.0.0.1:6379/0 .venv/bin/python bench/throttle.py [--calls 20000]

Times, in this process, ApiKeyRateThrottle.allow_request for one key (the per-request cost on every scoped
endpoint: counted in the process, added to the cache every 0.1 s), the failed-authentication check (paid
only when a key is not in the process's verified-key cache), and the load-shedding middleware's check,
each against a loop doing nothing. Without REDIS_URL the cache is Django's file cache (the embedded shape)."""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsite.settings")
os.environ.setdefault("SECRET_KEY", "bench")

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.test import RequestFactory  # noqa: E402

from recommendations.throttling import ApiKeyRateThrottle, AuthFailureThrottle  # noqa: E402
from recsite.gunicorn_worker import QUEUED_AT  # noqa: E402
from recsite.shedding import LoadSheddingMiddleware  # noqa: E402


def per_call_us(function, calls: int, repeats: int = 5) -> float:
    """The median over `repeats` of the mean time of one call, in microseconds."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(calls):
            function()
        timings.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(timings)


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    calls = parser.parse_args(argv).calls
    request = RequestFactory().post("/api/v1/events", REMOTE_ADDR="192.0.2.1")
    request.auth = SimpleNamespace(prefix=f"bench{os.getpid()}"[:8])
    request.META[QUEUED_AT] = time.monotonic() + 3600  # never shed
    view = SimpleNamespace(required_scope="serve")
    response = HttpResponse()
    shedding = LoadSheddingMiddleware(lambda request: response)
    rows = {
        "nothing (loop)": per_call_us(lambda: None, calls),
        "ApiKeyRateThrottle.allow_request": per_call_us(
            lambda: ApiKeyRateThrottle().allow_request(request, view), calls
        ),
        "AuthFailureThrottle check (key not cached)": per_call_us(
            lambda: AuthFailureThrottle().refuse_if_over(request), calls
        ),
        "LoadSheddingMiddleware (not shed)": per_call_us(lambda: shedding(request), calls),
    }
    print(f"cache: {settings.CACHES['default']['BACKEND']} {settings.CACHES['default']['LOCATION']}; {calls} calls")
    for name, microseconds in rows.items():
        print(f"{name:45s} {microseconds:8.1f} us/call")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
