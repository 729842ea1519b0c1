from celery import shared_task

from recommendations.clock import system_now
from recommendations.services.online_features import online_features_rebuild
from recommendations.services.outcomes import impression_outcomes_record


@shared_task(name="recommendations.online_features_rebuild", acks_late=True)
def online_features_rebuild_task(user_ids: list[int] | None = None, item_ids: list[int] | None = None) -> dict:
    """Repair: recompute online feature rows from the event log (idempotent, safe to run twice)."""
    return online_features_rebuild(user_ids=user_ids, item_ids=item_ids)


@shared_task(name="recommendations.outcomes_record", ignore_result=True)
def outcomes_record_task() -> int:
    """On beat: record the outcomes of the lists whose attribution window has closed (resumes from the watermark)."""
    return impression_outcomes_record(now=system_now())
