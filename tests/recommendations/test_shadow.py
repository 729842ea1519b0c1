import sys
import threading
import time
from collections import deque

from recommendations import shadow
from recommendations.shadow import ShadowScorer
from tests.support.processes import wait_until


def started(runtime) -> ShadowScorer:
    """The runtime's shadow scorer, started with the test's settings (the runtime fixture stops it)."""
    runtime.shadow.start()
    return runtime.shadow


def test_an_inline_shadow_job_that_fails_is_counted_and_never_raises(settings, runtime):
    settings.SHADOW_QUEUE_SIZE = 0
    scorer = started(runtime)
    before = scorer.stats["failed"]

    def broken():
        raise RuntimeError("challenger exploded")

    scorer.submit(broken)
    assert scorer.stats["failed"] == before + 1


def test_queued_jobs_wait_for_an_idle_moment_and_stale_ones_are_dropped(settings, runtime):
    settings.SHADOW_QUEUE_SIZE, settings.SHADOW_MAX_DELAY_SECONDS, settings.SHADOW_MAX_UTILIZATION = 10, 0.3, 1.0
    scorer = started(runtime)
    ran = threading.Event()
    dropped = scorer.stats["dropped_stale"]
    with scorer.live_request():
        scorer.submit(ran.set)
        wait_until(lambda: scorer.stats["dropped_stale"] > dropped, timeout=5, message="the stale job dropped")
    assert not ran.is_set(), "a job must not run while a live request is in progress"
    scorer.submit(ran.set)
    assert ran.wait(5), "once the process is idle the job runs"


def test_a_full_queue_drops_the_job_rather_than_block_the_request(settings, runtime):
    settings.SHADOW_QUEUE_SIZE, settings.SHADOW_MAX_DELAY_SECONDS, settings.SHADOW_MAX_UTILIZATION = 1, 5, 1.0
    scorer = started(runtime)
    dropped = scorer.stats["dropped_full"]
    with scorer.live_request():
        for _ in range(5):
            scorer.submit(lambda: None)
    assert scorer.stats["dropped_full"] >= dropped + 3


def test_a_loaded_process_sheds_shadow_work_at_once(settings, runtime):
    settings.SHADOW_QUEUE_SIZE, settings.SHADOW_MAX_DELAY_SECONDS, settings.SHADOW_MAX_UTILIZATION = 10, 0.3, 0.5
    scorer = started(runtime)
    scorer._recent, scorer._recent_seconds = deque([(time.monotonic() - 0.05, 0.8)]), 0.8  # 80% of the last second busy
    ran = threading.Event()
    dropped = scorer.stats["dropped_loaded"]
    scorer.submit(ran.set)
    assert scorer.stats["dropped_loaded"] == dropped + 1 and scorer._jobs.empty(), "not even queued"
    time.sleep(0.1)
    assert not ran.is_set()


def test_utilization_counts_only_the_last_second():
    scorer = ShadowScorer()
    with scorer.live_request():
        time.sleep(0.05)
    assert 0.04 <= scorer.utilization() <= 0.5
    scorer._recent, scorer._recent_seconds = deque([(time.monotonic() - 2.0, 0.9)]), 0.9
    assert scorer.utilization() == 0.0 and not scorer._recent


def test_the_interpreter_switch_interval_is_restored_after_a_job(settings, runtime):
    settings.SHADOW_QUEUE_SIZE = 0
    before, during = sys.getswitchinterval(), []
    started(runtime).submit(lambda: during.append(sys.getswitchinterval()))
    assert during == [shadow.JOB_SWITCH_INTERVAL_SECONDS] and sys.getswitchinterval() == before


def test_a_job_gives_way_to_a_live_request_at_its_next_checkpoint(settings, runtime):
    settings.SHADOW_QUEUE_SIZE, settings.SHADOW_MAX_UTILIZATION = 10, 1.0
    scorer = started(runtime)
    running, release, finished = threading.Event(), threading.Event(), threading.Event()

    def job():
        running.set()
        release.wait(5)
        scorer.checkpoint()
        finished.set()

    preempted = scorer.stats["preempted"]
    time.sleep(shadow.IDLE_SECONDS * 2)
    scorer.submit(job)
    assert running.wait(5)
    with scorer.live_request():
        release.set()
        wait_until(lambda: scorer.stats["preempted"] > preempted, timeout=5, message="the job preempted")
    assert not finished.is_set()


def test_every_request_is_live_from_the_top_of_the_middleware_stack(runtime):
    from django.conf import settings as django_settings

    assert django_settings.MIDDLEWARE[0] == "recommendations.shadow.LiveRequestMiddleware"
    seen = []
    middleware = shadow.LiveRequestMiddleware(lambda request: seen.append(runtime.shadow._busy) or "response")
    assert middleware(object()) == "response"
    assert seen and seen[0] >= 1 and runtime.shadow._busy == 0


def test_a_queued_job_is_shed_when_the_process_becomes_loaded(settings, runtime):
    settings.SHADOW_QUEUE_SIZE, settings.SHADOW_MAX_DELAY_SECONDS, settings.SHADOW_MAX_UTILIZATION = 10, 30, 0.5
    scorer = started(runtime)
    ran = threading.Event()
    dropped = scorer.stats["dropped_loaded"]
    with scorer.live_request():
        scorer.submit(ran.set)  # queued: the process was not loaded yet
        time.sleep(0.7)  # now it is: 70% of the last second in this request
    wait_until(lambda: scorer.stats["dropped_loaded"] > dropped, timeout=5, message="the queued job shed")
    assert not ran.is_set()
