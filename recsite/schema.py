"""The OpenAPI schema's conventions, kept in one place so that each view documents only what is its own: the
Api-Key security scheme, the one error body documented for every status an operation can fail with, and
component names that stay unique although many views nest an `InputSerializer` or an `OutputSerializer`."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension, OpenApiSerializerFieldExtension
from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers


class ApiKeyScheme(OpenApiAuthenticationExtension):
    target_class = "recommendations.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Authorization: Api-Key <key>`. A key carries scopes (`ingest`, `serve`, `admin`; "
            "`admin` includes the others); an endpoint needs one of them.",
        }


class JSONObjectFieldScheme(OpenApiSerializerFieldExtension):
    """recsite.api.StrictJSONObjectField takes a JSON object only, of at most `max_keys` keys."""

    target_class = "recsite.api.StrictJSONObjectField"

    def map_serializer_field(self, auto_schema, direction):
        schema = {"type": "object", "additionalProperties": True}
        if self.target.max_keys is not None:
            schema["maxProperties"] = self.target.max_keys
        return schema


class ErrorLocationSerializer(serializers.Serializer):
    index = serializers.IntegerField(allow_null=True, help_text="Position in the batch, when the body is one.")
    field = serializers.CharField(allow_null=True, help_text="The field, parameter, `body` or `Content-Type`.")
    message = serializers.CharField()


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField(help_text="A stable code, e.g. `invalid_request`, `not_found`, `conflict`.")
    message = serializers.CharField()
    errors = ErrorLocationSerializer(many=True, help_text="What was wrong with the input; empty when nothing of it is.")
    request_id = serializers.CharField(required=False, help_text="On a 500 or 503: quote it when reporting.")


# Why an operation may fail, for the statuses a view does not describe itself.
_BAD_INPUT = {"400": "The request is invalid; nothing was changed."}
_BODY = {"413": "The body is too large.", "415": "The body is not JSON."}
_KEYED = {
    "401": "No API key, or an unknown, revoked or expired one.",
    "403": "The API key lacks the scope this endpoint requires.",
    "429": "Too many requests for this key (or failed authentications from this address); see Retry-After.",
}
_PATH = {"404": "No such object."}
_ALWAYS = {
    "500": "An unexpected error; quote the request_id.",
    "503": "The database is unavailable, or the server is overloaded (see Retry-After); retry later.",
}


class ApiAutoSchema(AutoSchema):
    def get_operation(self, *args, **kwargs):
        operation = super().get_operation(*args, **kwargs)
        if operation is None:
            return None
        error = {"application/json": {"schema": self.resolve_serializer(ErrorSerializer, "response").ref}}
        responses = operation["responses"]
        for code, description in self._failures(operation).items():
            responses.setdefault(code, {"description": description})
        for code, response in responses.items():
            if code >= "400":  # a failure the view describes without a body has the error body too
                response.setdefault("content", error)
        operation["responses"] = dict(sorted(responses.items()))
        return operation

    def _failures(self, operation: dict) -> dict[str, str]:
        parameters = operation.get("parameters", [])
        failures = dict(_ALWAYS)
        if parameters or "requestBody" in operation:
            failures |= _BAD_INPUT
        if "requestBody" in operation:
            failures |= _BODY
        if any(parameter["in"] == "path" for parameter in parameters):
            failures |= _PATH
        if getattr(self.view, "required_scope", None) is not None:
            failures |= _KEYED
        return failures

    def get_serializer_name(self, serializer, direction) -> str:
        """A serializer nested in a view is named after the view: `ModelPromoteApi.InputSerializer` is
        `ModelPromoteInput`, not an `Input` that every other view's input would collide with."""
        owner, _, name = type(serializer).__qualname__.rpartition(".")
        return owner.removesuffix("Api") + name
