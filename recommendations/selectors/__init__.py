"""Reads of the recommendations app: event counts and the online outcome of served lists (shared with
retraining), and the per-request reads of serving."""

from datetime import datetime

from recommendations.models import Interaction
from recommendations.selectors.online import (  # noqa: F401  (the app's read interface)
    ArmOutcomes,
    ArmSummary,
    OnlineHitRate,
    arm_outcomes_count,
    experiment_arm_outcomes,
    experiment_overlap,
    impression_outcomes,
    online_hit_rate,
    online_metrics,
    outcome_first_served_at,
    outcomes_recorded_until,
)
from recommendations.selectors.request_reads import (  # noqa: F401
    ServedUser,
    catalog_deactivations,
    inactive_items,
    served_user,
)


def events_after(*, moment: datetime | None, until: datetime) -> int:
    events = Interaction.objects.filter(timestamp__lt=until)
    return (events.filter(timestamp__gt=moment) if moment else events).count()


def users_with_events_after(*, moment: datetime, until: datetime) -> int:
    events = Interaction.objects.filter(timestamp__gt=moment, timestamp__lt=until).order_by()
    return events.values("user_id").distinct().count()
