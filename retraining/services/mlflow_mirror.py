"""The optional MLflow mirror (settings.MLFLOW_TRACKING_URI). The database stays the source of truth; MLflow shows
each training run (parameters, model and baseline metrics, dataset stats, timings, trigger, gate decision and the
registry's tar artifact), one model version of settings.MLFLOW_REGISTERED_MODEL per registry version (tagged with
our version number and sha256), and the aliases `champion` and `challenger` where the registry's pointers are.

When: a Celery task on the default queue, sent after commit, once a training run ends (`training_run_mirror_schedule`),
a version is registered outside a run (`model_version_mirror_schedule`) or a pointer moves (the registry calls
`deployment_change_mirror_schedule` through settings.REGISTRY_DEPLOYMENT_HOOKS, since the registry imports no
clients). So a slow MLflow never slows the trainer nor an operator's promote. Idempotent: an MLflow run is found by
its tag (`recsite.model_version`, else `recsite.training_run`), a model version by `recsite.version`, aliases are
set to where the pointers are now; a lease on the MlflowMirror row keeps two workers from creating the same thing.

Failures (MLflow down, slow, refusing; the broker down when sending): logged and counted on MlflowMirror, never
raised into the loop. HTTP calls are bounded by MLFLOW_HTTP_REQUEST_TIMEOUT / _MAX_RETRIES (settings).
`manage.py mlflow_sync` mirrors everything again (after an outage, or when MLflow is added to a running system)."""

import json
import logging
import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from registry.artifacts import ArtifactError, artifact_local_file
from registry.models import Alias, Deployment, DeploymentChange, ModelVersion
from retraining.models import IN_FLIGHT, MlflowMirror, RunStatus, TrainingRun

logger = logging.getLogger(__name__)

MIRROR_TASK = "retraining.mlflow_mirror"
# Longer than a mirror takes at the bounded timeouts; a worker killed mid-mirror delays the next one this long.
LEASE = timedelta(minutes=5)
ARTIFACT_DIR = "model"
MAX_PARAM_VALUE = 6000  # MLflow refuses longer parameter values
BATCH = 100  # MLflow takes at most 100 params or tags per log_batch call
RUN_STATUS = {
    RunStatus.FAILED: "FAILED",
    RunStatus.PROMOTED: "FINISHED",
    RunStatus.CHALLENGER: "FINISHED",
    RunStatus.REJECTED: "FINISHED",
}


class MirrorBusy(Exception):
    """Another worker holds the mirror's lease: try again shortly."""


def mlflow_enabled() -> bool:
    return bool(settings.MLFLOW_TRACKING_URI)


# --- Counts, for /metrics -------------------------------------------------------------------------------------


def mlflow_mirror_counts() -> dict[str, int]:
    """Mirrors that reached MLflow and mirrors that failed (MLflow or the broker down, a refusal), since the start;
    both only grow (Prometheus counters)."""
    row = MlflowMirror.objects.filter(pk=1).values("successes", "failures").first()
    return row or {"successes": 0, "failures": 0}


def mlflow_mirror_failures_total() -> int:
    return mlflow_mirror_counts()["failures"]


def _count(*, error: str = "") -> None:
    MlflowMirror.objects.get_or_create(pk=1)
    if error:
        MlflowMirror.objects.filter(pk=1).update(
            failures=F("failures") + 1, last_failure_at=timezone.now(), last_error=error[:2000]
        )
    else:
        MlflowMirror.objects.filter(pk=1).update(successes=F("successes") + 1, last_success_at=timezone.now())


# --- Scheduling: after commit, a Celery task; never an exception into the caller ---------------------------------


def training_run_mirror_schedule(*, run_id: int) -> None:
    _schedule(run_id=run_id)


def model_version_mirror_schedule(*, version: int) -> None:
    _schedule(version=version)


def deployment_change_mirror_schedule(*, change_id: int) -> None:
    """The registry's deployment hook (settings.REGISTRY_DEPLOYMENT_HOOKS): it runs after the change committed."""
    _schedule(change_id=change_id)


def _schedule(**target) -> None:
    if mlflow_enabled():
        transaction.on_commit(lambda: _send(target), robust=True)


def _send(target: dict) -> None:
    from retraining.tasks import mlflow_mirror_task  # the tasks module imports the pipeline, which imports this one

    try:
        mlflow_mirror_task.apply_async(kwargs=target)
    except Exception as exc:
        logger.warning("MLflow mirror of %s not sent: %s", target, exc, exc_info=True)
        _count(error=f"not sent ({target}): {type(exc).__name__}: {exc}")


# --- The task's work ------------------------------------------------------------------------------------------


def mlflow_mirror(*, run_id: int | None = None, version: int | None = None, change_id: int | None = None) -> bool:
    """Mirror one training run, one version or the pointers after `change_id`, under the lease. True if MLflow took
    it; False if it failed (logged and counted). MirrorBusy if another worker is mirroring."""
    if not mlflow_enabled():
        return False
    with _lease():
        try:
            client = _MlflowClient()
            if run_id is not None:
                client.training_run_mirror(run_id=run_id)
            if version is not None:
                client.model_version_mirror(version=ModelVersion.objects.get(version=version))
            if change_id is not None:
                client.deployments_mirror(change_id=change_id)
        except Exception as exc:
            target = {"run_id": run_id, "version": version, "change_id": change_id}
            logger.warning("MLflow mirror of %s failed (the loop goes on): %s", target, exc, exc_info=True)
            _count(error=f"{target}: {type(exc).__name__}: {exc}")
            return False
    _count()
    return True


def mlflow_sync() -> dict:
    """Mirror every finished training run, every version and both pointers (idempotent: what MLflow has is found by
    its tags and left alone). Raises what MLflow raises: it is an operator's command."""
    with _lease():
        client = _MlflowClient()
        runs = TrainingRun.objects.exclude(status__in=IN_FLIGHT).order_by("pk").values_list("pk", flat=True)
        for run_id in runs:
            client.training_run_mirror(run_id=run_id)
        versions = ModelVersion.objects.exclude(artifact_sha256="").order_by("version")
        for version in versions:  # those of the runs above are found complete and left alone
            client.model_version_mirror(version=version)
        client.deployments_mirror(change_id=None)
    _count()
    return {"training_runs": len(runs), "versions": len(versions)}


@contextmanager
def _lease():
    """Hold the mirror's lease for the block: claimed by a conditional update, never a lock held across HTTP calls;
    a lease left by a killed worker expires."""
    MlflowMirror.objects.get_or_create(pk=1)
    now = timezone.now()
    until = now + LEASE
    free = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    if not MlflowMirror.objects.filter(free, pk=1).update(claimed_until=until):
        raise MirrorBusy("another worker is mirroring to MLflow")
    try:
        yield
    finally:
        MlflowMirror.objects.filter(pk=1, claimed_until=until).update(claimed_until=None)


# --- What a run records in MLflow -------------------------------------------------------------------------------


@dataclass
class RunRecord:
    key: tuple[str, str]  # the tag that finds this run again
    name: str
    status: str  # RUNNING while the training run is in flight, then FINISHED or FAILED
    start: datetime | None
    end: datetime | None
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    gate: dict = field(default_factory=dict)
    artifact: Path | None = None


def run_record(*, run: TrainingRun | None, version: ModelVersion | None) -> RunRecord:
    """What MLflow shows for a training run and the version it registered (either may be missing: a failed run
    registered nothing; `manage.py train` registers without a run)."""
    assert run or version
    key = ("recsite.model_version", str(version.version)) if version else ("recsite.training_run", str(run.pk))
    status = "FINISHED" if run is None else RUN_STATUS.get(run.status, "RUNNING")
    record = RunRecord(
        key=key,
        name=f"v{version.version}" if version else f"run {run.pk} ({run.status})",
        status=status,
        start=(run.started_at or run.created_at) if run else version.created_at,
        end=(run.finished_at if run else version.created_at),
    )
    if version is not None:
        _version_record(record, version)
    if run is not None:
        _run_record(record, run)
    return record


def _version_record(record: RunRecord, version: ModelVersion) -> None:
    record.params.update(_flat(version.parameters))
    record.params.update(
        {"training_window_start": version.training_window_start, "training_window_end": version.training_window_end}
    )
    record.metrics.update(_flat(version.metrics))
    record.metrics.update(_flat(version.baseline_metrics, prefix="baseline."))
    for name, value in _flat(version.dataset_stats, prefix="dataset.").items():
        (record.metrics if _number(value) else record.params)[name] = value
    record.metrics.update(
        {"training_duration_s": version.training_duration_s, "model_size_bytes": version.artifact_size}
    )
    record.tags.update(
        {
            "recsite.model_version": version.version,
            "recsite.artifact_sha256": version.artifact_sha256,
            "recsite.trigger": version.trigger_reason,
        }
    )
    if version.artifact_path:
        try:
            record.artifact = artifact_local_file(
                path=version.artifact_path, size=version.artifact_size, sha256=version.artifact_sha256
            )
        except ArtifactError as exc:  # the run is still logged, without the file
            logger.warning("MLflow mirror: v%s's artifact is not uploaded: %s", version.version, exc)


def _run_record(record: RunRecord, run: TrainingRun) -> None:
    record.metrics.update(_flat(run.stage_timings, prefix="timing_s."))
    record.tags.update(
        {
            "recsite.training_run": run.pk,
            "recsite.trigger": run.trigger,
            "recsite.run_status": run.status,
            "recsite.requested_by": run.requested_by,
        }
    )
    if run.error:
        record.tags["recsite.error"] = run.error[:MAX_PARAM_VALUE]
    if run.gate:
        record.gate = run.gate
        record.metrics["gate.passed"] = 1.0 if run.gate.get("passed") else 0.0
        record.metrics.update(_flat(run.gate.get("numbers", {}), prefix="gate."))
        record.tags["recsite.gate"] = "passed" if run.gate.get("passed") else "refused"
        reasons = run.gate.get("failures") or run.gate.get("reasons") or []
        record.tags["mlflow.note.content"] = "Gate: " + "; ".join(map(str, reasons))


def _flat(values: dict, prefix: str = "") -> dict:
    """Nested dicts as MLflow names ("baseline.popularity.ndcg_at_10"): MLflow takes letters, digits, _ - . / : and
    spaces in a name, so "ndcg@10" becomes "ndcg_at_10"."""
    flat = {}
    for key, value in (values or {}).items():
        name = prefix + re.sub(r"[^\w./: -]", "_", str(key).replace("@", "_at_"))
        if isinstance(value, dict):
            flat.update(_flat(value, prefix=name + "."))
        else:
            flat[name] = value
    return flat


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _ms(moment: datetime | None) -> int | None:
    return int(moment.timestamp() * 1000) if moment else None


# --- The MLflow side ------------------------------------------------------------------------------------------


class _MlflowClient:
    """MlflowClient with the lookups that make mirroring idempotent. mlflow is imported here, only when enabled."""

    def __init__(self):
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=settings.MLFLOW_TRACKING_URI, registry_uri=settings.MLFLOW_REGISTRY_URI)
        self.model = settings.MLFLOW_REGISTERED_MODEL
        self._experiment_id = None

    def training_run_mirror(self, *, run_id: int) -> None:
        run = TrainingRun.objects.select_related("model_version").get(pk=run_id)
        # A run that failed after registering names no version, but its version names it.
        version = run.model_version or ModelVersion.objects.filter(training_run_id=run.pk).first()
        self._mirror(run_record(run=run, version=version), version)

    def model_version_mirror(self, *, version: ModelVersion) -> str:
        run = TrainingRun.objects.filter(pk=version.training_run_id).first() if version.training_run_id else None
        return self._mirror(run_record(run=run, version=version), version)

    def deployments_mirror(self, *, change_id: int | None) -> None:
        """Set `champion` and `challenger` to where the pointers are now (not where the change put them: a later
        change may have moved them again), and refresh the status tag of the versions the change touched."""
        pointers = dict(Deployment.objects.values_list("alias", "version__version"))
        for alias in (Alias.CHAMPION, Alias.CHALLENGER):
            number = pointers.get(alias)
            if number is None:
                self._alias_delete(alias)
            else:
                mirrored = self.model_version_mirror(version=ModelVersion.objects.get(version=number))
                self.client.set_registered_model_alias(self.model, alias, mirrored)
        change = DeploymentChange.objects.filter(pk=change_id).first()
        touched = {change.from_version_id, change.to_version_id} - {None} if change else set()
        for version in ModelVersion.objects.filter(pk__in=touched):
            self.model_version_mirror(version=version)

    def _mirror(self, record: RunRecord, version: ModelVersion | None) -> str | None:
        run_id = self._run_ensure(record)
        return self._model_version_ensure(version, run_id) if version and version.artifact_sha256 else None

    def _run_ensure(self, record: RunRecord) -> str:
        found = self.client.search_runs(
            [self.experiment_id],
            f"tags.`{record.key[0]}` = '{record.key[1]}'",
            max_results=1,
            order_by=["attributes.start_time ASC"],
        )
        if found and found[0].data.tags.get("recsite.mirror") == record.status and record.status != "RUNNING":
            return found[0].info.run_id  # mirrored once its training run had ended: nothing changed since
        run_id = (
            found[0].info.run_id
            if found
            else self.client.create_run(
                self.experiment_id,
                start_time=_ms(record.start),
                run_name=record.name,
                tags={record.key[0]: record.key[1]},
            ).info.run_id
        )
        self._log(run_id, record)
        if record.status != "RUNNING":
            self.client.set_terminated(run_id, status=record.status, end_time=_ms(record.end))
        self.client.set_tag(run_id, "recsite.mirror", record.status)  # last: a mirror cut short is redone
        return run_id

    def _log(self, run_id: str, record: RunRecord) -> None:
        from mlflow.entities import Metric, Param, RunTag

        at = _ms(record.end or record.start) or 0
        metrics = [Metric(name, float(value), at, 0) for name, value in record.metrics.items() if _number(value)]
        params = [
            Param(name, "" if value is None else str(value)[:MAX_PARAM_VALUE]) for name, value in record.params.items()
        ]
        tags = [RunTag(name, str(value)) for name, value in record.tags.items()]
        for start in range(0, max(len(metrics), len(params), len(tags)), BATCH):
            self.client.log_batch(
                run_id,
                metrics=metrics[start : start + BATCH],
                params=params[start : start + BATCH],
                tags=tags[start : start + BATCH],
            )
        if record.gate:
            self.client.log_text(run_id, json.dumps(record.gate, indent=2, sort_keys=True), "gate.json")
        if record.artifact and not self.client.list_artifacts(run_id, ARTIFACT_DIR):
            self.client.log_artifact(run_id, str(record.artifact), ARTIFACT_DIR)

    def _model_version_ensure(self, version: ModelVersion, run_id: str) -> str:
        self._registered_model_ensure()
        found = self.client.search_model_versions(
            f"name = '{self.model}' and tag.`recsite.version` = '{version.version}'"
        )
        if found:
            mirrored = min(found, key=lambda each: int(each.version))
        else:
            mirrored = self.client.create_model_version(
                self.model,
                source=f"runs:/{run_id}/{ARTIFACT_DIR}",
                run_id=run_id,
                tags={"recsite.version": str(version.version), "recsite.sha256": version.artifact_sha256},
                description=f"recsite {version}: LightGBM ranker and rating model, the registry's tar artifact "
                f"(sha256 {version.artifact_sha256})",
            )
        self.client.set_model_version_tag(self.model, mirrored.version, "recsite.status", version.status)
        return str(mirrored.version)

    def _registered_model_ensure(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.model)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.client.create_registered_model(
                self.model,
                description="Versions of the recommendation service's registry (recsite); the aliases "
                "champion and challenger follow its deployment pointers.",
            )

    def _alias_delete(self, alias: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_registered_model_alias(self.model, alias)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            name = settings.MLFLOW_EXPERIMENT_NAME
            experiment = self.client.get_experiment_by_name(name)
            self._experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        return self._experiment_id
