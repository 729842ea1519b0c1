"""The API's JSON parser: refuses, as a 400 parse error, the JSON that would otherwise become a 5xx further in."""

import json
import math
import re

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

_INT64_MAX = 2**63 - 1
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))
_BRACES_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")  # one kind, so that one round removes one level exactly
# Only a string written with one of these escapes can hold a NUL or a lone surrogate (raw control characters are
# invalid JSON, and valid UTF-8 has no surrogates): the common body is never walked.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|d[89a-f])", re.IGNORECASE)


class StrictJSONParser(JSONParser):
    """Standard JSON, and also: nested at most JSON_MAX_DEPTH deep (checked before decoding, as decoding
    recurses); no NUL character or lone surrogate in any key or string (PostgreSQL stores neither); numbers
    finite (no NaN, Infinity or 1e400) and integers within 64 bits."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = stream.read().decode(encoding) if stream is not None else ""
            _check_depth(text.encode(), settings.JSON_MAX_DEPTH)
            data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite, parse_int=_int64)
            if _SUSPECT_ESCAPE.search(text):
                _check_strings(data)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
            raise ParseError(f"JSON parse error - {exc}") from exc
        return data


def _check_depth(raw: bytes, limit: int) -> None:
    """Refuses JSON nested deeper than `limit`, in time linear in its size and without recursing: the brackets
    outside strings, less `limit` rounds of their innermost pairs, still hold a pair only if nested deeper."""
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(unescaped.split(b'"')[::2]).translate(_BRACES_AS_BRACKETS, _NOT_BRACKETS)
    for _ in range(limit):
        innermost_removed = brackets.replace(b"[]", b"")
        if innermost_removed == brackets:
            return
        brackets = innermost_removed
    if b"[]" in brackets:
        raise ValueError(f"nested more than {limit} deep")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _finite(literal: str) -> float:
    number = float(literal)
    if not math.isfinite(number):
        raise ValueError("a number is out of the range of a double")
    return number


def _int64(literal: str) -> int:
    number = int(literal)
    if abs(number) > _INT64_MAX:
        raise ValueError("an integer does not fit in 64 bits")
    return number


def _check_strings(data) -> None:
    pending = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.keys())
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            if "\x00" in value:
                raise ValueError("a string contains a NUL character")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("a string contains a lone surrogate") from None
