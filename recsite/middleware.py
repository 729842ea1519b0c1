"""The request id every response carries (X-Request-ID), so that a caller can quote it and an operator find the
request's log lines; and, on /api/ paths, the refusal of NUL characters before anything reads the request."""

import re
import uuid
from urllib.parse import unquote

from django.http import JsonResponse

from recsite.errors import API_PREFIX, error_body, located

# A caller's own id (e.g. from a proxy) is kept when it is short and plain, so it cannot forge log lines.
_CALLER_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class ApiRequestMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        caller_id = request.META.get("HTTP_X_REQUEST_ID", "")
        request.request_id = caller_id if _CALLER_REQUEST_ID.fullmatch(caller_id) else uuid.uuid4().hex
        refusal = _refusal(request) if request.path_info.startswith(API_PREFIX) else None
        response = refusal or self.get_response(request)
        response["X-Request-ID"] = request.request_id
        return response


def _refusal(request) -> JsonResponse | None:
    """A 400 for a NUL character in the path, the query or a header: PostgreSQL cannot store one in text, and no
    id or parameter has one."""
    where = _nul_in(request)
    if where is None:
        return None
    message = f"The {where} contains a NUL character."
    return JsonResponse(error_body("invalid_request", message, [located(where, message)]), status=400)


def _nul_in(request) -> str | None:
    if "\x00" in request.path:
        return "path"
    if "\x00" in unquote(request.META.get("QUERY_STRING", "")):
        return "query"
    for key, value in request.META.items():
        if key.startswith("HTTP_") and isinstance(value, str) and "\x00" in value:
            return key[5:].replace("_", "-").title()
    return None
