"""Per-stage wall time, CPU time and peak memory of a training run, logged as each stage starts and ends."""

from __future__ import annotations

import logging
import resource
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class Stages:
    """Each stage's wall time, the process's CPU time in it (all its threads: on a shared machine a steadier
    measure of the work than wall time) and the process's peak RSS after it, logged at INFO on this module's logger
    (retraining.services.training forwards those lines to a run's log)."""

    timings_s: dict[str, float] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        started, cpu_started = time.perf_counter(), time.process_time()
        logger.info("[train] %s ...", name)
        yield
        self.timings_s[name] = round(time.perf_counter() - started, 3)
        self.cpu_s[name] = round(time.process_time() - cpu_started, 3)
        self.peak_memory_mb[name] = round(peak_memory_mb(), 1)
        logger.info(
            "[train] %s done in %.2f s, %.2f CPU s (peak %.0f MB)",
            name,
            self.timings_s[name],
            self.cpu_s[name],
            self.peak_memory_mb[name],
        )
