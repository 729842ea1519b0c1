"""The policy's event retention: validated against the windows the policy reads, applied by a beat task."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.forms.models import model_to_dict
from django_celery_beat.models import PeriodicTask

from recommendations.models import Interaction
from recommendations.services.events import EventInput, event_ingest
from retraining.models import RetrainPolicy
from retraining.services.policy import policy_active
from retraining.services.schedule import MAINTAIN_EVENT_PARTITIONS, periodic_tasks_setup
from retraining.tasks import maintain_event_partitions_task

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("days", [0, 7, 400])
def test_retention_off_or_at_least_the_drift_window_is_valid(days):
    RetrainPolicy(drift_window_days=7, performance_window_hours=24, event_retention_days=days).full_clean()


@pytest.mark.parametrize(("days", "drift_days", "performance_hours"), [(6, 7, 24), (2, 1, 72)])
def test_retention_shorter_than_a_window_the_policy_reads_is_refused(days, drift_days, performance_hours):
    policy = RetrainPolicy(
        drift_window_days=drift_days, performance_window_hours=performance_hours, event_retention_days=days
    )
    with pytest.raises(ValidationError, match="at least"):
        policy.full_clean()


def test_the_admin_refuses_a_retention_shorter_than_the_drift_window(staff_client):
    policy = policy_active()
    form = {name: value for name, value in model_to_dict(policy).items() if value is not None and value is not False}
    form.update(event_retention_days=3, canary_steps="[10, 50, 100]", drift_key_features="[]")
    response = staff_client.post(f"/admin/retraining/retrainpolicy/{policy.pk}/change/", form)
    assert response.status_code == 200 and b"at least 7 days" in response.content
    policy.refresh_from_db()
    assert policy.event_retention_days == 0


def test_beat_runs_the_partition_maintenance_hourly():
    periodic_tasks_setup(check_every_seconds=300)
    task = PeriodicTask.objects.select_related("interval").get(name=MAINTAIN_EVENT_PARTITIONS)
    assert (task.task, task.interval.every, task.enabled) == ("retraining.maintain_event_partitions", 3600, True)


def test_the_task_applies_the_active_policys_retention():
    now = datetime.now(tz=UTC)
    event_ingest(
        events=[EventInput("u", "i", "view", now - timedelta(days=n), event_id=uuid.uuid4()) for n in (1, 200)]
    )
    policy = policy_active()
    policy.event_retention_days = 60
    policy.save()
    report = maintain_event_partitions_task()
    assert report["events_deleted"] == 1 and report["postponed"] == []
    assert Interaction.objects.get().timestamp == now - timedelta(days=1)
