from celery import shared_task

from recommendations.services.online_features import online_features_rebuild


@shared_task(name="recommendations.online_features_rebuild", acks_late=True)
def online_features_rebuild_task(user_ids: list[int] | None = None, item_ids: list[int] | None = None) -> dict:
    """Repair: recompute online feature rows from the event log (idempotent, safe to run twice)."""
    return online_features_rebuild(user_ids=user_ids, item_ids=item_ids)
