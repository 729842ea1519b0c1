import sys
import threading
import time
from collections import deque

from recommendations import shadow
from tests.conftest import wait_until


def test_an_inline_shadow_job_that_fails_is_counted_and_never_raises(settings):
    settings.SHADOW_QUEUE_SIZE = 0
    before = shadow.stats["failed"]

    def broken():
        raise RuntimeError("challenger exploded")

    shadow.shadow_submit(broken)
    assert shadow.stats["failed"] == before + 1


def test_queued_jobs_wait_for_an_idle_moment_and_stale_ones_are_dropped(settings, monkeypatch):
    settings.SHADOW_QUEUE_SIZE, settings.SHADOW_MAX_DELAY_SECONDS, settings.SHADOW_MAX_UTILIZATION = 10, 0.3, 1.0
    monkeypatch.setattr(shadow, "_jobs", None)
    ran = threading.Event()
    dropped = shadow.stats["dropped_stale"]
    with shadow.live_request():
        shadow.shadow_submit(ran.set)
        wait_until(lambda: shadow.stats["dropped_stale"] > dropped, timeout=5, message="the stale job dropped")
    assert not ran.is_set(), "a job must not run while a live request is in progress"
    shadow.shadow_submit(ran.set)
    assert ran.wait(5), "once the process is idle the job runs"


def test_a_full_queue_drops_the_job_rather_than_block_the_request(settings, monkeypatch):
    settings.SHADOW_QUEUE_SIZE, settings.SHADOW_MAX_DELAY_SECONDS, settings.SHADOW_MAX_UTILIZATION = 1, 5, 1.0
    monkeypatch.setattr(shadow, "_jobs", None)
    dropped = shadow.stats["dropped_full"]
    with shadow.live_request():
        for _ in range(5):
            shadow.shadow_submit(lambda: None)
    assert shadow.stats["dropped_full"] >= dropped + 3


def test_a_loaded_process_sheds_shadow_work_at_once(settings, monkeypatch):
    settings.SHADOW_QUEUE_SIZE, settings.SHADOW_MAX_DELAY_SECONDS, settings.SHADOW_MAX_UTILIZATION = 10, 0.3, 0.5
    monkeypatch.setattr(shadow, "_jobs", None)
    monkeypatch.setattr(shadow, "_recent", deque([(time.monotonic() - 0.05, 0.8)]))  # 80% of the last second busy
    monkeypatch.setattr(shadow, "_recent_seconds", 0.8)
    ran = threading.Event()
    dropped = shadow.stats["dropped_loaded"]
    shadow.shadow_submit(ran.set)
    assert shadow.stats["dropped_loaded"] == dropped + 1 and shadow._jobs is None, "not even queued"
    time.sleep(0.1)
    assert not ran.is_set()


def test_utilization_counts_only_the_last_second(monkeypatch):
    monkeypatch.setattr(shadow, "_recent", deque())
    monkeypatch.setattr(shadow, "_recent_seconds", 0.0)
    with shadow.live_request():
        time.sleep(0.05)
    assert 0.04 <= shadow._utilization() <= 0.5
    monkeypatch.setattr(shadow, "_recent", deque([(time.monotonic() - 2.0, 0.9)]))
    monkeypatch.setattr(shadow, "_recent_seconds", 0.9)
    assert shadow._utilization() == 0.0 and not shadow._recent


def test_the_interpreter_switch_interval_is_restored_after_a_job(settings):
    settings.SHADOW_QUEUE_SIZE = 0
    before, during = sys.getswitchinterval(), []
    shadow.shadow_submit(lambda: during.append(sys.getswitchinterval()))
    assert during == [shadow.JOB_SWITCH_INTERVAL_SECONDS] and sys.getswitchinterval() == before


def test_a_job_gives_way_to_a_live_request_at_its_next_checkpoint(settings, monkeypatch):
    settings.SHADOW_QUEUE_SIZE, settings.SHADOW_MAX_UTILIZATION = 10, 1.0
    monkeypatch.setattr(shadow, "_jobs", None)
    monkeypatch.setattr(shadow, "_recent", deque())
    monkeypatch.setattr(shadow, "_recent_seconds", 0.0)
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def job():
        started.set()
        release.wait(5)
        shadow.shadow_checkpoint()
        finished.set()

    preempted = shadow.stats["preempted"]
    time.sleep(shadow.IDLE_SECONDS * 2)
    shadow.shadow_submit(job)
    assert started.wait(5)
    with shadow.live_request():
        release.set()
        wait_until(lambda: shadow.stats["preempted"] > preempted, timeout=5, message="the job preempted")
    assert not finished.is_set()


def test_every_request_is_live_from_the_top_of_the_middleware_stack():
    from django.conf import settings as django_settings

    assert django_settings.MIDDLEWARE[0] == "recommendations.shadow.LiveRequestMiddleware"
    seen = []
    middleware = shadow.LiveRequestMiddleware(lambda request: seen.append(shadow._busy) or "response")
    assert middleware(object()) == "response"
    assert seen and seen[0] >= 1 and shadow._busy == 0


def test_a_queued_job_is_shed_when_the_process_becomes_loaded(settings, monkeypatch):
    settings.SHADOW_QUEUE_SIZE, settings.SHADOW_MAX_DELAY_SECONDS, settings.SHADOW_MAX_UTILIZATION = 10, 30, 0.5
    monkeypatch.setattr(shadow, "_jobs", None)
    monkeypatch.setattr(shadow, "_recent", deque())
    monkeypatch.setattr(shadow, "_recent_seconds", 0.0)
    ran = threading.Event()
    dropped = shadow.stats["dropped_loaded"]
    with shadow.live_request():
        shadow.shadow_submit(ran.set)  # queued: the process was not loaded yet
        time.sleep(0.7)  # now it is: 70% of the last second in this request
    wait_until(lambda: shadow.stats["dropped_loaded"] > dropped, timeout=5, message="the queued job shed")
    assert not ran.is_set()
