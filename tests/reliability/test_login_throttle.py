"""Admin logins are throttled by django-axes: after AXES_FAILURE_LIMIT wrong passwords for one username from one IP
address, that pair is refused, even with the right password, until AXES_COOLOFF_TIME has passed."""

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import User

pytestmark = pytest.mark.django_db
LOGIN = "/admin/login/?next=/admin/"


@pytest.fixture
def ops(db):
    return User.objects.create_superuser("ops", "ops@example.com", "the-right-password")


def log_in(client, password: str, ip: str = "10.0.0.1", forwarded: str | None = None):
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return client.post(LOGIN, {"username": "ops", "password": password}, REMOTE_ADDR=ip, headers=headers)


def logged_in(client) -> bool:
    return "_auth_user_id" in client.session


def fail_until_locked(client, settings) -> list[int]:
    return [log_in(client, f"wrong-{n}").status_code for n in range(settings.AXES_FAILURE_LIMIT)]


def test_the_attempt_after_the_failure_limit_is_refused_even_with_the_right_password(client, ops, settings):
    statuses = fail_until_locked(client, settings)
    assert statuses[:-1] == [200] * (settings.AXES_FAILURE_LIMIT - 1) and statuses[-1] == 429
    response = log_in(client, "the-right-password")
    assert response.status_code == 429 and not logged_in(client)
    assert client.get("/admin/").status_code == 302


def test_the_lockout_is_per_username_and_ip_address(client, ops, settings):
    fail_until_locked(client, settings)
    assert log_in(client, "the-right-password", ip="10.0.0.2").status_code == 302 and logged_in(client)


def test_the_lockout_ends_after_the_cool_off_time(client, ops, settings):
    fail_until_locked(client, settings)
    attempt = AccessAttempt.objects.get(username="ops")
    attempt.attempt_time -= settings.AXES_COOLOFF_TIME
    attempt.save()
    assert log_in(client, "the-right-password").status_code == 302 and logged_in(client)


def test_a_successful_login_resets_the_failure_count(client, ops, settings):
    for n in range(settings.AXES_FAILURE_LIMIT - 1):
        log_in(client, f"wrong-{n}")
    assert log_in(client, "the-right-password").status_code == 302
    client.logout()
    assert log_in(client, "wrong-again").status_code == 200
    assert log_in(client, "the-right-password").status_code == 302 and logged_in(client)


def test_behind_the_tls_proxy_the_lockout_counts_the_address_the_proxy_forwarded(client, ops, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}  # BEHIND_TLS_PROXY's default
    for n in range(settings.AXES_FAILURE_LIMIT):  # all through the proxy at 10.0.0.1, from 203.0.113.7
        log_in(client, f"wrong-{n}", forwarded="spoofed-by-the-client, 203.0.113.7")
    assert log_in(client, "the-right-password", forwarded="203.0.113.7").status_code == 429
    assert log_in(client, "the-right-password", forwarded="198.51.100.2").status_code == 302 and logged_in(client)
