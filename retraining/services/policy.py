from django.db import IntegrityError, transaction

from retraining.models import RetrainPolicy


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
