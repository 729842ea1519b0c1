"""Setting up a fresh installation for a demo: a synthetic catalogue and history, an admin login, an
API key, the beat schedule, and a first training run for the worker to pick up."""

import secrets
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model

from recommendations.models import ApiKey, Interaction
from recommendations.services.api_keys import api_key_create
from recommendations.services.movielens import movielens_import
from recommendations.services.synthetic import synthetic_dataset_write
from registry.selectors import champion_version
from retraining.models import TrainingRun
from retraining.services.policy import policy_active
from retraining.services.runs import RunInFlight, retrain_request
from retraining.services.schedule import periodic_tasks_setup

DEMO_KEY_NAME = "demo"


@dataclass
class DemoSetup:
    loaded_events: int
    admin_username: str
    admin_password: str
    api_key: str
    training_run_id: int | None


def demo_dataset_load(*, dataset: Path | None = None, users: int = 300, items: int = 500, events: int = 30_000,
                      seed: int = 7) -> int:
    """Import `dataset` (a MovieLens directory) or a synthetic one; returns the events imported."""
    if dataset is None:
        dataset = settings.VAR_DIR / "demo-dataset"
        synthetic_dataset_write(output=dataset, users=users, items=items, events=events, drift_at=0.8, seed=seed,
                                start=date(2025, 1, 1))
    return movielens_import(path=Path(dataset), progress=False).events_imported


def demo_setup(*, dataset: Path | None = None, train: bool = True) -> DemoSetup:
    loaded = 0 if Interaction.objects.exists() else demo_dataset_load(dataset=dataset)
    periodic_tasks_setup(check_every_seconds=policy_active().check_interval_minutes * 60)
    username, password = "admin", secrets.token_urlsafe(9)
    user, _ = get_user_model().objects.get_or_create(username=username, defaults={"is_staff": True, "is_superuser": True})
    user.set_password(password)
    user.is_staff = user.is_superuser = True
    user.save()
    ApiKey.objects.filter(name=DEMO_KEY_NAME, revoked=False).update(revoked=True)
    _, key = api_key_create(name=DEMO_KEY_NAME, scopes=["ingest", "serve", "admin"])
    run_id = None
    if train and champion_version() is None and not TrainingRun.objects.exists():
        try:
            run_id = retrain_request(requested_by="bootstrap").pk
        except RunInFlight as exc:
            run_id = exc.extra.get("run_id")
    return DemoSetup(loaded, username, password, key, run_id)
