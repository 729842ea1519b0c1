"""API-key authentication with scopes, on djangorestframework-api-key (keys stored hashed, revocable).

A missing, unknown, revoked or expired key is a 401; a valid key without the view's scope is a 403.
The `admin` scope includes the others."""

from django.contrib.auth.models import AnonymousUser
from rest_framework import authentication, exceptions, permissions
from rest_framework_api_key.permissions import KeyParser

from .models import ApiKey

SCOPES = ("ingest", "serve", "admin")


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = KeyParser.keyword

    def authenticate(self, request):
        key = KeyParser().get_from_authorization(request)
        if not key:
            return None
        try:
            api_key = ApiKey.objects.get_from_key(key)
        except ApiKey.DoesNotExist:
            raise exceptions.AuthenticationFailed("Unknown or revoked API key.")
        if api_key.has_expired:
            raise exceptions.AuthenticationFailed("This API key has expired.")
        return AnonymousUser(), api_key

    def authenticate_header(self, request):
        return self.keyword


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
