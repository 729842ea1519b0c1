"""API-key authentication with scopes, on djangorestframework-api-key (keys stored hashed, revocable).

A missing, unknown, revoked or expired key is a 401; a valid key without the view's scope is a 403.
The `admin` scope includes the others.

A verified key is remembered by each web process for API_KEY_CACHE_SECONDS (keyed by a SHA-256 of the
presented key, never the key itself), so that a request does not query and hash it again: revoking a
key, or changing its scopes or expiry date, takes effect within that time. A key's own expiry date is
checked on every request, cached or not.

A key that is not remembered is checked only if the client's address has not failed authentication too
often lately (recommendations.throttling.AuthFailureThrottle): guessing keys gets a 429 before it costs a
query and a hash, and a remembered key costs no throttle check at all."""

import hashlib

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from rest_framework import authentication, exceptions, permissions
from rest_framework_api_key.permissions import KeyParser

from .models import ApiKey
from .runtime import process_runtime
from .throttling import AuthFailureThrottle

SCOPES = ("ingest", "serve", "admin")


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = KeyParser.keyword

    def authenticate(self, request):
        key = KeyParser().get_from_authorization(request)
        if not key:
            return None
        api_key = _verified(key, request)
        if api_key.has_expired:
            raise exceptions.AuthenticationFailed("This API key has expired.")
        return AnonymousUser(), api_key

    def authenticate_header(self, request):
        return self.keyword


def _verified(key: str, request) -> ApiKey:
    digest = hashlib.sha256(key.encode()).digest()
    verified_keys = process_runtime().verified_keys
    api_key = verified_keys.get(digest, ttl=settings.API_KEY_CACHE_SECONDS)
    if api_key is not None:
        return api_key
    failures = AuthFailureThrottle()
    failures.refuse_if_over(request)
    try:
        api_key = ApiKey.objects.get_from_key(key)
    except ApiKey.DoesNotExist:
        verified_keys.discard([digest])
        failures.record_failure(request)
        raise exceptions.AuthenticationFailed("Unknown or revoked API key.") from None
    verified_keys.update({digest: api_key})
    return api_key


class HasScope(permissions.BasePermission):
    """Allows a request whose API key carries the view's `required_scope` (or `admin`)."""

    message = "This API key lacks the scope this endpoint requires."

    def has_permission(self, request, view):
        required = getattr(view, "required_scope", None)
        if required is None:
            return True
        api_key = request.auth
        if not isinstance(api_key, ApiKey):
            return False
        return required in api_key.scopes or "admin" in api_key.scopes
