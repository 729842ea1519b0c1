"""Which model served a user, when, and why: the user's served lists (the impression log), for each the
deployment change that made its version current at that moment (the registry's audit trail, with the gate
numbers of the training run that produced the version) and the events that came back with its recommendation_id.
Shared by the admin page and GET /api/v1/users/<id>/timeline."""

from dataclasses import dataclass

from recommendations.models import EndUser, Impression, Interaction, Item
from recsite.errors import NotFoundError
from registry.models import Alias, DeploymentChange
from retraining.models import TrainingRun

TIMELINE_MAX_LIMIT = 100
# The audit actions that make a version current: the champion's pointer flips, and a challenger's start or step.
MADE_CURRENT = {
    Alias.CHAMPION: (DeploymentChange.Action.PROMOTE, DeploymentChange.Action.ROLLBACK),
    Alias.CHALLENGER: (DeploymentChange.Action.CHALLENGER_START, DeploymentChange.Action.TRAFFIC),
}
GATE_SIDES = ("candidate", "champion", "popularity")


@dataclass(frozen=True)
class TimelinePage:
    user_id: str
    total: int
    limit: int
    offset: int
    lists: list[dict]

    @property
    def next_offset(self) -> int | None:
        return self.offset + self.limit if self.offset + self.limit < self.total else None


def user_timeline(*, external_id: str, limit: int = 20, offset: int = 0) -> TimelinePage:
    """The user's served lists, newest first, `limit` (at most TIMELINE_MAX_LIMIT) from `offset`."""
    # PostgreSQL refuses NUL in a string, and no stored id holds one (ingestion refuses it).
    user = EndUser.objects.filter(external_id=external_id).first() if "\x00" not in external_id else None
    if user is None:
        raise NotFoundError(f"User {external_id!r} does not exist.")
    limit = max(1, min(limit, TIMELINE_MAX_LIMIT))
    impressions = Impression.objects.filter(user=user)
    page = list(impressions.order_by("-served_at", "-id")[offset : offset + limit])
    events = _events_by_list([i.recommendation_id for i in page])
    changes = _changes_of({i.routed_version for i in page if i.routed_version is not None})
    items = dict(Item.objects.filter(pk__in={pk for i in page for pk in i.items}).values_list("pk", "external_id"))
    lists = [
        {
            "recommendation_id": str(i.recommendation_id),
            "served_at": i.served_at,
            "model_version": i.model_version,
            "routed_version": i.routed_version,
            "arm": i.arm,
            "experiment_id": i.experiment_id,
            "strategy": i.strategy,
            "items": [items.get(pk, str(pk)) for pk in i.items],
            "deployment": _current_change(changes, impression=i),
            "events": events.get(i.recommendation_id, []),
        }
        for i in page
    ]
    return TimelinePage(user_id=external_id, total=impressions.count(), limit=limit, offset=offset, lists=lists)


def _events_by_list(recommendation_ids: list) -> dict:
    found: dict = {}
    rows = (
        Interaction.objects.filter(recommendation_id__in=recommendation_ids)
        .order_by("timestamp", "id")
        .values_list("recommendation_id", "event_type", "item__external_id", "value", "timestamp")
    )
    for recommendation_id, event_type, item, value, timestamp in rows:
        found.setdefault(recommendation_id, []).append(
            {"event_type": event_type, "item_id": item, "value": value, "timestamp": timestamp}
        )
    return found


def _changes_of(versions: set[int]) -> list[dict]:
    """The audit rows that made any of `versions` current, newest first, with their gate numbers."""
    rows = (
        DeploymentChange.objects.filter(to_version__version__in=versions)
        .select_related("from_version", "to_version")
        .order_by("-created_at", "-id")
    )
    gates = _gates_of(versions)
    return [
        {
            "action": change.action,
            "alias": change.alias,
            "at": change.created_at,
            "actor": change.actor,
            "reason": change.reason,
            "version": change.to_version.version,
            "from_version": change.from_version.version if change.from_version else None,
            "gate": gates.get(change.to_version.version),
        }
        for change in rows
        if change.action in MADE_CURRENT[change.alias]
    ]


def _gates_of(versions: set[int]) -> dict[int, dict]:
    """Per version, the gate decision of the training run that produced it: passed, its reasons and the
    NDCG@10 of the candidate, the champion it was compared with and most-popular, on the same holdout."""
    gates = {}
    runs = TrainingRun.objects.filter(model_version__version__in=versions).exclude(gate={}).order_by("id")
    for version, gate in runs.values_list("model_version__version", "gate"):
        numbers = gate.get("numbers") or {}
        gates[version] = {
            "passed": bool(gate.get("passed")),
            "reasons": gate.get("failures") or gate.get("reasons") or [],
            "ndcg_at_10": {side: (numbers.get(side) or {}).get("ndcg@10") for side in GATE_SIDES},
        }
    return gates


def _current_change(changes: list[dict], *, impression: Impression) -> dict | None:
    """The latest change, at or before the list was served, that made its routed version current under the
    pointer its arm reads (the champion's arm reads `champion`; the challenger, canary and shadow arms read
    `challenger`)."""
    alias = Alias.CHAMPION if impression.arm == Impression.Arm.CHAMPION else Alias.CHALLENGER
    return next(
        (
            change
            for change in changes
            if change["version"] == impression.routed_version
            and change["alias"] == alias
            and change["at"] <= impression.served_at
        ),
        None,
    )
