"""Serializer building blocks that refuse what DRF would silently coerce (ints as strings, "3" as a
number, booleans as numbers, NaN) and refuse unknown fields, so that bad input is a 400, never a guess."""

import json
import math
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.utils import timezone
from rest_framework import serializers

from recsite.errors import ApplicationError, flatten_errors


class StrictSerializer(serializers.Serializer):
    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
        errors = {name: ["Unknown field."] for name in sorted(set(data) - set(self.fields))}
        try:
            validated = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            raise serializers.ValidationError({**exc.detail, **errors}) from exc
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
    """A JSON object of at most `max_keys` keys and `max_bytes` bytes written as compact JSON, when given."""

    default_error_messages = {
        "not_object": "Must be a JSON object.",
        "max_keys": "At most {max_keys} keys.",
        "max_bytes": "At most {max_bytes} bytes as JSON.",
    }

    def __init__(self, *, max_keys: int | None = None, max_bytes: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.max_keys, self.max_bytes = max_keys, max_bytes

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            self.fail("not_object")
        if self.max_keys is not None and len(data) > self.max_keys:
            self.fail("max_keys", max_keys=self.max_keys)
        if self.max_bytes is not None and len(json.dumps(data, separators=(",", ":")).encode()) > self.max_bytes:
            self.fail("max_bytes", max_bytes=self.max_bytes)
        return super().to_internal_value(data)


EARLIEST_TIMESTAMP = datetime(1970, 1, 1, tzinfo=UTC)


class PastDateTimeField(serializers.DateTimeField):
    """ISO 8601; a time without an offset is taken as UTC; not before EARLIEST_TIMESTAMP (an event dated year 1
    would date its item and user forever) and at most MAX_FUTURE_SKEW_SECONDS ahead of now."""

    default_error_messages = {
        "future": "Timestamp is more than {seconds} seconds in the future.",
        "past": "Timestamp is before 1970-01-01T00:00:00Z.",
        "out_of_range": "Timestamp is out of range.",
    }

    def to_internal_value(self, value):
        if not isinstance(value, str):
            self.fail("invalid", format="ISO 8601")
        try:
            moment = super().to_internal_value(value)
        except OverflowError:  # an offset that moves a time at the edge of the calendar past year 1 or 9999
            self.fail("out_of_range")
        if moment < EARLIEST_TIMESTAMP:
            self.fail("past")
        skew = settings.MAX_FUTURE_SKEW_SECONDS
        if moment > timezone.now() + timedelta(seconds=skew):
            self.fail("future", seconds=skew)
        return moment


def validated(serializer_class, data, *, many: bool = False, message: str = "The request is invalid."):
    """The serializer's validated data, or an ApplicationError (400) listing {index, field, message}."""
    serializer = serializer_class(data=data if data is not None else {}, many=many)
    if not serializer.is_valid():
        raise ApplicationError(message, extra={"errors": flatten_errors(serializer.errors)})
    return serializer.validated_data
