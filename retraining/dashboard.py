"""Reads for the operator dashboard in the admin: the pointers, the health of each process, and each chart as a
Chart.js configuration (plain JSON: the page embeds it with json_script and retraining/static/retraining/dashboard.js
draws it). Numbers are rounded here, so that tooltips read as the tables do."""

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Max
from django.db.models.functions import TruncDay
from django_celery_beat.models import PeriodicTask

from recommendations.models import Impression
from recommendations.selectors import online_metrics
from recsite.formatting import number
from registry.models import Alias, Deployment, Experiment, ModelStatus, ModelVersion
from retraining.models import DriftReport, TrainingRun, TriggerEvaluation
from retraining.services.policy import policy_active
from retraining.services.schedule import CHECK_TRIGGERS

CHARTJS = "vendor/chartjs-4.6.1/chart.umd.min.js"
PALETTE = ("#2f6fb0", "#d9822b", "#3c9a5f", "#b33c3c", "#7a52a8", "#8c6d3f", "#c4569a", "#5f6b73", "#2aa3a3")
OFFLINE_METRIC = "ndcg@10"
VERSIONS_SHOWN = 30
ONLINE_DAYS = 14
DRIFT_REPORTS_SHOWN = 20
TRIGGER_DAYS = 30
# Conventional PSI bands: below 0.1 stable, 0.1-0.25 a moderate shift, above 0.25 a significant one.
PSI_BANDS = (0.1, 0.25)
PROMOTED = (ModelStatus.ACTIVE, ModelStatus.RETIRED)
PROMOTED_COLOR, REJECTED_COLOR = "#3c9a5f", "#b33c3c"
# django-celery-beat's scheduler writes last_run_at to the database only when it syncs (every 3 minutes).
BEAT_SYNC = timedelta(minutes=3)


def _rounded(value, digits: int = 4):
    return None if value is None else round(float(value), digits)


def _color(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _chart(kind: str, labels: list, datasets: list[dict], *, y_title: str, options: dict | None = None) -> dict:
    options = {"scales": {"y": {"title": {"display": True, "text": y_title}, "beginAtZero": True}}, **(options or {})}
    return {"type": kind, "data": {"labels": labels, "datasets": datasets}, "options": options}


def _line(label: str, data: list, index: int, **style) -> dict:
    return {
        "label": label,
        "data": data,
        "borderColor": _color(index),
        "backgroundColor": _color(index),
        "spanGaps": False,
        "tension": 0,
        **style,
    }


# --- Pointers and health --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Heartbeat:
    """One process's last sign of life as the database saw it: `at` is None when it never showed one."""

    process: str
    source: str
    at: datetime | None
    late_after: timedelta | None = None
    detail: str = ""
    # Lists are stamped by the system clock (simulated during a replay); the other rows by the real one.
    system_clock: bool = False

    def late(self, *, now: datetime) -> bool:
        return self.at is not None and self.late_after is not None and now - self.at > self.late_after


def dashboard_pointers() -> dict:
    rows = {row.alias: row for row in Deployment.objects.select_related("version", "experiment")}
    champion, challenger = rows.get(Alias.CHAMPION), rows.get(Alias.CHALLENGER)
    return {
        "champion": champion.version if champion else None,
        "champion_ndcg": number(champion.version.metrics.get(OFFLINE_METRIC))
        if champion and champion.version
        else None,
        "champion_since": champion.updated_at if champion and champion.version else None,
        "challenger": challenger if challenger and challenger.version else None,
    }


def dashboard_health() -> list[Heartbeat]:
    """Honest sources only: what each kind of process writes to the database when it works. The web's is the
    latest logged list (impressions are written by the web processes, in batches of up to a few seconds); the
    worker's the latest trigger check (a task on the `default` queue); the trainer's the latest heartbeat of a
    training run (none unless a run was trained); beat's the latest last_run_at of its periodic tasks."""
    check = PeriodicTask.objects.filter(name=CHECK_TRIGGERS, enabled=True).select_related("interval").first()
    check_every = (
        check.interval.schedule.run_every
        if check and check.interval
        else timedelta(minutes=policy_active().check_interval_minutes)
    )
    running = TrainingRun.objects.filter(in_flight=True).first()
    beat_tasks = PeriodicTask.objects.filter(enabled=True)
    return [
        Heartbeat(
            "web",
            "last list served (impression log)",
            Impression.objects.aggregate(at=Max("served_at"))["at"],
            system_clock=True,
        ),
        Heartbeat(
            "worker",
            "last trigger check (retraining.check_triggers)",
            TriggerEvaluation.objects.aggregate(at=Max("created_at"))["at"],
            late_after=3 * check_every,
        ),
        Heartbeat(
            "trainer",
            "last training-run heartbeat",
            TrainingRun.objects.aggregate(at=Max("heartbeat_at"))["at"],
            # Only a claimed run beats; a queued one waits for a trainer and has no heartbeat of its own yet.
            late_after=timedelta(seconds=running.lease_seconds) if running and running.heartbeat_at else None,
            detail=f"run {running.pk} is {running.status}" if running else "no run in flight",
        ),
        Heartbeat(
            "beat",
            "last periodic task sent (django-celery-beat)",
            beat_tasks.aggregate(at=Max("last_run_at"))["at"],
            late_after=BEAT_SYNC + 2 * check_every if beat_tasks.exists() else None,
        ),
    ]


# --- Charts ---------------------------------------------------------------------------------------------------------


def dashboard_charts(*, now: datetime) -> dict[str, dict | None]:
    """Every chart by name; None where there is nothing to draw yet."""
    versions = list(ModelVersion.objects.order_by("-version")[:VERSIONS_SHOWN])[::-1]
    return {
        "offline": offline_metrics_chart(versions=versions),
        "online": online_metrics_chart(now=now),
        "drift": drift_chart(),
        "experiment": experiment_chart(now=now),
        "training": training_cost_chart(versions=versions),
        "triggers": trigger_timeline_chart(now=now),
    }


def offline_metrics_chart(*, versions: list[ModelVersion]) -> dict | None:
    """NDCG@10 of each version on its holdout, the baselines scored on the same holdout as dashed lines, the
    versions that were champion (now or before) as triangles and the rejected ones as crosses."""
    scored = [v for v in versions if v.metrics.get(OFFLINE_METRIC) is not None]
    if not scored:
        return None
    marks = [
        ("triangle", 9, PROMOTED_COLOR)
        if v.status in PROMOTED
        else ("crossRot", 9, REJECTED_COLOR)
        if v.status == ModelStatus.REJECTED
        else ("circle", 4, _color(0))
        for v in scored
    ]
    model = _line(
        f"model {OFFLINE_METRIC.upper()}",
        [_rounded(v.metrics[OFFLINE_METRIC]) for v in scored],
        0,
        pointStyle=[style for style, _, _ in marks],
        pointRadius=[radius for _, radius, _ in marks],
        pointBorderColor=[color for _, _, color in marks],
        pointBackgroundColor=[c for _, _, c in marks],
        pointBorderWidth=2,
        status=[v.status for v in scored],
    )
    baselines = sorted({name for v in scored for name in (v.baseline_metrics or {})})
    lines = [
        _line(
            f"{name} baseline",
            [_rounded((v.baseline_metrics.get(name) or {}).get(OFFLINE_METRIC)) for v in scored],
            n + 1,
            borderDash=[6, 4],
            pointRadius=0,
        )
        for n, name in enumerate(baselines)
    ]
    return _chart("line", [v.label for v in scored], [model, *lines], y_title=OFFLINE_METRIC.upper())


def online_metrics_chart(*, now: datetime) -> dict | None:
    """CTR (solid) and hit rate (dashed) per version per day over the lists shown to users (shadow lists were
    never shown), from recommendations.selectors.online_metrics."""
    start = (now - timedelta(days=ONLINE_DAYS)).replace(hour=0, minute=0, second=0, microsecond=0)
    versions = sorted(
        v
        for v in Impression.objects.filter(served_at__gte=start, routed_version__isnull=False)
        .values_list("routed_version", flat=True)
        .distinct()
    )
    per_version = {v: _shown_by_day(online_metrics(version=v, start=start, end=now, bucket="day")) for v in versions}
    per_version = {version: rows for version, rows in per_version.items() if rows}
    days = sorted({day for rows in per_version.values() for day in rows})
    if not days:
        return None
    datasets = []
    for n, (version, rows) in enumerate(per_version.items()):
        for metric, dash in (("ctr", []), ("hit_rate", [6, 4])):
            label = f"v{version} {'CTR' if metric == 'ctr' else 'hit rate@10'}"
            datasets.append(
                _line(label, [_rounded(rows[day][metric]) if day in rows else None for day in days], n, borderDash=dash)
            )
    return _chart("line", days, datasets, y_title="share of lists")


def _shown_by_day(rows: list[dict]) -> dict[str, dict]:
    """online_metrics rows (per day and arm) → per day, CTR and hit rate over the shown arms, weighted by lists."""
    days: dict[str, dict] = {}
    for row in rows:
        if row["arm"] == Impression.Arm.SHADOW or not row["impressions"]:
            continue
        day = days.setdefault(row["bucket"][:10], {"lists": 0, "ctr": 0.0, "hit_rate": 0.0})
        day["lists"] += row["impressions"]
        day["ctr"] += (row["ctr"] or 0.0) * row["impressions"]
        day["hit_rate"] += (row["hit_rate"] or 0.0) * row["impressions"]
    return {day: {"ctr": v["ctr"] / v["lists"], "hit_rate": v["hit_rate"] / v["lists"]} for day, v in days.items()}


def drift_chart() -> dict | None:
    """PSI per feature over the recent drift reports, with the conventional 0.1 and 0.25 bands and, when it is
    another value, the policy's own threshold (the one that triggers retraining)."""
    reports = list(DriftReport.objects.order_by("-created_at")[:DRIFT_REPORTS_SHOWN])[::-1]
    features = sorted(
        {name for r in reports for name, score in r.feature_scores.items() if score.get("psi") is not None}
    )
    if not features:
        return None
    labels = [f"{r.created_at:%m-%d %H:%M}" for r in reports]
    datasets = [
        _line(name, [_rounded((r.feature_scores.get(name) or {}).get("psi")) for r in reports], n)
        for n, name in enumerate(features)
    ]
    threshold = policy_active().drift_psi_threshold
    bands = [
        (f"PSI {band} ({'moderate' if band == PSI_BANDS[0] else 'significant'} shift)", band) for band in PSI_BANDS
    ]
    if threshold not in PSI_BANDS:
        bands.append((f"policy threshold {threshold:g} (triggers retraining)", threshold))
    datasets += [
        {
            "label": label,
            "data": [value] * len(reports),
            "borderColor": "#999",
            "borderDash": [2, 3],
            "pointRadius": 0,
            "borderWidth": 1,
            "threshold": True,
        }
        for label, value in bands
    ]
    return _chart("line", labels, datasets, y_title="PSI")


def experiment_chart(*, now: datetime) -> dict | None:
    """The running experiment (else the latest): each arm's CTR and hit rate per day (per hour when it is shorter
    than two days), from online_metrics of the champion's and the challenger's lists."""
    experiments = Experiment.objects.select_related("version", "champion").order_by("-started_at", "-id")
    experiment = experiments.filter(status=Experiment.Status.RUNNING).first() or experiments.first()
    if experiment is None:
        return None
    end = experiment.ended_at or now
    bucket = "hour" if end - experiment.started_at < timedelta(days=2) else "day"
    arms: dict[str, dict] = {}
    versions = [v for v in (experiment.champion, experiment.version) if v is not None]
    for version in versions:
        for row in online_metrics(version=version.version, start=experiment.started_at, end=end, bucket=bucket):
            if (row["arm"] == Impression.Arm.CHAMPION) == (version == experiment.champion) and row["impressions"]:
                arms.setdefault(f"{row['arm']} ({version.label})", {})[row["bucket"]] = row
    buckets = sorted({moment for rows in arms.values() for moment in rows})
    if not buckets:
        return None
    datasets = [
        _line(f"{arm} {name}", [_rounded(rows[b][metric]) if b in rows else None for b in buckets], n, borderDash=dash)
        for n, (arm, rows) in enumerate(arms.items())
        for metric, name, dash in (("ctr", "CTR", []), ("hit_rate", "hit rate@10", [6, 4]))
    ]
    labels = [b[:10] if bucket == "day" else b[5:16].replace("T", " ") for b in buckets]
    chart = _chart("line", labels, datasets, y_title="share of lists")
    chart["title"] = (
        f"experiment {experiment.pk}: {experiment.version} ({experiment.mode}, {experiment.status}) "
        f"against {experiment.champion or 'no champion'}, per {bucket}"
    )
    return chart


def training_cost_chart(*, versions: list[ModelVersion]) -> dict | None:
    """Training duration (bars, seconds) and artifact size (line, MB, right axis) per version."""
    measured = [v for v in versions if v.training_duration_s is not None or v.artifact_size is not None]
    if not measured:
        return None
    duration = {
        "type": "bar",
        "label": "training duration (s)",
        "yAxisID": "y",
        "backgroundColor": _color(0),
        "data": [_rounded(v.training_duration_s, 1) for v in measured],
    }
    size = _line(
        "model size (MB)",
        [_rounded(v.artifact_size / 1e6, 2) if v.artifact_size else None for v in measured],
        1,
        type="line",
        yAxisID="size",
    )
    options = {
        "scales": {
            "y": {"title": {"display": True, "text": "seconds"}, "beginAtZero": True},
            "size": {
                "position": "right",
                "title": {"display": True, "text": "MB"},
                "beginAtZero": True,
                "grid": {"drawOnChartArea": False},
            },
        }
    }
    return _chart("bar", [v.label for v in measured], [duration, size], y_title="seconds", options=options)


def trigger_timeline_chart(*, now: datetime) -> dict | None:
    """Training runs started per day over the last 30 days, stacked by what triggered them (manual included)."""
    start = (now - timedelta(days=TRIGGER_DAYS)).replace(hour=0, minute=0, second=0, microsecond=0)
    counts = Counter(
        TrainingRun.objects.filter(created_at__gte=start)
        .annotate(day=TruncDay("created_at"))
        .values_list("day", "trigger")
    )
    if not counts:
        return None
    days = sorted({day for day, _ in counts})
    kinds = sorted({kind for _, kind in counts})
    datasets = [
        {"label": kind, "data": [counts.get((day, kind), 0) for day in days], "backgroundColor": _color(n)}
        for n, kind in enumerate(kinds)
    ]
    options = {
        "scales": {
            "x": {"stacked": True},
            "y": {
                "stacked": True,
                "beginAtZero": True,
                "ticks": {"precision": 0},
                "title": {"display": True, "text": "training runs"},
            },
        }
    }
    return _chart("bar", [f"{day:%Y-%m-%d}" for day in days], datasets, y_title="training runs", options=options)
