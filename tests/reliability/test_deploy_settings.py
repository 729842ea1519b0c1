"""Secrets and deployment settings: no built-in key outside DEBUG, the documented production settings pass Django's
deployment checklist, and the local defaults keep plain http working. Settings are read at start-up, so each case
starts a process of its own with the service's settings module (not the test one, which supplies a key)."""

import json
import os
import stat
import subprocess
import sys

from tests.support.processes import REPO

STRONG_KEY = "k3y-only-for-this-test-" + "x7Qm2Rv9Lp4Zt8Wn5Bc1Hd6Jf0Gs3Ya" * 2
SETTINGS_SHOWN = [
    "DEBUG",
    "DEPLOYMENT",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_PROXY_SSL_HEADER",
    "AXES_FAILURE_LIMIT",
    "AXES_COOLOFF_TIME",
]


def service_env(tmp_path, **extra) -> dict:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("SECRET_KEY", "DEBUG", "DEPLOYMENT") and not name.startswith(("SECURE_", "AXES_"))
    }
    return {**env, "DJANGO_SETTINGS_MODULE": "recsite.settings", "RECSITE_VAR_DIR": str(tmp_path), **extra}


def run(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def settings_in(tmp_path, **extra) -> dict:
    script = (
        "import django, json; django.setup(); from django.conf import settings; "
        f"print(json.dumps({{name: getattr(settings, name, None) for name in {SETTINGS_SHOWN!r}}}, default=str))"
    )
    done = run([sys.executable, "-c", script], service_env(tmp_path, **extra))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_with_debug_off_and_no_secret_key_the_service_refuses_to_start(tmp_path):
    done = run([sys.executable, "manage.py", "check"], service_env(tmp_path))
    assert done.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY is not set and DEBUG is off" in done.stderr
    assert "dev-only-insecure" not in done.stderr


def test_an_empty_secret_key_is_refused_too(tmp_path):
    done = run([sys.executable, "manage.py", "check"], service_env(tmp_path, SECRET_KEY=""))
    assert done.returncode != 0 and "SECRET_KEY is not set" in done.stderr


def test_debug_runs_without_a_key_on_one_that_the_deploy_check_flags(tmp_path):
    assert settings_in(tmp_path, DEBUG="true")["DEBUG"] is True
    done = run([sys.executable, "manage.py", "check", "--deploy"], service_env(tmp_path, DEBUG="true"))
    assert "security.W009" in done.stderr


def test_the_production_settings_pass_the_deployment_checklist(tmp_path):
    env = service_env(tmp_path, SECRET_KEY=STRONG_KEY, DEPLOYMENT="production")
    done = run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"], env)
    assert done.returncode == 0, done.stderr


def test_the_local_defaults_fail_the_deployment_checklist_on_https_settings(tmp_path):
    done = run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        service_env(tmp_path, SECRET_KEY=STRONG_KEY),
    )
    assert done.returncode != 0
    for warning in ["W004", "W008", "W012", "W016"]:
        assert f"security.{warning}" in done.stderr
    assert "security.W009" not in done.stderr


def test_the_local_defaults_keep_plain_http_working_and_production_turns_https_on(tmp_path):
    local = settings_in(tmp_path, SECRET_KEY=STRONG_KEY)
    assert local["DEPLOYMENT"] == "local" and local["SECURE_HSTS_SECONDS"] == 0
    assert not (local["SECURE_SSL_REDIRECT"] or local["SESSION_COOKIE_SECURE"] or local["CSRF_COOKIE_SECURE"])
    production = settings_in(
        tmp_path, SECRET_KEY=STRONG_KEY, DEPLOYMENT="production", SECURE_SSL_REDIRECT="false", BEHIND_TLS_PROXY="true"
    )
    assert production["SECURE_HSTS_SECONDS"] >= 3600 and production["SESSION_COOKIE_SECURE"]
    assert production["CSRF_COOKIE_SECURE"] and production["SECURE_SSL_REDIRECT"] is False  # each one overridable
    assert production["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]


def test_an_unknown_deployment_is_refused(tmp_path):
    done = run([sys.executable, "manage.py", "check"], service_env(tmp_path, SECRET_KEY=STRONG_KEY, DEPLOYMENT="prod"))
    assert done.returncode != 0 and "DEPLOYMENT must be local or production" in done.stderr


def test_the_login_throttle_is_configured_from_the_environment(tmp_path):
    shown = settings_in(tmp_path, SECRET_KEY=STRONG_KEY, AXES_FAILURE_LIMIT="3", AXES_COOLOFF_MINUTES="2.5")
    assert shown["AXES_FAILURE_LIMIT"] == 3 and shown["AXES_COOLOFF_TIME"] == "0:02:30"
    refused = service_env(tmp_path, SECRET_KEY=STRONG_KEY, AXES_FAILURE_LIMIT="0")
    done = run([sys.executable, "manage.py", "check"], refused)
    assert done.returncode != 0 and "AXES_FAILURE_LIMIT must be >= 1" in done.stderr


def test_the_https_redirect_spares_the_health_check_only(client, settings, db):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/api/v1/health").status_code != 301
    response = client.get("/admin/login/")
    assert response.status_code == 301 and response["Location"].startswith("https://")


def test_make_generates_the_local_secret_key_once_readable_by_its_owner_only(tmp_path):
    key_file = tmp_path / "var" / "secret_key"
    make = ["make", "--no-print-directory", "-C", str(REPO), f"KEY_FILE={key_file}", str(key_file)]
    assert run(make, dict(os.environ)).returncode == 0
    key = key_file.read_text().strip()
    assert len(key) >= 50 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert run(make, dict(os.environ)).returncode == 0
    assert key_file.read_text().strip() == key
