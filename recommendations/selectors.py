"""Reads of the recommendations app shared with retraining: event counts, online outcome of served lists."""

from dataclasses import dataclass
from datetime import datetime

from recommendations.models import Impression, Interaction

ENGAGEMENT_TYPES = ("view", "click", "like", "rating", "purchase")


@dataclass(frozen=True)
class OnlineHitRate:
    impressions: int
    hits: int

    @property
    def rate(self) -> float | None:
        return self.hits / self.impressions if self.impressions else None


def online_hit_rate(*, model_version: int, start: datetime, end: datetime, arm: str | None = None) -> OnlineHitRate:
    """Share of the lists `model_version` served in [start, end) on which the user then engaged with a
    served item (an event carrying the list's recommendation_id, other than a dislike)."""
    impressions = Impression.objects.filter(model_version=model_version, served_at__gte=start, served_at__lt=end)
    if arm is not None:
        impressions = impressions.filter(arm=arm)
    served = dict(impressions.values_list("recommendation_id", "items"))
    if not served:
        return OnlineHitRate(0, 0)
    engaged = Interaction.objects.filter(
        recommendation_id__in=impressions.values("recommendation_id"), event_type__in=ENGAGEMENT_TYPES
    )
    hit_lists = {rec_id for rec_id, item_id in engaged.values_list("recommendation_id", "item_id") if item_id in served[rec_id]}
    return OnlineHitRate(impressions=len(served), hits=len(hit_lists))


def events_after(*, moment: datetime | None, until: datetime) -> int:
    events = Interaction.objects.filter(timestamp__lt=until)
    return (events.filter(timestamp__gt=moment) if moment else events).count()
