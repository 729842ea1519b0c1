"""Serving: a request's own reads, in plain SQL, because the ORM's query building cost three times the
statements themselves (1.5 ms of CPU per recommendation); the SQL is portable (PostgreSQL and SQLite) and
the tables are the models' own."""

import json
from dataclasses import dataclass, fields
from datetime import datetime, timezone

from django.db import connection, models

from recommendations import features
from recommendations.models import EndUser, Interaction, Item, UserFeatures

_USER_STATE_FIELDS = [f.name for f in fields(features.UserState)]
_JSON_FIELDS = {name for name in _USER_STATE_FIELDS if isinstance(UserFeatures._meta.get_field(name), models.JSONField)}
_TIME_FIELDS = {name for name in _USER_STATE_FIELDS
                if isinstance(UserFeatures._meta.get_field(name), models.DateTimeField)}
_USER_SQL = (
    f"SELECT u.id, {', '.join('f.' + UserFeatures._meta.get_field(name).column for name in _USER_STATE_FIELDS)} "
    f"FROM {EndUser._meta.db_table} u LEFT JOIN {UserFeatures._meta.db_table} f ON f.user_id = u.id "
    f"WHERE u.external_id = %s"
)
_SEEN_SQL = f"SELECT DISTINCT item_id FROM {Interaction._meta.db_table} WHERE user_id = %s"
_INACTIVE_SQL = f"SELECT id FROM {Item._meta.db_table} WHERE NOT active AND id IN ({{keys}})"


@dataclass(frozen=True)
class ServedUser:
    pk: int
    state: features.UserState  # the online features as of now (empty for a user without a row yet)
    seen: set[int]  # every Item key the user has an event with


def served_user(*, external_id: str) -> ServedUser | None:
    """The user's online features and seen items, read now (so the user's last event counts); None for an
    unknown user."""
    with connection.cursor() as cursor:
        cursor.execute(_USER_SQL, [external_id])
        row = cursor.fetchone()
        if row is None:
            return None
        cursor.execute(_SEEN_SQL, [row[0]])
        seen = {item_id for (item_id,) in cursor.fetchall()}
    return ServedUser(pk=row[0], state=_user_state(dict(zip(_USER_STATE_FIELDS, row[1:]))), seen=seen)


def _user_state(values: dict) -> features.UserState:
    if values["event_count"] is None:  # no UserFeatures row yet
        return features.UserState()
    for name in _JSON_FIELDS:
        values[name] = json.loads(values[name]) if isinstance(values[name], str) else values[name]
    for name in _TIME_FIELDS:
        values[name] = _timestamp(values[name])
    return features.UserState(**values)


def _timestamp(moment: datetime | None) -> float | None:
    """UNIX seconds of a datetime column read by a cursor: aware on PostgreSQL, naive UTC on SQLite."""
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def inactive_items(*, pks: list[int]) -> set[int]:
    """Which of these Item keys are inactive now."""
    if not pks:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(_INACTIVE_SQL.format(keys=", ".join(["%s"] * len(pks))), pks)
        return {pk for (pk,) in cursor.fetchall()}
