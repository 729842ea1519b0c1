"""The process runtime: one object holds what a process keeps between requests, a forked child builds its own,
its threads run only while it is started, and its counters are one plain dict."""

import collections
import importlib
import os
import pkgutil
import queue
import subprocess
import sys
import threading
import uuid
import weakref
from pathlib import Path

import pytest
from django.utils import timezone

import recommendations
from recommendations.models import EndUser, Impression
from recommendations.process_cache import ProcessCache
from recommendations.runtime import ServingRuntime, process_runtime
from recommendations.services.impressions import ImpressionRow

THREAD_NAMES = {"serving-poller", "impression-flusher", "shadow-scorer"}
PROCESS_STATE = (
    ProcessCache,
    ServingRuntime,
    threading.Thread,
    threading.Event,
    type(threading.Lock()),
    type(threading.RLock()),
    queue.Queue,
    collections.deque,
    collections.Counter,
    weakref.WeakSet,
)


def _recommendations_modules():
    for info in pkgutil.walk_packages(recommendations.__path__, prefix="recommendations."):
        if ".migrations" not in info.name and ".management" not in info.name:
            yield importlib.import_module(info.name)


def _running(names=THREAD_NAMES) -> set[str]:
    return {thread.name for thread in threading.enumerate() if thread.name in names}


def test_no_module_of_recommendations_holds_per_process_state_of_its_own():
    found = []
    for module in _recommendations_modules():
        found += [
            f"{module.__name__}.{name}" for name, value in vars(module).items() if isinstance(value, PROCESS_STATE)
        ]
        source = Path(module.__file__).read_text()
        found += [
            f"{module.__name__}: a global statement"
            for line in source.splitlines()
            if line.strip().startswith("global ")
        ]
    assert found == []


def test_a_process_gets_the_same_runtime_each_time_it_asks(runtime):
    assert process_runtime() is runtime and process_runtime() is process_runtime()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_builds_a_runtime_of_its_own(runtime):
    runtime.verified_keys.update({b"parent": "a key the parent verified"})
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report and leave without running any of pytest's teardown
        own = process_runtime()
        answer = own is not runtime and own.pid == os.getpid() and own.verified_keys.get(b"parent", ttl=60) is None
        os.write(write, b"1" if answer else b"0")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.waitpid(child, 0)
    assert answer == b"1", "the child built its own runtime, without the parent's caches"
    assert process_runtime() is runtime, "the parent keeps its own"


def test_no_thread_starts_on_first_use_only_when_the_runtime_is_started_and_it_stops_with_it(settings, runtime):
    settings.SHADOW_QUEUE_SIZE, settings.IMPRESSION_FLUSH_SECONDS = 5, 60
    ran = threading.Event()
    runtime.shadow.submit(ran.set)
    assert ran.is_set(), "a runtime that was not started scores shadows inline"
    assert _running() == set()
    runtime.start()
    assert _running() == {"impression-flusher", "shadow-scorer"}  # MODEL_POLL_THREAD, FOLD_SWEEP_SECONDS: 0 in tests
    runtime.stop()
    assert _running() == set()


@pytest.mark.django_db
def test_stopping_the_runtime_writes_the_buffered_impressions(settings, runtime):
    settings.IMPRESSION_FLUSH_SECONDS = 60
    user = EndUser.objects.create(external_id="someone")
    runtime.start()
    runtime.impressions.log(
        ImpressionRow(uuid.uuid4(), user.pk, timezone.now(), None, None, "popular", "champion", None, None, [], [])
    )
    assert not Impression.objects.exists() and runtime.counters()["impressions_buffered"] == 1
    runtime.stop()
    assert Impression.objects.count() == 1 and runtime.counters()["impressions_written"] == 1


def test_the_counters_are_one_plain_dict_of_this_processs_counts(settings, runtime):
    settings.SHADOW_QUEUE_SIZE = 0

    def broken():
        raise RuntimeError("challenger exploded")

    runtime.shadow.submit(broken)
    runtime.verified_keys.update({b"digest": "a key"})
    counters = runtime.counters()
    assert type(counters) is dict
    assert counters["shadow_submitted"] == counters["shadow_failed"] == 1 and counters["verified_keys_cached"] == 1
    assert counters["champion_version"] is None and counters["throttle_cache_open"] is False
    assert ServingRuntime().counters()["verified_keys_cached"] == 0, "another runtime counts its own"


def test_the_trainer_loads_models_without_importing_the_web_runtime():
    code = (
        "import django, sys; django.setup(); import recommendations.serving.loading; "
        "print(sorted(m for m in sys.modules if m.startswith(('recommendations.serving.', 'recommendations.shadow', "
        "'recommendations.services.impressions'))))"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "recsite.settings_test"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "['recommendations.serving.loading']"
