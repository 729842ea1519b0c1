"""The metrics the database already knows, read when Prometheus scrapes (about ten indexed or small queries):
training runs, the training queue, triggers, the deployed versions and their gate metrics, and the latest drift
report. Read, not counted in processes, so that every process answers the same and a restart loses nothing; the
database is the source of truth (ARCHITECTURE.md) and these are its mirror. A database that does not answer
leaves these out and sets recsite_database_metrics_up to 0: the process metrics are still served."""

import logging
import math
from collections.abc import Iterator

from django.db.models import Count
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from registry.models import Alias, Deployment
from retraining.models import IN_FLIGHT, DriftReport, TrainingRun, TriggerEvaluation

logger = logging.getLogger(__name__)


def _families() -> dict[str, Metric]:
    return {
        "runs": CounterMetricFamily(
            "recsite_training_runs", "Finished training runs, by trigger and outcome.", labels=["trigger", "outcome"]
        ),
        "queue": GaugeMetricFamily(
            "recsite_training_runs_in_flight",
            "Training runs in flight by status (queued: the training queue's depth; at most one run is in flight).",
            labels=["status"],
        ),
        "triggers": CounterMetricFamily(
            "recsite_triggers_fired", "Trigger checks that fired, by trigger kind.", labels=["kind"]
        ),
        "version": GaugeMetricFamily(
            "recsite_deployed_model_version", "The version each deployment pointer names (0: none).", labels=["alias"]
        ),
        "size": GaugeMetricFamily(
            "recsite_model_size_bytes", "Artifact size of the deployed versions.", labels=["alias"]
        ),
        "duration": GaugeMetricFamily(
            "recsite_model_training_seconds", "Training time of the deployed versions.", labels=["alias"]
        ),
        "gate": GaugeMetricFamily(
            "recsite_champion_metric",
            "The champion's offline metrics on its holdout (what the gate compared).",
            labels=["metric"],
        ),
        "baseline": GaugeMetricFamily(
            "recsite_champion_baseline_metric",
            "The baselines' offline metrics on the champion's holdout.",
            labels=["baseline", "metric"],
        ),
        "psi": GaugeMetricFamily(
            "recsite_drift_psi", "PSI per feature of the latest drift report.", labels=["feature"]
        ),
        "drift_share": GaugeMetricFamily(
            "recsite_drift_drifted_share", "Share of drifted features in the latest drift report."
        ),
        "drift_at": GaugeMetricFamily(
            "recsite_drift_report_timestamp_seconds", "When the latest drift report was made (Unix time)."
        ),
    }


class DatabaseCollector:
    """A prometheus_client collector over the database, for the scrape's own registry."""

    def describe(self) -> Iterator[Metric]:
        yield from _families().values()
        yield _up(1)

    def collect(self) -> Iterator[Metric]:
        families = _families()
        try:
            _runs(families)
            _deployments(families)
            _drift(families)
        except Exception:  # a scrape never fails for the database; the gap and the flag say it
            logger.exception("metrics: the database figures could not be read")
            yield _up(0)
            return
        yield from families.values()
        yield _up(1)


def database_metrics_exposition() -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    return generate_latest(registry)


def _up(value: int) -> GaugeMetricFamily:
    return GaugeMetricFamily(
        "recsite_database_metrics_up", "1 when the database figures were read for this scrape.", value=value
    )


def _runs(families: dict[str, Metric]) -> None:
    by_status = TrainingRun.objects.values_list("trigger", "status").annotate(n=Count("id")).order_by()
    in_flight = dict.fromkeys(IN_FLIGHT, 0)
    for trigger, status, n in by_status:
        if status in in_flight:
            in_flight[status] += n
        else:
            families["runs"].add_metric([trigger, status], n)
    for status, n in in_flight.items():
        families["queue"].add_metric([str(status)], n)
    fired = TriggerEvaluation.objects.exclude(fired="").values_list("fired").annotate(n=Count("id")).order_by()
    for kind, n in fired:
        families["triggers"].add_metric([kind], n)


def _deployments(families: dict[str, Metric]) -> None:
    pointers = {d.alias: d.version for d in Deployment.objects.select_related("version")}
    for alias in Alias.values:
        version = pointers.get(alias)
        families["version"].add_metric([alias], version.version if version else 0)
        if version is None:
            continue
        if version.artifact_size is not None:
            families["size"].add_metric([alias], version.artifact_size)
        if version.training_duration_s is not None:
            families["duration"].add_metric([alias], version.training_duration_s)
    champion = pointers.get(Alias.CHAMPION)
    if champion is None:
        return
    for name, value in _numbers(champion.metrics):
        families["gate"].add_metric([name], value)
    for baseline, scores in (champion.baseline_metrics or {}).items():
        for name, value in _numbers(scores if isinstance(scores, dict) else {}):
            families["baseline"].add_metric([baseline, name], value)


def _drift(families: dict[str, Metric]) -> None:
    report = DriftReport.objects.order_by("-created_at", "-id").first()
    if report is None:
        return
    for feature, score in (report.feature_scores or {}).items():
        psi = score.get("psi") if isinstance(score, dict) else None
        if _is_number(psi):
            families["psi"].add_metric([feature], psi)
    families["drift_share"].add_metric([], report.drifted_share)
    families["drift_at"].add_metric([], report.created_at.timestamp())


def _numbers(values: dict | None) -> Iterator[tuple[str, float]]:
    """The top-level finite numbers of a metrics dict (nested details and nulls are left out)."""
    for name, value in (values or {}).items():
        if _is_number(value):
            yield str(name), float(value)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
