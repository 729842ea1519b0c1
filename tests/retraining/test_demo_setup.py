import stat
from pathlib import Path

import pytest
from django.contrib.auth import authenticate
from django.core.management import call_command
from django.test import RequestFactory
from django_celery_beat.models import PeriodicTask

from recommendations.models import ApiKey, Interaction
from retraining.models import TrainingRun
from retraining.services.demo import demo_credentials_path, demo_setup

pytestmark = pytest.mark.django_db
FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "movielens-csv-mini"


@pytest.fixture(autouse=True)
def var_dir(settings, tmp_path):
    """The demo keeps its credentials under VAR_DIR: a private one per test, not the checkout's var/."""
    settings.VAR_DIR = tmp_path


def bootstrap(capsys) -> list[str]:
    call_command("bootstrap_demo", "--dataset", str(FIXTURE), "--no-train")
    return capsys.readouterr().out.strip().splitlines()


def login_line(out: list[str]) -> str:
    return next(line for line in out if "login admin / " in line)


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


def test_bootstrap_demo_twice_reuses_the_login_and_the_key_and_says_so(capsys):
    first, second = bootstrap(capsys), bootstrap(capsys)
    assert login_line(second) == login_line(first) and second[-1] == first[-1]
    assert any("Reusing the demo login and API key" in line for line in second)
    assert ApiKey.objects.get_from_key(second[-1]).name == "demo"
    assert ApiKey.objects.filter(name="demo").count() == 1
    password = login_line(second).rsplit(" / ", 1)[1]
    assert authenticate(RequestFactory().post("/admin/login/"), username="admin", password=password)


def test_the_kept_credentials_are_readable_by_their_owner_only(capsys):
    bootstrap(capsys)
    assert stat.S_IMODE(demo_credentials_path().stat().st_mode) == 0o600


def test_a_revoked_demo_key_is_replaced_and_the_run_says_so(capsys):
    first = bootstrap(capsys)
    ApiKey.objects.filter(name="demo").update(revoked=True)
    second = bootstrap(capsys)
    assert second[-1] != first[-1] and ApiKey.objects.get_from_key(second[-1]).name == "demo"
    assert any("A new demo API key was issued (the kept one was revoked or has expired)" in line for line in second)
    assert login_line(second) == login_line(first)


def test_a_changed_admin_password_is_replaced_and_the_run_says_so(capsys, django_user_model):
    first = bootstrap(capsys)
    admin = django_user_model.objects.get(username="admin")
    admin.set_password("changed-by-hand")
    admin.save()
    second = bootstrap(capsys)
    assert login_line(second) != login_line(first)
    assert any("The demo admin password was replaced: the kept one no longer logs in." in line for line in second)
    assert second[-1] == first[-1]


def test_a_fresh_database_with_kept_credentials_gets_new_ones_and_the_run_says_so(capsys, django_user_model):
    first = bootstrap(capsys)
    django_user_model.objects.filter(username="admin").delete()
    ApiKey.objects.all().delete()
    second = bootstrap(capsys)
    assert login_line(second) != login_line(first) and second[-1] != first[-1]
    assert any("the database had no demo admin any more" in line for line in second)
    assert any("A new demo API key was issued" in line for line in second)
    assert not any("Reusing" in line for line in second)
