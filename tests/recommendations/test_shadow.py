"""Shadow scoring off the response path: the bounded queue, the helper process at idle priority that scores
real requests into shadow impressions, and its lifecycle."""

import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection

from recommendations import shadow
from recommendations.models import Impression
from recommendations.serving import deployed
from registry.services import VersionInput, model_version_promote, model_version_register
from retraining.services.rollout import challenger_deploy
from tests.conftest import wait_until
from tests.recommendations.factories import store_history, train_and_register


class _Recorded:
    """A job that records that it ran (in this process only)."""

    ran = threading.Event()

    def run(self):
        _Recorded.ran.set()


class _Broken:
    def run(self):
        raise RuntimeError("challenger exploded")


@pytest.fixture
def fresh_shadow(monkeypatch):
    """No queue, sender or helper left from another test; the helper stopped afterwards."""
    monkeypatch.setattr(shadow, "_jobs", None)
    monkeypatch.setattr(shadow, "_helper", None)
    yield
    shadow._helper_stop()


def test_an_inline_shadow_job_that_fails_is_counted_and_never_raises(settings):
    settings.SHADOW_QUEUE_SIZE = 0
    before = shadow.stats["failed"]
    shadow.shadow_submit(_Broken())
    assert shadow.stats["failed"] == before + 1


def test_a_full_queue_drops_the_job_rather_than_block_the_request(settings, fresh_shadow, monkeypatch):
    settings.SHADOW_QUEUE_SIZE, settings.SHADOW_MAX_DELAY_SECONDS = 1, 5
    release = threading.Event()
    monkeypatch.setattr(shadow, "_helper_running", lambda: release.wait(10) and None)  # a helper that is stuck
    dropped = shadow.stats["dropped_full"]
    started = time.monotonic()
    for _ in range(6):
        shadow.shadow_submit(_Recorded())
    assert time.monotonic() - started < 1, "submitting never waits for the helper"
    assert shadow.stats["dropped_full"] >= dropped + 4
    release.set()


def test_a_job_that_waited_too_long_is_dropped_not_sent(settings, fresh_shadow, monkeypatch):
    settings.SHADOW_QUEUE_SIZE, settings.SHADOW_MAX_DELAY_SECONDS = 10, 0.2
    sent = []
    monkeypatch.setattr(shadow, "_helper_running", lambda: type("Helper", (), {"send": sent.append})())
    stale = shadow.stats["dropped_stale"]
    shadow._queue().put((time.time() - 1.0, _Recorded()))
    wait_until(lambda: shadow.stats["dropped_stale"] > stale, timeout=5, message="the stale job dropped")
    shadow.shadow_submit(_Recorded())
    wait_until(lambda: len(sent) == 1, timeout=5, message="a fresh job sent to the helper")


def test_the_helper_runs_at_idle_priority_and_exits_when_the_web_process_goes(settings, fresh_shadow):
    helper = shadow._helper_running()
    pid = helper.process.pid
    wait_until(lambda: os.sched_getscheduler(pid) == os.SCHED_IDLE or _nice(pid) == 19, timeout=30,
               message="the helper lowered its priority")
    helper._writer.close()  # as when the web process exits or is killed
    helper.process.join(timeout=30)
    assert helper.process.exitcode == 0


def _nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


@pytest.fixture
def committed_versions(django_db_blocker, tmp_path, settings):
    """History, v1 champion and v2 as a shadow challenger, committed (the helper process reads them over its
    own connection), and removed afterwards."""
    settings.MODEL_STORE = tmp_path / "store"
    settings.MODEL_POLL_THREAD, settings.MODEL_POLL_SECONDS, settings.IMPRESSION_FLUSH_SECONDS = False, 0, 0
    deployed.forget()
    with django_db_blocker.unblock():
        store_history()
        first = train_and_register(tmp_path)
        second = model_version_register(artifact_dir=tmp_path / "run", data=VersionInput(
            metrics=first.metrics, baseline_metrics=first.baseline_metrics, dataset_stats=first.dataset_stats,
            parameters=first.parameters, manifest=first.manifest))
        model_version_promote(version=first.version, actor="test")
        experiment = challenger_deploy(version=second.version, mode="shadow", traffic_percent=100, actor="test",
                                       reason="shadow helper test")
        yield first, second, experiment
        deployed.forget()
        call_command("flush", interactive=False, verbosity=0)


@pytest.mark.django_db(transaction=True)
def test_the_helper_process_scores_shadowed_requests_into_shadow_impressions(committed_versions, serve_client,
                                                                            settings, fresh_shadow):
    first, second, experiment = committed_versions
    settings.SHADOW_QUEUE_SIZE, settings.SHADOW_MAX_DELAY_SECONDS = 50, 60
    bodies = [serve_client.get(f"/api/v1/users/user-{n}/recommendations", {"k": 10}).json() for n in range(5)]
    assert {body["model_version"] for body in bodies} == {first.version}
    wait_until(lambda: Impression.objects.filter(arm="shadow").count() == 5, timeout=60,
               message="the helper scored every shadowed request")
    assert shadow._helper.process.pid != os.getpid() and shadow._helper.process.is_alive()
    for body in bodies:
        mirrored = Impression.objects.get(shadow_of=body["recommendation_id"])
        shown = Impression.objects.get(recommendation_id=body["recommendation_id"])
        assert (mirrored.routed_version, mirrored.experiment_id) == (second.version, experiment.pk)
        assert mirrored.items == shown.items, "the same trained model, the same request: the same list"
    assert connection.settings_dict["NAME"].startswith("test")
    assert multiprocessing.current_process().name == "MainProcess"
