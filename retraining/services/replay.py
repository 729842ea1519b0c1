"""Replaying a real timeline through the running system.

The first part of a dataset is imported and v1 is trained and promoted; the system clock is then
anchored at the split point and runs `speed` times faster than real time, and the rest of the events are
sent in timestamp order as their simulated time comes — through the HTTP API (`api_url`) or through the
same services the API calls. Quiet stretches longer than `max_idle_s` of real time are skipped by moving
the clock forward. Triggers are evaluated by Celery beat and runs trained by the worker on their own:
nothing here starts a retrain after v1. Before a user's events, the replay asks for that user's
recommendations (once per simulated session) and sends the events with that list's recommendation_id,
so the online hit rate of each version is measured. With `rollout` (shadow, ab or canary) the policy sends
each candidate that passes the gate into that kind of experiment instead of promoting it, and beat's
rollout check judges it on the replayed traffic."""

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TextIO

from recommendations.clock import clock_set, replay_clock_check, system_now
from recommendations.models import Interaction
from recommendations.runtime import process_runtime
from recommendations.services.events import EventInput, event_ingest
from recommendations.services.movielens import EVENT_ID_NAMESPACE, movielens_import, movielens_ratings
from recommendations.serving.recommend import recommendations_for
from recsite.errors import ApplicationError
from retraining.services.pipeline import training_run_process
from retraining.services.policy import policy_active
from retraining.services.runs import training_run_request
from retraining.services.schedule import periodic_tasks_setup

SESSION = timedelta(minutes=30)  # a user's events within this of the list they were shown are attributed to it


@dataclass
class ReplayReport:
    imported_events: int = 0
    sent_events: int = 0
    acknowledged_events: int = 0
    duplicates: int = 0
    recommendation_requests: int = 0
    failed_requests: int = 0
    clock_jumps: int = 0
    clock_holds: int = 0
    split_time: datetime | None = None
    end_time: datetime | None = None
    versions_seen: list[int | None] = field(default_factory=list)


class _Client:
    """Events and recommendations through HTTP or through the services, with the same results."""

    def __init__(self, api_url: str | None, api_key: str | None, report: ReplayReport):
        self.api_url, self.api_key, self.report = (api_url or "").rstrip("/"), api_key, report

    def recommend(self, user_id: str) -> tuple[str | None, int | None]:
        self.report.recommendation_requests += 1
        if not self.api_url:
            result = recommendations_for(runtime=process_runtime(), user_external_id=user_id, k=10)
            return str(result.recommendation_id), result.model_version
        body = self._call("GET", f"/api/v1/users/{urllib.request.quote(user_id)}/recommendations?k=10")
        return (body["recommendation_id"], body["model_version"]) if body else (None, None)

    def send(self, events: list[EventInput]) -> None:
        self.report.sent_events += len(events)
        if not self.api_url:
            result = event_ingest(events=events)
            accepted, duplicates = result.accepted, result.duplicates
        else:
            body = self._call("POST", "/api/v1/events", {"events": [_as_json(e) for e in events]}, retries=5)
            if body is None:
                return
            accepted, duplicates = body["accepted"], body["duplicates"]
        self.report.acknowledged_events += accepted
        self.report.duplicates += duplicates

    def _call(self, method: str, path: str, payload: dict | None = None, retries: int = 1) -> dict | None:
        data = json.dumps(payload).encode() if payload is not None else None
        headers = {"Authorization": f"Api-Key {self.api_key}", "Content-Type": "application/json"}
        for attempt in range(retries):
            request = urllib.request.Request(self.api_url + path, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return json.loads(response.read())
            except (urllib.error.URLError, TimeoutError, ConnectionError):
                self.report.failed_requests += 1
                time.sleep(0.5 * (attempt + 1))
        return None


def _as_json(event: EventInput) -> dict:
    return {
        "event_id": str(event.event_id),
        "user_id": event.user_id,
        "item_id": event.item_id,
        "event_type": event.event_type,
        "value": event.value,
        "timestamp": event.timestamp.isoformat(),
        "recommendation_id": str(event.recommendation_id) if event.recommendation_id else None,
    }


def replay_run(
    *,
    path: Path,
    start_fraction: float,
    speed: float,
    api_url: str | None = None,
    api_key: str | None = None,
    check_every_s: int = 2,
    max_idle_s: float = 1.0,
    batch_size: int = 500,
    out: TextIO | None = None,
    on_tick: Callable[[ReplayReport], None] | None = None,
    rollout: str | None = None,
    rollout_min_impressions: int = 200,
) -> ReplayReport:
    replay_clock_check()
    if not 0 < start_fraction < 1:
        raise ApplicationError("start_fraction must be between 0 and 1.")
    if speed <= 0:
        raise ApplicationError("speed must be positive.")
    if Interaction.objects.exists():
        raise ApplicationError("replay needs an empty database: it imports the first part of the timeline itself.")
    say = (lambda text: (out.write(text + "\n"), out.flush())) if out else (lambda text: None)
    ratings = movielens_ratings(path=path)
    if len(ratings) < 10:
        raise ApplicationError(f"{path} holds too few ratings to replay.")
    split = int(len(ratings) * start_fraction)
    report = ReplayReport(split_time=ratings[split].moment, end_time=ratings[-1].moment)
    report.imported_events = movielens_import(
        path=path, progress=out is not None, before=report.split_time
    ).events_imported
    say(f"imported {report.imported_events:,} events before {report.split_time:%Y-%m-%d %H:%M}; training v1")
    clock_set(simulated_now=report.split_time, speed=speed)
    run = training_run_request(trigger="manual", requested_by="replay", data_until=report.split_time, enqueue=False)
    training_run_process(run_id=run.pk)
    run.refresh_from_db()
    say(f"v1: run {run.pk} {run.status} ({'; '.join(run.gate.get('reasons', []))})")
    if rollout:
        _policy_rollout_set(rollout, rollout_min_impressions)
        say(
            f"gated candidates will start as {rollout} challengers "
            f"(at least {rollout_min_impressions} lists per arm and step)"
        )
    periodic_tasks_setup(check_every_seconds=check_every_s, rollout_every_seconds=check_every_s)
    clock_set(simulated_now=report.split_time, speed=speed)
    _stream(ratings[split:], _Client(api_url, api_key, report), report, speed, max_idle_s, batch_size, say, on_tick)
    return report


def _policy_rollout_set(rollout: str, min_impressions: int) -> None:
    policy = policy_active()
    policy.candidate_rollout, policy.rollout_min_impressions = rollout, min_impressions
    policy.full_clean()
    policy.save()


def _stream(
    ratings, client: _Client, report: ReplayReport, speed: float, max_idle_s: float, batch_size: int, say, on_tick
) -> None:
    sessions: dict[str, tuple[datetime, str | None]] = {}
    position, total, last_said = 0, len(ratings), time.monotonic()
    while position < total:
        now = system_now()
        if (now - ratings[position].moment).total_seconds() > speed * max_idle_s:
            # Sending fell behind the clock: hold the clock at the next event rather than let it run away.
            clock_set(simulated_now=ratings[position].moment, speed=speed)
            report.clock_holds += 1
            now = ratings[position].moment
        due_end = position
        while due_end < total and ratings[due_end].moment <= now and due_end - position < batch_size:
            due_end += 1
        if due_end == position:
            wait = (ratings[position].moment - now).total_seconds() / speed
            if wait > max_idle_s:
                clock_set(simulated_now=ratings[position].moment, speed=speed)
                report.clock_jumps += 1
            else:
                time.sleep(min(wait, 0.2))
            continue
        batch = ratings[position:due_end]
        events = []
        for rating in batch:
            started, rec_id = sessions.get(rating.user_id, (None, None))
            if started is None or rating.moment - started > SESSION:
                rec_id, version = client.recommend(rating.user_id)
                report.versions_seen.append(version)
                sessions[rating.user_id] = (rating.moment, rec_id)
            events.append(
                EventInput(
                    event_id=uuid.uuid5(
                        EVENT_ID_NAMESPACE, f"movielens:{rating.user_id}:{rating.movie_id}:{rating.ts}"
                    ),
                    user_id=rating.user_id,
                    item_id=rating.movie_id,
                    event_type="rating",
                    value=rating.value,
                    timestamp=rating.moment,
                    recommendation_id=uuid.UUID(rec_id) if rec_id else None,
                )
            )
        client.send(events)
        position = due_end
        if on_tick:
            on_tick(report)
        if time.monotonic() - last_said > 5:
            say(f"  {position:,}/{total:,} events sent, clock {system_now():%Y-%m-%d %H:%M}")
            last_said = time.monotonic()
