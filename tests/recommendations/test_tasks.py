import pytest

from recommendations.models import ItemFeatures, UserFeatures
from recommendations.services.events import event_ingest
from recommendations.tasks import online_features_rebuild_task
from tests.recommendations.test_online_features import assert_online_equals_replay, catalog, random_events
from tests.support.processes import wait_until


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_real_worker_rebuilds_online_features_from_the_log(celery_worker_process):
    catalog()
    event_ingest(events=random_events(120, seed=11))
    UserFeatures.objects.update(event_count=0)
    ItemFeatures.objects.update(event_count=0)
    online_features_rebuild_task.delay()
    wait_until(lambda: not UserFeatures.objects.filter(event_count=0).exists(), 60, message="the rebuild task")
    wait_until(lambda: not ItemFeatures.objects.filter(event_count=0, item__interactions__isnull=False).exists(), 30)
    assert_online_equals_replay()
