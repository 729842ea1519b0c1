"""Serializer building blocks that refuse what DRF would silently coerce (ints as strings, "3" as a
number, booleans as numbers, NaN) and refuse unknown fields, so that bad input is a 400, never a guess."""

import math
from datetime import timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework import serializers

from recsite.errors import ApplicationError


class StrictSerializer(serializers.Serializer):
    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
        errors = {name: ["Unknown field."] for name in sorted(set(data) - set(self.fields))}
        try:
            validated = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({**exc.detail, **errors})
        if errors:
            raise serializers.ValidationError(errors)
        return validated


class StrictCharField(serializers.CharField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictUUIDField(serializers.UUIDField):
    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    default_error_messages = {"not_finite": "Must be a finite number."}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        if not math.isfinite(data):
            self.fail("not_finite")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class StrictJSONObjectField(serializers.JSONField):
    default_error_messages = {"not_object": "Must be a JSON object."}

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            self.fail("not_object")
        return super().to_internal_value(data)


class PastDateTimeField(serializers.DateTimeField):
    """ISO 8601; a time without an offset is taken as UTC; at most MAX_FUTURE_SKEW_SECONDS ahead of now."""

    default_error_messages = {"future": "Timestamp is more than {seconds} seconds in the future."}

    def to_internal_value(self, value):
        if not isinstance(value, str):
            self.fail("invalid", format="ISO 8601")
        moment = super().to_internal_value(value)
        skew = settings.MAX_FUTURE_SKEW_SECONDS
        if moment > timezone.now() + timedelta(seconds=skew):
            self.fail("future", seconds=skew)
        return moment


def flatten_errors(errors, index: int | None = None) -> list[dict]:
    """DRF's nested error structure (per-index for a list) as a flat list of {index, field, message}."""
    if isinstance(errors, list) and any(isinstance(entry, dict) for entry in errors):
        errors = dict(enumerate(errors))
    if isinstance(errors, dict) and errors and all(isinstance(key, int) for key in errors):
        return [flat for position, entry in errors.items() for flat in flatten_errors(entry, position)]
    if isinstance(errors, dict):
        return [
            {"index": index, "field": name, "message": str(message)}
            for name, messages in errors.items()
            for message in (messages if isinstance(messages, list) else [messages])
        ]
    return [{"index": index, "field": "non_field_errors", "message": str(message)} for message in errors]


def validated(serializer_class, data, *, many: bool = False, message: str = "The request is invalid."):
    """The serializer's validated data, or an ApplicationError (400) listing {index, field, message}."""
    serializer = serializer_class(data=data if data is not None else {}, many=many)
    if not serializer.is_valid():
        raise ApplicationError(message, extra={"errors": flatten_errors(serializer.errors)})
    return serializer.validated_data
