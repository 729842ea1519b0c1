"""One error type for the domain, mapped to JSON by one handler. Every error body has one shape,
`{"error", "message", "errors": [{"index", "field", "message"}]}`; `errors` locates what was wrong with the input
and is empty when there is no part of it to point at (401, 403, 404, 405, 5xx). Anything unexpected is a JSON 500 — or a
503 while the database is unreachable — logged with the request id it returns, never an HTML page or a stack."""

import logging
import sys

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"


class ApplicationError(Exception):
    """A request the service understood and refuses: bad input, conflict, missing object."""

    status_code = status.HTTP_400_BAD_REQUEST
    code = "invalid_request"

    def __init__(self, message: str, *, extra: dict | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.extra = extra or {}
        if code:
            self.code = code


class NotFoundError(ApplicationError):
    status_code = status.HTTP_404_NOT_FOUND
    code = "not_found"


class ConflictError(ApplicationError):
    status_code = status.HTTP_409_CONFLICT
    code = "conflict"


class PayloadTooLargeError(ApplicationError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "payload_too_large"


def error_body(code: str, message: str, errors: list | None = None, **extra) -> dict:
    return {"error": code, "message": message, "errors": errors or [], **extra}


def located(field: str | None, message: str, index: int | None = None) -> dict:
    return {"index": index, "field": field, "message": message}


def flatten_errors(errors, index: int | None = None) -> list[dict]:
    """DRF's nested error structure (per-index for a list) as a flat list of {index, field, message}."""
    if isinstance(errors, list) and any(isinstance(entry, dict) for entry in errors):
        errors = dict(enumerate(errors))
    if isinstance(errors, dict) and errors and all(isinstance(key, int) for key in errors):
        return [flat for position, entry in errors.items() for flat in flatten_errors(entry, position)]
    if isinstance(errors, dict):
        return [flat for name, messages in errors.items() for flat in _located_messages(name, messages, index)]
    return [located("non_field_errors", str(message), index) for message in errors]


def _located_messages(field: str, messages, index: int | None) -> list[dict]:
    if isinstance(messages, dict):  # a list field's errors by position (`categories[0]`), a nested object's by name
        return [
            flat
            for key, entry in messages.items()
            for flat in _located_messages(f"{field}[{key}]" if isinstance(key, int) else f"{field}.{key}", entry, index)
        ]
    return [located(field, str(message), index) for message in (messages if isinstance(messages, list) else [messages])]


# The part of the request that a DRF error other than a validation error is about.
_FIELD_OF = {exceptions.ParseError: "body", exceptions.UnsupportedMediaType: "Content-Type"}
_DATABASE_DOWN = (OperationalError, InterfaceError)


def api_exception_handler(exc, context):
    if isinstance(exc, RequestDataTooBig):  # raised by Django as DRF reads a body over DATA_UPLOAD_MAX_MEMORY_SIZE
        message = f"The body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes."
        exc = PayloadTooLargeError(message, extra={"errors": [located("body", message)]})
    if isinstance(exc, ApplicationError):
        return Response(error_body(exc.code, exc.message, **exc.extra), status=exc.status_code)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        status_code, body = _server_error(context["request"], exc)
        return Response(body, status=status_code)
    if isinstance(exc, exceptions.ValidationError):
        response.data = error_body("invalid_request", "The request is invalid.", flatten_errors(response.data))
    elif isinstance(response.data, dict) and "detail" in response.data:
        detail = response.data.pop("detail")
        field = _FIELD_OF.get(type(exc))
        errors = [located(field, str(detail))] if field else []
        response.data = error_body(getattr(detail, "code", "error"), str(detail), errors, **response.data)
    return response


def _server_error(request, exc: BaseException | None) -> tuple[int, dict]:
    """The status and body for an exception nothing else handled; the log has the stack, the caller only the id."""
    request_id = getattr(request, "request_id", None)
    if isinstance(exc, _DATABASE_DOWN):
        logger.error("Database unavailable (request_id=%s): %s", request_id, exc)
        body = error_body("database_unavailable", "The database is unavailable; retry later.", request_id=request_id)
        return status.HTTP_503_SERVICE_UNAVAILABLE, body
    logger.error("Unhandled error (request_id=%s)", request_id, exc_info=exc)
    message = "An unexpected error occurred; quote the request_id when reporting it."
    return status.HTTP_500_INTERNAL_SERVER_ERROR, error_body("server_error", message, request_id=request_id)


# Django's error handlers (recsite/urls.py), for what fails outside DRF: JSON on /api/ paths, Django's pages elsewhere.


def _json_on_api_paths(default_view, code: str, message: str, status_code: int):
    def handler(request, exception):
        if not request.path_info.startswith(API_PREFIX):
            return default_view(request, exception)
        return JsonResponse(error_body(code, message), status=status_code)

    return handler


bad_request = _json_on_api_paths(defaults.bad_request, "invalid_request", "The request is malformed.", 400)
permission_denied = _json_on_api_paths(defaults.permission_denied, "permission_denied", "Not allowed.", 403)
page_not_found = _json_on_api_paths(defaults.page_not_found, "not_found", "No such endpoint.", 404)


def server_error(request):
    if not request.path_info.startswith(API_PREFIX):
        return defaults.server_error(request)
    status_code, body = _server_error(request, sys.exc_info()[1])  # Django calls this inside its `except`
    return JsonResponse(body, status=status_code)
