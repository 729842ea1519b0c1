"""The closed loop on real processes: gunicorn, a Celery worker, a training worker and beat on the
configured database and broker (PostgreSQL and Redis in CI), a synthetic timeline with a drift point
replayed through the HTTP API."""

import json
import re
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from django.core.management import call_command

from recommendations.models import Impression, Interaction
from recommendations.services.api_keys import api_key_create
from recommendations.services.synthetic import synthetic_dataset_write
from registry.models import DeploymentChange, Experiment, ModelVersion
from retraining.models import IN_FLIGHT, TrainingRun, TriggerEvaluation
from retraining.services.policy import policy_active
from retraining.services.replay import replay_run
from tests.support.processes import start_process, stop_process, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.worker, pytest.mark.django_db(transaction=True)]
BIN = Path(sys.executable).parent
MOVIELENS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-latest-small"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str, key: str, method: str = "GET", body: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Api-Key {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {}
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}


@pytest.fixture
def live_system(tmp_path, settings):
    """Web, worker, trainer and beat as separate processes on the test database."""
    settings.MODEL_STORE, settings.REPLAY_CLOCK_ENABLED = tmp_path / "models", True
    env = {
        "MODEL_STORE": str(settings.MODEL_STORE),
        "MODEL_POLL_SECONDS": "0.5",
        "DEBUG": "false",
        "REPLAY_CLOCK_ENABLED": "1",
    }
    port = free_port()
    commands = {
        "web": [str(BIN / "gunicorn"), "recsite.wsgi:application", "--workers", "2", "--bind", f"127.0.0.1:{port}"],
        "worker": [
            str(BIN / "celery"),
            "-A",
            "recsite",
            "worker",
            "-Q",
            "default",
            "-c",
            "1",
            "-n",
            f"e2e-w-{port}@%h",
            "--loglevel",
            "INFO",
        ],
        "trainer": [
            str(BIN / "celery"),
            "-A",
            "recsite",
            "worker",
            "-Q",
            "training",
            "-c",
            "1",
            "--max-tasks-per-child",
            "1",
            "-n",
            f"e2e-t-{port}@%h",
            "--loglevel",
            "INFO",
        ],
        "beat": [
            str(BIN / "celery"),
            "-A",
            "recsite",
            "beat",
            "--scheduler",
            "django_celery_beat.schedulers:DatabaseScheduler",
            "-s",
            str(tmp_path / "beat-schedule"),
            "--loglevel",
            "INFO",
        ],
    }
    processes = {name: start_process(args, tmp_path / f"{name}.log", **env) for name, args in commands.items()}
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: get_json(f"{url}/api/v1/health", "")[0] == 200, 60, message="the web server")
        yield url, processes, tmp_path
    finally:
        for name, process in processes.items():
            stop_process(process)
            print(f"--- {name} log (tail) ---\n" + (tmp_path / f"{name}.log").read_text(errors="replace")[-3000:])


class Watcher(threading.Thread):
    """Asks for one user's recommendations every 0.2 s and remembers every answer."""

    def __init__(self, url: str, key: str, user: str):
        super().__init__(daemon=True)
        self.url, self.key, self.user = url, key, user
        self.answers: list[tuple[int, int | None]] = []
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            status, body = get_json(f"{self.url}/api/v1/users/{self.user}/recommendations?k=5", self.key)
            self.answers.append((status, body.get("model_version")))
            time.sleep(0.2)

    def versions(self) -> list[int]:
        seen = []
        for _, version in self.answers:
            if version is not None and (not seen or seen[-1] != version):
                seen.append(version)
        return seen


def test_the_loop_retrains_on_its_own_gates_promotes_and_rolls_back_without_losing_events(live_system):
    url, _processes, folder = live_system
    dataset = folder / "timeline"
    synthetic_dataset_write(output=dataset, users=300, items=400, events=20_000, drift_at=0.75, seed=3)
    policy = policy_active()
    policy.time_enabled = False
    policy.volume_min_events = 1500
    policy.cooldown_minutes = 60 * 24
    policy.drift_window_min_events = 2000
    # The loop's mechanics are under test, not the model: any candidate that beats most-popular is promoted.
    policy.gate_min_relative_gain, policy.gate_guardrail_tolerance, policy.gate_bootstrap_tolerance = -1.0, 1.0, 1.0
    policy.save()
    _, key = api_key_create(name="e2e", scopes=["admin"])
    watcher = Watcher(url, key, user="1")
    watcher.start()
    started = time.monotonic()
    report = replay_run(path=dataset, start_fraction=0.6, speed=150_000, api_url=url, api_key=key, check_every_s=2)
    # Beat keeps checking after the stream ends (the clock runs on): wait for the loop to settle.
    automatic = TrainingRun.objects.filter(trigger__in=["volume", "drift"]).exclude(status="failed")
    try:
        wait_until(
            lambda: (
                automatic.filter(status__in=["promoted", "rejected"]).exists()
                and not TrainingRun.objects.filter(status__in=IN_FLIGHT).exists()
            ),
            180,
            message="an automatic run",
        )
    except AssertionError as timeout:
        recent = list(TriggerEvaluation.objects.values_list("fired", "action")[:5])
        runs = list(TrainingRun.objects.values_list("pk", "trigger", "status", "error"))
        raise AssertionError(f"{timeout}; latest trigger evaluations {recent}; runs {runs}") from timeout
    time.sleep(2)
    decided = automatic.exclude(gate={}).first()
    assert decided.gate["numbers"]["candidate"]["ndcg@10"] is not None and decided.gate["reasons"]
    assert decided.status in ("promoted", "rejected")
    assert Interaction.objects.count() == report.imported_events + report.acknowledged_events
    assert report.acknowledged_events == report.sent_events and report.failed_requests == 0

    # At this scale the ranker may not beat most-popular early on, so the gate may promote fewer than the
    # two versions a rollback needs; an operator then promotes through the API, under the same load.
    while DeploymentChange.objects.filter(action="promote").count() < 2:
        spare = ModelVersion.objects.exclude(status__in=["active", "failed", "training"]).order_by("-version").first()
        status, _ = get_json(f"{url}/api/v1/models/{spare.version}/promote", key, "POST", {"reason": "e2e operator"})
        assert status == 200
        wait_until(
            lambda v=spare.version: watcher.versions() and watcher.versions()[-1] == v,
            15,
            message="the promoted version",
        )
    champion = DeploymentChange.objects.filter(action="promote").order_by("created_at").last().to_version.version
    wait_until(lambda: watcher.versions() and watcher.versions()[-1] == champion, 15, message="the new champion served")
    assert len(watcher.versions()) >= 2, watcher.versions()

    status, change = get_json(f"{url}/api/v1/models/rollback", key, "POST", {"reason": "e2e"})
    assert status == 200 and change["from_version"] == champion
    wait_until(lambda: watcher.versions()[-1] == change["to_version"], 15, message="the rolled-back version served")
    watcher.stopped.set()
    watcher.join()
    assert {status for status, _ in watcher.answers} == {200}
    assert time.monotonic() - started < 300
    call_command("export_model_comparison", "--output", str(folder / "MODEL_COMPARISON.md"))
    rows = [
        line for line in (folder / "MODEL_COMPARISON.md").read_text().splitlines() if re.match(r"^\| (\*\*)?v\d+", line)
    ]
    assert len(rows) == TrainingRun.objects.exclude(model_version=None).count()


@pytest.mark.skipif(not (MOVIELENS / "ratings.csv").exists(), reason=f"needs ml-latest-small at {MOVIELENS}")
def test_a_replay_with_a_canary_rollout_sends_the_gated_candidate_into_a_judged_canary(live_system):
    """replay --rollout canary on real processes and the last 10% of ml-latest-small: the gate's candidate
    starts as a canary instead of being promoted, the web processes route its share of users to it, and
    beat's rollout check judges it."""
    url, _processes, _folder = live_system
    policy = policy_active()
    policy.time_enabled, policy.drift_enabled, policy.performance_enabled = False, False, False
    policy.volume_min_events, policy.cooldown_minutes = 1500, 0
    policy.gate_min_relative_gain, policy.gate_guardrail_tolerance, policy.gate_bootstrap_tolerance = -1.0, 1.0, 1.0
    policy.canary_steps, policy.rollout_min_step_minutes = [30, 100], 60
    policy.save()
    _, key = api_key_create(name="e2e-canary", scopes=["admin"])
    report = replay_run(
        path=MOVIELENS,
        start_fraction=0.9,
        speed=60_000,
        api_url=url,
        api_key=key,
        check_every_s=2,
        rollout="canary",
        rollout_min_impressions=50,
    )
    wait_until(lambda: Experiment.objects.exclude(last_report={}).exists(), 60, message="a judged experiment")
    experiment = Experiment.objects.order_by("id").first()
    assert experiment.mode == "canary" and experiment.started_by == "gate"
    assert TrainingRun.objects.filter(status="challenger", model_version=experiment.version).exists()
    routed = Impression.objects.filter(experiment_id=experiment.pk, arm="challenger")
    assert routed.exists(), [
        (
            r.pk,
            r.trigger,
            r.status,
            str(r.data_until),
            r.created_at.strftime("%H:%M:%S"),
            r.finished_at and r.finished_at.strftime("%H:%M:%S"),
            (r.gate.get("failures") or [""])[0][:80],
        )
        for r in TrainingRun.objects.order_by("pk")
    ]
    assert set(routed.values_list("routed_version", flat=True)) == {experiment.version.version}
    assert set(experiment.last_report["arms"]) == {"champion", "challenger"}
    assert report.acknowledged_events == report.sent_events and report.failed_requests == 0
    status, deployments = get_json(f"{url}/api/v1/deployments", key)
    assert status == 200 and deployments["champion"]["version"] is not None
