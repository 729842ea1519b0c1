"""Reads of the recommendations app shared with retraining: event counts, the online outcome of served lists."""

from datetime import datetime

from recommendations.models import Interaction
from recommendations.selectors.online import (  # noqa: F401  (the app's read interface)
    ArmSummary, OnlineHitRate, arm_impressions_count, arms_compare, impression_outcomes, online_hit_rate, online_metrics,
)


def events_after(*, moment: datetime | None, until: datetime) -> int:
    events = Interaction.objects.filter(timestamp__lt=until)
    return (events.filter(timestamp__gt=moment) if moment else events).count()
