"""docker-compose.yml is for users (no Docker engine here): check that it describes the production shape
and that every command it runs points at code that exists."""

import importlib
import json
import re
from ipaddress import ip_address, ip_network
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
    assert "SECRET_KEY" not in "".join(
        line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("ENV")
    ), "the image must not carry a key"


def test_the_image_installs_the_pinned_requirements():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "pip install -r requirements.txt" in dockerfile
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            assert "==" in line, f"unpinned requirement: {line}"


def test_the_optional_s3_profile_runs_a_pinned_minio_that_the_app_services_can_use_as_their_artifact_store():
    env = COMPOSE["x-app"]["environment"]
    assert env["ARTIFACT_STORAGE"] == "${ARTIFACT_STORAGE:-local}", "one host keeps the local store by default"
    assert env["ARTIFACT_S3_ENDPOINT_URL"] == "${ARTIFACT_S3_ENDPOINT_URL-http://minio:9000}", "empty means AWS"
    for name in ["minio", "minio-bucket"]:
        service = SERVICES[name]
        assert service["profiles"] == ["s3"], f"{name} starts only with --profile s3"
        image, _, tag = service["image"].partition(":")
        assert image == "minio/minio" and tag.startswith("RELEASE."), f"{name}: pin a MinIO release, not latest"
        assert service["environment"]["MINIO_ROOT_PASSWORD"] == "${AWS_SECRET_ACCESS_KEY:-}", "no password in the file"
    assert SERVICES["minio"]["healthcheck"]["test"] and "ports" not in SERVICES["minio"]
    assert SERVICES["minio-bucket"]["environment"]["BUCKET"] == env["ARTIFACT_S3_BUCKET"]
    assert "mc mb --ignore-existing" in SERVICES["minio-bucket"]["command"][0]
    assert SERVICES["minio-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in ["web", "worker", "trainer", "beat"]:
        assert SERVICES[name]["environment"]["ARTIFACT_STORAGE"] == env["ARTIFACT_STORAGE"], name


# --- Prometheus and Grafana -----------------------------------------------------------------------------------
DEPLOY = REPO / "deploy"
METRIC_NAME = re.compile(r"\brecsite_[a-z0-9_]+\b")
SUFFIXES = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}


def exported_metric_names() -> set[str]:
    """Every sample name /metrics can carry: the families the processes count and those read from the database."""
    from prometheus_client import REGISTRY

    import recsite.metrics  # noqa: F401  (registers the process metrics)
    from recsite.metrics_db import DatabaseCollector

    families = [*REGISTRY.collect(), *DatabaseCollector().describe()]
    return {family.name + suffix for family in families for suffix in SUFFIXES.get(family.type, [""])}


def mounted(service: str, target: str) -> Path:
    """The repository path a service mounts at `target`."""
    for volume in SERVICES[service]["volumes"]:
        source, _, rest = volume.partition(":")
        if rest.split(":")[0] == target:
            return REPO / source
    raise AssertionError(f"{service} mounts nothing at {target}")


def test_compose_runs_prometheus_and_grafana_on_pinned_images_with_health_checks():
    for name in ["prometheus", "grafana"]:
        image = SERVICES[name]["image"]
        assert ":" in image and not image.endswith(":latest"), image
        assert SERVICES[name]["healthcheck"]["test"], name
    assert "GRAFANA_ADMIN_PASSWORD:?" in SERVICES["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]


def test_prometheus_scrapes_web_and_both_workers_where_they_serve_metrics_and_may_read_them():
    config = yaml.safe_load(mounted("prometheus", "/etc/prometheus/prometheus.yml").read_text())
    targets = {
        target: job
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets["web:8000"].get("metrics_path", "/metrics") == "/metrics"
    for worker in ["worker", "trainer"]:
        env = SERVICES[worker]["environment"]
        assert f"{worker}:{env['CELERY_METRICS_PORT']}" in targets and env["CELERY_METRICS_ADDRESS"] == "0.0.0.0"
        assert "celery -A recsite worker" in command(worker)
    address = SERVICES["prometheus"]["networks"]["default"]["ipv4_address"]
    allowed = COMPOSE["x-app"]["environment"]["METRICS_ALLOWED_NETWORKS"]
    assert any(ip_address(address) in ip_network(cidr) for cidr in re.findall(r"[\d.]+/\d+", allowed))
    subnet = COMPOSE["networks"]["default"]["ipam"]["config"][0]["subnet"]
    assert ip_address(address) in ip_network(subnet)
    for name in ["web", "worker", "trainer"]:
        folder = SERVICES[name]["environment"]["PROMETHEUS_MULTIPROC_DIR"]
        assert folder in SERVICES[name]["tmpfs"], name


def test_grafana_is_provisioned_with_the_prometheus_datasource_and_the_dashboard_file():
    provisioning = mounted("grafana", "/etc/grafana/provisioning")
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "recsite.yml").read_text())["providers"]
    dashboards = mounted("grafana", provider["options"]["path"])
    assert (dashboards / "recsite.json").is_file()
    dashboard = json.loads((dashboards / "recsite.json").read_text())
    uids = {panel["datasource"]["uid"] for panel in dashboard["panels"] if panel["type"] != "row"}
    assert uids == {datasource["uid"]}


def test_every_metric_the_dashboard_queries_is_one_we_export():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "recsite.json").read_text())
    queried = {
        name
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        for name in METRIC_NAME.findall(target["expr"])
    }
    exported = exported_metric_names()
    assert len(queried) >= 20
    assert queried <= exported, sorted(queried - exported)
    assert "recsite_drift_psi" in queried and "recsite_http_request_duration_seconds_bucket" in queried


def test_the_optional_dask_profile_runs_a_scheduler_and_workers_of_the_app_image_that_the_trainer_can_use():
    for name in ("dask-scheduler", "dask-worker"):
        service = SERVICES[name]
        assert service["profiles"] == ["dask"], f"{name} starts only with --profile dask"
        assert service["image"] == SERVICES["trainer"]["image"], "workers run the app's own retraining.ml code"
        assert service["healthcheck"]["test"], name
    assert command("dask-scheduler").startswith("dask scheduler --port 8786")
    assert command("dask-worker").startswith("dask worker tcp://dask-scheduler:8786")
    assert "--memory-limit" in command("dask-worker")
    assert "DASK_SCHEDULER_ADDRESS" in SERVICES["trainer"]["environment"]
    requirements = (REPO / "requirements.txt").read_text().split()
    assert "dask==2026.8.0" in requirements and "distributed==2026.8.0" in requirements


def test_compose_runs_a_pinned_mlflow_server_on_sqlite_in_a_volume_and_the_app_mirrors_to_it():
    mlflow = SERVICES["mlflow"]
    image, _, tag = mlflow["image"].partition(":")
    assert image == "ghcr.io/mlflow/mlflow" and re.fullmatch(r"v\d+\.\d+\.\d+", tag), "pin the image's version"
    client = next(
        line for line in (REPO / "requirements.txt").read_text().splitlines() if line.startswith("mlflow-skinny==")
    )
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
