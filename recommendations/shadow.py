"""Shadow scoring in another process, after the response.

For a shadowed request the web process only publishes a small JSON job — the request's inputs: the user's
online features and seen items as they were read, the filters, the clock — to the `shadow` queue, once the
champion's list is built, without retrying. A `shadow` Celery worker (Procfile and docker-compose run one,
niced, so that on a shared host it yields the CPU to the web processes) scores it with the challenger and
logs the shadow impression. The web process pays for the publish only, not for a second model; a job older
than SHADOW_MAX_DELAY_SECONDS is discarded by the worker rather than scored late; a failed publish is logged
and counted. Nothing a shadow does reaches a response. SHADOW_INLINE (the tests) scores in-process."""

import logging
from collections import Counter

from django.conf import settings

logger = logging.getLogger(__name__)
stats: Counter = Counter()


def shadow_enqueue(payload: dict) -> None:
    from recommendations.tasks import shadow_score_task  # the task module imports serving, which imports this

    stats["submitted"] += 1
    try:
        if settings.SHADOW_INLINE:
            shadow_score_task(payload)
        else:
            shadow_score_task.apply_async(args=[payload], queue="shadow", expires=settings.SHADOW_MAX_DELAY_SECONDS,
                                          retry=False)
    except Exception:
        stats["failed"] += 1
        logger.exception("shadow scoring failed (the response is not affected)")
