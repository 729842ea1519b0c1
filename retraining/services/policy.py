from django.db import IntegrityError, transaction

from retraining.models import RetrainPolicy
from retraining.services.schedule import trigger_check_schedule


def policy_active() -> RetrainPolicy:
    """The active policy, created with the defaults the first time it is asked for."""
    policy = RetrainPolicy.objects.filter(active=True).first()
    if policy is not None:
        return policy
    try:
        with transaction.atomic():
            return RetrainPolicy.objects.create(name="default", active=True)
    except IntegrityError:  # created concurrently
        return RetrainPolicy.objects.get(active=True)


def policy_save(*, policy: RetrainPolicy) -> RetrainPolicy:
    """Save the policy; when it is the active one, beat's trigger check moves to its `check_interval_minutes` in
    the same transaction, so an edit applies without running `setup_periodic_tasks` again."""
    with transaction.atomic():
        policy.save()
        if policy.active:
            trigger_check_schedule(every_seconds=policy.check_interval_minutes * 60)
    return policy
