"""docker-compose.yml is for users (no Docker engine here): check that it describes the production shape
and that every command it runs points at code that exists."""

import importlib
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def command(service):
    return " ".join(SERVICES[service]["command"])


def test_compose_runs_postgres_redis_web_worker_and_beat_each_with_a_health_check():
    for name in ["postgres", "redis", "web", "worker", "beat"]:
        assert name in SERVICES, name
        assert SERVICES[name]["healthcheck"]["test"], name


def test_the_web_service_runs_gunicorn_on_the_projects_wsgi_application():
    assert command("web").startswith("gunicorn recsite.wsgi:application --config gunicorn.conf.py")
    module, attribute = "recsite.wsgi", "application"
    assert hasattr(importlib.import_module(module), attribute)
    assert "/api/v1/health" in " ".join(SERVICES["web"]["healthcheck"]["test"])


def test_workers_and_beat_run_the_projects_celery_app():
    assert command("worker").startswith("celery -A recsite worker")
    assert "--queues training" in command("trainer") and "--max-tasks-per-child 1" in command("trainer")
    assert command("beat").startswith("celery -A recsite beat")
    assert "django_celery_beat.schedulers:DatabaseScheduler" in command("beat")
    from recsite.celery import app

    assert app.main == "recsite"


def test_the_app_services_use_postgres_and_redis_and_wait_for_them():
    for name in ["web", "worker", "trainer", "beat"]:
        env = SERVICES[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgres://") and env["REDIS_URL"].startswith("redis://")
    assert SERVICES["migrate"]["command"] == ["python", "manage.py", "migrate", "--noinput"]
    assert SERVICES["web"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_the_app_services_carry_no_default_secret_and_run_the_production_settings():
    env = COMPOSE["x-app"]["environment"]
    assert env["SECRET_KEY"].startswith("${SECRET_KEY:?"), "compose must stop when SECRET_KEY is not set"
    assert env["DEBUG"] == "false" and env["DEPLOYMENT"] == "${DEPLOYMENT:-production}"
    for name in ["web", "worker", "trainer", "beat", "migrate"]:
        assert SERVICES[name]["environment"]["SECRET_KEY"] == env["SECRET_KEY"], name
    assert "SECRET_KEY" not in "".join(line for line in (REPO / "Dockerfile").read_text().splitlines()
                                       if line.startswith("ENV")), "the image must not carry a key"


def test_the_image_installs_the_pinned_requirements():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "pip install -r requirements.txt" in dockerfile
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            assert "==" in line, f"unpinned requirement: {line}"


def test_compose_runs_a_pinned_mlflow_server_on_sqlite_in_a_volume_and_the_app_mirrors_to_it():
    mlflow = SERVICES["mlflow"]
    image, _, tag = mlflow["image"].partition(":")
    assert image == "ghcr.io/mlflow/mlflow" and re.fullmatch(r"v\d+\.\d+\.\d+", tag), "pin the image's version"
    client = next(line for line in (REPO / "requirements.txt").read_text().splitlines()
                  if line.startswith("mlflow-skinny=="))
    assert client == f"mlflow-skinny=={tag[1:]}", "the server and the client are the same release"
    server = " ".join(mlflow["command"])
    assert server.startswith("mlflow server") and "--port 5000" in server and "--serve-artifacts" in server
    assert "--backend-store-uri sqlite:////mlflow/" in server and "mlflow:/mlflow" in mlflow["volumes"]
    assert "mlflow" in COMPOSE["volumes"] and "mlflow:5000" in server, "the app reaches it as mlflow:5000"
    assert all(port.startswith("127.0.0.1:") for port in mlflow["ports"]), "no login: this host only"
    assert mlflow["healthcheck"]["test"]
    for name in ["web", "worker", "trainer", "beat"]:
        assert SERVICES[name]["environment"]["MLFLOW_TRACKING_URI"] == "${MLFLOW_TRACKING_URI-http://mlflow:5000}"
        assert "mlflow" not in SERVICES[name]["depends_on"], "MLflow down must not keep the loop from starting"
