"""Setting up a fresh installation for a demo: a synthetic catalogue and history, an admin login, an
API key, the beat schedule, and a first training run for the worker to pick up."""

import json
import os
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model

from recommendations.models import ApiKey, Interaction
from recommendations.services.api_keys import api_key_create
from recommendations.services.movielens import movielens_import
from recommendations.services.synthetic import synthetic_dataset_write
from registry.selectors import champion_version
from retraining.ml.metrics import CF_NAME, RATING_BASELINES
from retraining.models import TrainingRun
from retraining.services.policy import policy_active
from retraining.services.runs import RunInFlight, retrain_request, training_run_request
from retraining.services.schedule import periodic_tasks_setup

DEMO_KEY_NAME = "demo"
DEMO_USERNAME = "admin"
DEMO_SCOPES = ["admin", "ingest", "serve"]


@dataclass
class DemoSetup:
    loaded_events: int
    admin_username: str
    admin_password: str
    api_key: str
    training_run_id: int | None
    replaced: list[str] = field(default_factory=list)  # what a re-run could not reuse, and why, said plainly
    reused: bool = False  # the login and key are the ones an earlier run kept


def demo_credentials_path() -> Path:
    """Where `make run` keeps the demo login and key between runs: under var/ (untracked), owner-only."""
    return settings.VAR_DIR / "demo_credentials.json"


def demo_dataset_load(
    *, dataset: Path | None = None, users: int = 300, items: int = 500, events: int = 30_000, seed: int = 7
) -> int:
    """Import `dataset` (a MovieLens directory) or a synthetic one; returns the events imported."""
    if dataset is None:
        dataset = settings.VAR_DIR / "demo-dataset"
        synthetic_dataset_write(
            output=dataset, users=users, items=items, events=events, drift_at=0.8, seed=seed, start=date(2025, 1, 1)
        )
    return movielens_import(path=Path(dataset), progress=False).events_imported


def demo_setup(*, dataset: Path | None = None, train: bool = True) -> DemoSetup:
    """Idempotent: a second run reuses the login and key it kept in demo_credentials_path() while they still
    work, and replaces (and reports) only what no longer does."""
    loaded = 0 if Interaction.objects.exists() else demo_dataset_load(dataset=dataset)
    periodic_tasks_setup(check_every_seconds=policy_active().check_interval_minutes * 60)
    stored = _demo_credentials_read()
    password, replaced = _demo_admin_ensure(stored.get("admin_password"))
    key, key_replaced = _demo_key_ensure(stored.get("api_key"))
    _demo_credentials_write({"admin_username": DEMO_USERNAME, "admin_password": password, "api_key": key})
    run_id = None
    if train and champion_version() is None and not TrainingRun.objects.exists():
        try:
            run_id = retrain_request(requested_by="bootstrap").pk
        except RunInFlight as exc:
            run_id = exc.extra.get("run_id")
    replaced += key_replaced
    return DemoSetup(loaded, DEMO_USERNAME, password, key, run_id, replaced, reused=bool(stored) and not replaced)


def _demo_admin_ensure(stored_password: str | None) -> tuple[str, list[str]]:
    user, created = get_user_model().objects.get_or_create(username=DEMO_USERNAME)
    user.is_staff = user.is_superuser = True
    if stored_password and user.check_password(stored_password):
        user.save()
        return stored_password, []
    password = secrets.token_urlsafe(9)
    user.set_password(password)
    user.save()
    if created and not stored_password:
        return password, []  # the first run: nothing was replaced
    if not stored_password:
        why = f"{demo_credentials_path()} did not hold it"
    else:
        why = "the database had no demo admin any more" if created else "the kept one no longer logs in"
    return password, [f"The demo admin password was replaced: {why}."]


def _demo_key_ensure(stored_key: str | None) -> tuple[str, list[str]]:
    if stored_key and _demo_key_usable(stored_key):
        return stored_key, []
    revoked = ApiKey.objects.filter(name=DEMO_KEY_NAME, revoked=False).update(revoked=True)
    _, key = api_key_create(name=DEMO_KEY_NAME, scopes=DEMO_SCOPES)
    if not stored_key and not revoked:
        return key, []
    why = "the kept one was revoked or has expired" if stored_key else f"{demo_credentials_path()} did not hold it"
    return key, [f"A new demo API key was issued ({why}); {revoked} earlier demo key(s) revoked."]


def _demo_key_usable(key: str) -> bool:
    try:
        found = ApiKey.objects.get_from_key(key)  # unknown, revoked or not matching: DoesNotExist
    except ApiKey.DoesNotExist:
        return False
    return found.name == DEMO_KEY_NAME and not found.has_expired


def _demo_credentials_read() -> dict:
    try:
        return json.loads(demo_credentials_path().read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _demo_credentials_write(credentials: dict) -> None:
    """Written to a temporary file created owner-only, then renamed: never readable by others, never half written."""
    path = demo_credentials_path()
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an existing temporary file keeps its mode otherwise
    with os.fdopen(descriptor, "w") as handle:
        json.dump(credentials, handle)
    os.replace(temporary, path)


# --- The retraining demo ------------------------------------------------------------------------

DEMO_METRICS = [
    ("rmse", "RMSE", False),
    ("mae", "MAE", False),
    ("r2", "R²", True),
    ("recall@10", "Recall@10", True),
    ("map@10", "MAP@10", True),
    ("ndcg@10", "NDCG@10", True),
]


DEMO_BASELINE_COLUMNS = ("popularity", CF_NAME)


@dataclass
class DemoRun:
    champion_before: int | None
    run: TrainingRun
    setup_lines: list[str]


def demo_timeline_prepare(*, dataset: Path | None, first_part: float, say) -> list[str]:
    """On an empty database: import the first part of a timeline, train and gate v1, then ingest the rest
    through the event service ("the data accumulated since"). Returns what it did, line by line."""
    from recommendations.clock import clock_reset
    from recommendations.services.events import EventInput, event_ingest
    from recommendations.services.movielens import EVENT_ID_NAMESPACE, movielens_import, movielens_ratings
    from retraining.services.pipeline import training_run_process

    if dataset is None:
        dataset = settings.VAR_DIR / "demo-dataset"
        synthetic_dataset_write(
            output=dataset, users=300, items=500, events=30_000, drift_at=0.8, seed=7, start=date(2025, 1, 1)
        )
    ratings = movielens_ratings(path=Path(dataset))
    split = ratings[int(len(ratings) * first_part)].moment
    imported = movielens_import(path=Path(dataset), progress=False, before=split).events_imported
    say(f"set-up: imported {imported:,} events before {split:%Y-%m-%d} from {dataset}; training v1")
    clock_reset()
    first = training_run_request(trigger="manual", requested_by="retraining_demo", data_until=split, enqueue=False)
    training_run_process(run_id=first.pk)
    first.refresh_from_db()
    say(f"set-up: v1 {first.status}: {'; '.join(first.gate.get('failures') or first.gate.get('reasons', [])[:1])}")
    rest = [r for r in ratings if r.moment >= split]
    for start in range(0, len(rest), 1000):
        event_ingest(
            events=[
                EventInput(
                    user_id=r.user_id,
                    item_id=r.movie_id,
                    event_type="rating",
                    value=r.value,
                    timestamp=r.moment,
                    event_id=uuid.uuid5(EVENT_ID_NAMESPACE, f"movielens:{r.user_id}:{r.movie_id}:{r.ts}"),
                )
                for r in rest[start : start + 1000]
            ]
        )
    say(f"set-up: {len(rest):,} newer events arrived through the ingestion service")
    return [f"{imported:,} events imported", f"v1 {first.status}", f"{len(rest):,} events ingested since"]


def demo_comparison_rows(run: TrainingRun) -> list[dict]:
    """Old (the champion re-scored on this run's holdout) against new, per metric, with the change, and the
    baselines' value on the same held-out events (demo_comparison_events)."""
    numbers = run.gate.get("numbers", {})
    old, new = numbers.get("champion") or {}, numbers.get("candidate") or {}
    recorded = demo_comparison_baselines(run)
    # A JSON column's keys come back in the database's order (PostgreSQL: shortest first): the columns take a fixed one.
    baselines = {name: recorded[name] for name in DEMO_BASELINE_COLUMNS if name in recorded}
    rows = []
    for key, label, higher_is_better in DEMO_METRICS:
        before, after = old.get(key), new.get(key)
        change = (after - before) / abs(before) if before not in (None, 0) and after is not None else None
        better = None if change is None or after == before else ((after > before) == higher_is_better)
        rows.append(
            {
                "label": f"{label} {'↑' if higher_is_better else '↓'}",
                "old": before,
                "new": after,
                "change": change,
                "better": better,
                "baselines": {name: metrics.get(key) for name, metrics in baselines.items()},
            }
        )
    return rows


def demo_comparison_baselines(run: TrainingRun) -> dict[str, dict]:
    """The baselines scored on the held-out events old and new were compared on: with a champion, those the gate
    recorded for its comparison; without one, the new version's own (its whole holdout, where it was scored)."""
    if run.gate.get("champion_version") is not None:
        return run.gate.get("comparison_baselines") or {}
    return run.model_version.baseline_metrics if run.model_version else {}


def demo_rating_baselines(run: TrainingRun) -> tuple[dict[str, dict], dict]:
    """The rating baselines on the comparison's held-out ratings, and the new version's metrics on the same ones
    (what its RMSE is set against)."""
    rating = {name: row for name, row in demo_comparison_baselines(run).items() if name in RATING_BASELINES}
    return rating, run.gate.get("numbers", {}).get("candidate") or {}


def demo_comparison_events(run: TrainingRun) -> str:
    """Which held-out events every row of the comparison was computed on, as a sentence."""
    gate = run.gate
    if gate.get("champion_version") is None:
        stats = run.model_version.dataset_stats if run.model_version else {}
        return f"the new version's whole holdout: {stats.get('holdout_events', 0):,} held-out events (no champion)"
    after = gate.get("comparison_holdout_after")
    since = (
        f"after v{gate['champion_version']}'s training cut-off {after[:16].replace('T', ' ')}"
        if after
        else f"of the whole holdout (v{gate['champion_version']} records no training cut-off)"
    )
    return (
        f"the {gate.get('comparison_events', 0):,} held-out events {since}, "
        f"{gate.get('comparison_users', 0):,} users with a held-out positive"
    )
