"""Shadow scoring in a helper process, at the lowest CPU priority.

A shadowed request's job (a small picklable object with a `run()` method: the challenger's version and the
request as the champion saw it) is put on a bounded queue by the web process and the response goes on its
way. A sender thread forwards each job over a pipe to a helper process that the web process starts on first
use (multiprocessing, spawn). The helper runs with SCHED_IDLE (else nice 19), so it only gets CPU time that
the web processes, PostgreSQL and everything else leave idle, and it never holds the web process's
interpreter: on an idle core it scores every request; on a loaded machine it falls behind, the pipe and the
queue fill up and jobs are dropped (counted), and the live requests do not wait for it. Jobs older than
SHADOW_MAX_DELAY_SECONDS are dropped too. The helper loads the challenger itself (from the registry and the
compiled-ranker cache), keeps its own item snapshot, scores exactly as serving does and logs the shadow
impression; its failures are logged there and never reach a response. It exits when the web process's end
of the pipe closes. SHADOW_QUEUE_SIZE 0 runs jobs inline in the web process (tests).

(Two designs were measured and dropped: a niced Celery worker — publishing each request cost the web
process more than scoring it, and across sessions the scheduler's autogroups ignore nice — and scoring in
the web process's idle time, which shared the interpreter with live requests and showed in the tail.)"""

import logging
import multiprocessing
import os
import queue
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Protocol

from django.conf import settings
from django.db import connection

logger = logging.getLogger(__name__)
stats: Counter = Counter()  # this process's: submitted, dropped_full, dropped_stale, sent, failed, completed, helpers_started
_jobs: "queue.Queue | None" = None
_helper: "_Helper | None" = None
_lock = threading.Lock()


class ShadowJob(Protocol):
    def run(self) -> None: ...


def shadow_submit(job: ShadowJob) -> None:
    """Hand a job to the helper (never blocks: a full queue drops it), or run it now when SHADOW_QUEUE_SIZE
    is 0. Never raises."""
    stats["submitted"] += 1
    if settings.SHADOW_QUEUE_SIZE <= 0:
        _run(job)
        return
    try:
        _queue().put_nowait((time.time(), job))
    except queue.Full:
        stats["dropped_full"] += 1


def _run(job: ShadowJob) -> None:
    try:
        job.run()
        stats["completed"] += 1
    except Exception:
        stats["failed"] += 1
        logger.exception("shadow scoring failed (the response was not affected)")


def _queue() -> queue.Queue:
    global _jobs
    if _jobs is None:
        with _lock:
            if _jobs is None:
                _jobs = queue.Queue(maxsize=settings.SHADOW_QUEUE_SIZE)
                threading.Thread(target=_send_forever, args=(_jobs,), name="shadow-sender", daemon=True).start()
    return _jobs


def _send_forever(jobs: queue.Queue) -> None:
    while True:
        submitted, job = jobs.get()
        if time.time() - submitted > settings.SHADOW_MAX_DELAY_SECONDS:
            stats["dropped_stale"] += 1
            continue
        try:
            _helper_running().send((submitted, job))  # blocks while the helper's pipe is full
            stats["sent"] += 1
        except Exception:
            stats["failed"] += 1
            logger.exception("could not hand a job to the shadow helper; it is restarted for the next one")
            _helper_stop()


class _Helper:
    def __init__(self):
        context = multiprocessing.get_context("spawn")
        reader, self._writer = context.Pipe(duplex=False)
        self.process = context.Process(
            target=helper_main, name="shadow-helper", daemon=True,
            args=(reader, connection.settings_dict["NAME"], str(settings.MODEL_STORE)),
        )
        self.process.start()
        reader.close()  # the helper holds the only reader: it sees EOF when this process goes
        stats["helpers_started"] += 1

    def send(self, message) -> None:
        if not self.process.is_alive():
            raise RuntimeError(f"the shadow helper exited with code {self.process.exitcode}")
        self._writer.send(message)

    def stop(self) -> None:
        self._writer.close()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()


def _helper_running() -> _Helper:
    global _helper
    if _helper is None:
        _helper = _Helper()
    return _helper


def _helper_stop() -> None:
    global _helper
    helper, _helper = _helper, None
    if helper is not None:
        try:
            helper.stop()
        except Exception:
            logger.exception("could not stop the shadow helper")


def helper_main(reader, database_name: str, model_store: str) -> None:
    """The helper process: idle priority, the web process's database and model store, then jobs until
    the pipe closes."""
    _lowest_priority()
    import django

    django.setup()
    from django.conf import settings as helper_settings

    helper_settings.DATABASES["default"]["NAME"] = database_name  # before the first query (a test's database too)
    helper_settings.MODEL_STORE = Path(model_store)
    from recommendations.services.impressions import impressions_flush

    while True:
        try:
            submitted, job = reader.recv()
        except (EOFError, OSError):
            break
        if time.time() - submitted > helper_settings.SHADOW_MAX_DELAY_SECONDS:
            stats["dropped_stale"] += 1
            continue
        _run(job)
    impressions_flush()


def _lowest_priority() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(19)
