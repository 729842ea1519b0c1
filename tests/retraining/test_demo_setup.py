from pathlib import Path

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command
from django.test import RequestFactory
from django_celery_beat.models import PeriodicTask

from recommendations.models import ApiKey, Interaction
from retraining.models import TrainingRun
from retraining.services.demo import demo_setup

pytestmark = pytest.mark.django_db
FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "movielens-csv-mini"


def test_demo_setup_loads_data_once_and_issues_a_login_and_a_key():
    first = demo_setup(dataset=FIXTURE)
    assert first.loaded_events == Interaction.objects.count() > 0
    login = RequestFactory().post("/admin/login/")  # the login throttle needs the request
    assert authenticate(login, username="admin", password=first.admin_password).is_superuser
    assert TrainingRun.objects.get().pk == first.training_run_id
    assert PeriodicTask.objects.filter(task="retraining.check_triggers", enabled=True).count() == 1
    second = demo_setup(dataset=FIXTURE)
    assert second.loaded_events == 0 and second.training_run_id is None
    assert PeriodicTask.objects.filter(task="retraining.check_triggers").count() == 1
    assert ApiKey.objects.filter(name="demo", revoked=False).count() == 1
    assert ApiKey.objects.get_from_key(second.api_key).scopes == ["admin", "ingest", "serve"]


def test_bootstrap_demo_prints_the_key_alone_on_the_last_line(capsys):
    call_command("bootstrap_demo", "--dataset", str(FIXTURE), "--no-train")
    out = capsys.readouterr().out.strip().splitlines()
    assert "/admin/" in "\n".join(out) and "login admin / " in "\n".join(out)
    assert ApiKey.objects.get_from_key(out[-1]).name == "demo"
