"""Serving: a request's own reads. The statements are in recommendations/sql.py (the ORM's query building cost
three times the statements themselves, 1.5 ms of CPU per recommendation); this module turns their rows into
what serving uses."""

import json
from dataclasses import dataclass

from recommendations import features, sql
from recommendations.models import USER_STATE_FIELDS, CatalogState, user_state_of


@dataclass(frozen=True)
class ServedUser:
    pk: int
    state: features.UserState  # the online features as of now (empty for a user without a row yet)
    seen: set[int]  # every Item key the user has an event with
    catalog_deactivations: int | None  # CatalogState.deactivations, read in the same statement


def served_user(*, external_id: str) -> ServedUser | None:
    """The user's online features and seen items (so the user's last event counts) and the catalogue's
    deactivation count, read now in one statement; None for an unknown user."""
    row = sql.served_user_row(external_id=external_id)
    if row is None:
        return None
    seen = json.loads(row[1]) if isinstance(row[1], str) else row[1]
    return ServedUser(
        pk=row[0],
        state=user_state_of(values=dict(zip(USER_STATE_FIELDS, row[3:]))),
        seen=set(seen),
        catalog_deactivations=row[2],
    )


def catalog_deactivations() -> int | None:
    """CatalogState.deactivations now; None on a database without its trigger."""
    return CatalogState.objects.values_list("deactivations", flat=True).first()


inactive_items = sql.inactive_items  # a read of its own: serving imports it from the selectors
