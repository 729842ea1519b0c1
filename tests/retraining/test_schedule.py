from datetime import timedelta

import pytest
from django.forms.models import model_to_dict
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler

from recsite.celery import app
from retraining.models import RetrainPolicy
from retraining.services.policy import policy_active, policy_save
from retraining.services.schedule import CHECK_TRIGGERS, periodic_tasks_setup


def _trigger_check_seconds() -> int:
    return PeriodicTask.objects.select_related("interval").get(name=CHECK_TRIGGERS).interval.every


@pytest.mark.django_db
def test_saving_the_active_policy_moves_the_trigger_check_to_its_interval():
    periodic_tasks_setup(check_every_seconds=300)
    policy = policy_active()
    policy.check_interval_minutes = 15
    policy_save(policy=policy)
    assert _trigger_check_seconds() == 15 * 60


@pytest.mark.django_db
def test_saving_a_policy_that_is_not_active_leaves_the_schedule_alone():
    periodic_tasks_setup(check_every_seconds=300)
    policy_active()
    policy_save(policy=RetrainPolicy(name="draft", active=False, check_interval_minutes=1))
    assert _trigger_check_seconds() == 300


@pytest.mark.django_db
def test_an_edit_in_the_admin_applies_to_the_schedule(staff_client):
    periodic_tasks_setup(check_every_seconds=300)
    policy = policy_active()
    form = {name: value for name, value in model_to_dict(policy).items() if value is not None and name != "id"}
    form.update(check_interval_minutes=2, canary_steps="[10, 50, 100]", drift_key_features="[]")
    for flag in [name for name, value in form.items() if value is False]:
        del form[flag]  # an unchecked box is absent from a real form
    response = staff_client.post(f"/admin/retraining/retrainpolicy/{policy.pk}/change/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    assert _trigger_check_seconds() == 120


@pytest.mark.django_db
def test_an_interval_under_a_minute_is_refused_by_the_admin(staff_client):
    periodic_tasks_setup(check_every_seconds=300)
    policy = policy_active()
    form = {name: value for name, value in model_to_dict(policy).items() if value is not None and value is not False}
    form.update(check_interval_minutes=0, canary_steps="[10, 50, 100]", drift_key_features="[]")
    response = staff_client.post(f"/admin/retraining/retrainpolicy/{policy.pk}/change/", form)
    assert response.status_code == 200 and b"at least 1 minute" in response.content
    assert _trigger_check_seconds() == 300


@pytest.mark.django_db(transaction=True)
def test_a_running_beat_scheduler_picks_up_the_new_interval_without_a_restart():
    periodic_tasks_setup(check_every_seconds=300)
    scheduler = DatabaseScheduler(app=app)
    try:
        assert scheduler.schedule[CHECK_TRIGGERS].schedule.run_every == timedelta(seconds=300)
        policy = policy_active()
        policy.check_interval_minutes = 7
        policy_save(policy=policy)
        assert scheduler.schedule[CHECK_TRIGGERS].schedule.run_every == timedelta(minutes=7)
    finally:
        scheduler._finalize.cancel()
