"""Retraining state as rows: the policy, each trigger evaluation, each drift report, each training run, each
comparison of two versions on one holdout."""

import math

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from registry.models import (
    AB_TRAFFIC_PERCENT,
    SHADOW_TRAFFIC_PERCENT,
    ModelVersion,
    canary_steps_error,
    traffic_percent_error,
)


class Rollout(models.TextChoices):
    PROMOTE = "promote", "promote directly"
    SHADOW = "shadow", "start in shadow"
    AB = "ab", "start an A/B test"
    CANARY = "canary", "start a gradual rollout (canary)"


def default_canary_steps() -> list[int]:
    return [10, 50, 100]


class RetrainPolicy(models.Model):
    """What makes the system retrain, and what a candidate must show to be promoted. One is active."""

    name = models.CharField(max_length=100, default="default")
    active = models.BooleanField(default=True)

    time_enabled = models.BooleanField(default=True)
    time_interval_hours = models.FloatField(default=7 * 24)
    volume_enabled = models.BooleanField(default=True)
    volume_min_events = models.PositiveIntegerField(default=10_000)
    performance_enabled = models.BooleanField(default=True)
    performance_ratio = models.FloatField(
        default=0.95, help_text="fires when online hit rate < ratio × its value at promotion"
    )
    performance_window_hours = models.FloatField(default=24)
    performance_min_impressions = models.PositiveIntegerField(default=500)
    drift_enabled = models.BooleanField(default=True)
    drift_window_days = models.FloatField(default=7)
    drift_window_min_events = models.PositiveIntegerField(default=10_000)
    drift_psi_warning = models.FloatField(default=0.1)
    drift_psi_threshold = models.FloatField(default=0.2)
    drift_share_threshold = models.FloatField(
        default=0.5, help_text="share of drifted features that makes the dataset drift"
    )
    drift_key_features = models.JSONField(default=list, blank=True, help_text="features whose drift alone is enough")

    cooldown_minutes = models.FloatField(default=60)
    min_new_holdout_users = models.PositiveIntegerField(
        default=0,
        help_text="a fired trigger starts a run only when at least this many users have events after the "
        "champion's training cut-off (the users the gate compares on); 0: off",
    )
    check_interval_minutes = models.PositiveIntegerField(default=5)
    event_retention_days = models.PositiveIntegerField(
        default=0,
        help_text="events of whole months older than this are dropped (training then learns from what is kept), "
        "and event ids received longer ago forgotten; 0: keep everything. At least the longest window the policy "
        "reads (drift, online performance)",
    )

    gate_min_relative_gain = models.FloatField(default=0.01)
    gate_guardrail_tolerance = models.FloatField(
        default=0.05, help_text="relative regression allowed on Recall@10, coverage@10, RMSE"
    )
    gate_bootstrap_tolerance = models.FloatField(
        default=0.005, help_text="refuse if the CI lower bound of ΔNDCG@10 is below −this"
    )
    gate_bootstrap_samples = models.PositiveIntegerField(default=1000)
    refit_on_full_data = models.BooleanField(
        default=False,
        help_text="after the gate passes, train the same configuration again on every event up to the cut-off "
        "(holdout included) and register that model; its metrics are the gated model's on the holdout",
    )

    candidate_rollout = models.CharField(
        max_length=8,
        choices=Rollout.choices,
        default=Rollout.PROMOTE,
        help_text="what a candidate that passed the gate does next (with no champion yet it is always promoted)",
    )
    ab_traffic_percent = models.PositiveSmallIntegerField(
        default=AB_TRAFFIC_PERCENT, help_text="share of users in the challenger's arm"
    )
    shadow_traffic_percent = models.PositiveSmallIntegerField(
        default=SHADOW_TRAFFIC_PERCENT,
        help_text="share of requests the challenger shadows (each costs the web process a second scoring)",
    )
    canary_steps = models.JSONField(default=default_canary_steps, help_text="traffic percentages, rising to 100")
    rollout_min_step_minutes = models.FloatField(default=60, help_text="a canary step is held at least this long")
    rollout_min_impressions = models.PositiveIntegerField(
        default=1000, help_text="per arm (and per canary step for the challenger) before the arms are judged"
    )
    rollout_confidence = models.FloatField(default=0.95, help_text="of the intervals that judge the arms")
    rollout_max_error_increase = models.FloatField(
        default=0.02, help_text="a canary is rolled back when its error share exceeds the champion's by more"
    )

    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "retrain policies"
        constraints = [models.UniqueConstraint(fields=["active"], condition=Q(active=True), name="one_active_policy")]

    def __str__(self):
        return f"{self.name}{' (active)' if self.active else ''}"

    def clean(self):
        if not 0 < self.performance_ratio <= 1:
            raise ValidationError({"performance_ratio": "Must be in (0, 1]."})
        if not 0 < self.drift_psi_warning <= self.drift_psi_threshold:
            raise ValidationError({"drift_psi_warning": "Must be positive and at most the drift threshold."})
        if not 0 < self.drift_share_threshold <= 1:
            raise ValidationError({"drift_share_threshold": "Must be in (0, 1]."})
        if error := canary_steps_error(self.canary_steps):
            raise ValidationError({"canary_steps": error})
        for name in ("ab_traffic_percent", "shadow_traffic_percent"):
            if error := traffic_percent_error(getattr(self, name)):
                raise ValidationError({name: error})
        if self.check_interval_minutes < 1:
            raise ValidationError({"check_interval_minutes": "Must be at least 1 minute."})
        if not 0.5 <= self.rollout_confidence < 1:
            raise ValidationError({"rollout_confidence": "Must be in [0.5, 1)."})
        if self.event_retention_days and self.event_retention_days < self.event_retention_minimum_days():
            raise ValidationError(
                {
                    "event_retention_days": f"Must be 0 (keep everything) or at least "
                    f"{self.event_retention_minimum_days()} days: the drift window and the online performance "
                    "window read events that old."
                }
            )

    def event_retention_minimum_days(self) -> int:
        return math.ceil(max(self.drift_window_days, self.performance_window_hours / 24))


class Trigger(models.TextChoices):
    TIME = "time"
    VOLUME = "volume"
    PERFORMANCE = "performance"
    DRIFT = "drift"
    MANUAL = "manual"


class RunStatus(models.TextChoices):
    QUEUED = "queued"
    TRAINING = "training"
    EVALUATING = "evaluating"
    PROMOTED = "promoted"
    CHALLENGER = "challenger", "challenger (passed the gate; rolling out)"
    REJECTED = "rejected"
    FAILED = "failed"


IN_FLIGHT = (RunStatus.QUEUED, RunStatus.TRAINING, RunStatus.EVALUATING)


def lease_seconds_default() -> int:
    return settings.TRAINING_LEASE_SECONDS


class TrainingRun(models.Model):
    """One training run. At most one is in flight: `in_flight` is True exactly while the run is queued,
    training or evaluating (NULL after), and it is unique, so the database refuses a second one."""

    trigger = models.CharField(max_length=12, choices=Trigger.choices, help_text="the first of `triggers`")
    triggers = models.JSONField(default=list, blank=True, help_text="every trigger kind that fired for this run")
    evidence = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=12, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True)
    in_flight = models.BooleanField(null=True, default=True, editable=False)
    requested_by = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    trained_at = models.DateTimeField(null=True, blank=True)
    evaluated_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    lease_seconds = models.PositiveIntegerField(
        default=lease_seconds_default, help_text="silence (no heartbeat, or not claimed) after which the run is stale"
    )
    dispatched_at = models.DateTimeField(
        null=True, blank=True, help_text="when it was sent to the trainer (or taken in-process); empty: never sent"
    )
    data_until = models.DateTimeField(
        null=True, blank=True, help_text="training cut-off (the system clock at the trigger)"
    )
    stage_timings = models.JSONField(default=dict, blank=True)
    log = models.JSONField(default=list, blank=True)
    gate = models.JSONField(default=dict, blank=True)
    model_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="training_runs"
    )
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("start_trainingrun", "Can start a training run")]
        constraints = [
            models.UniqueConstraint(fields=["in_flight"], name="one_training_run_in_flight"),
            models.CheckConstraint(
                condition=(Q(status__in=IN_FLIGHT) & Q(in_flight=True))
                | (~Q(status__in=IN_FLIGHT) & Q(in_flight__isnull=True)),
                name="in_flight_matches_status",
            ),
        ]

    def __str__(self):
        return f"run {self.pk} ({self.trigger}, {self.status})"


class HoldReason(models.TextChoices):
    EXPERIMENT = "experiment_running", "an experiment is running"
    COOLDOWN = "cooling_down", "cooling down after the last run"
    NOT_ENOUGH_NEW_DATA = "not_enough_new_data", "too few users with events since the champion's cut-off"
    RUN_IN_FLIGHT = "run_in_flight", "a run is already in flight"
    BROKER_UNAVAILABLE = "broker_unavailable", "the broker was unavailable"


class TriggerEvaluation(models.Model):
    """One check of every trigger: each trigger's value, threshold and verdict, and what was done."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    clock = models.DateTimeField(help_text="the system clock the triggers were evaluated at")
    results = models.JSONField(default=dict)
    fired = models.CharField(max_length=12, blank=True, default="")
    action = models.CharField(max_length=200, blank=True, default="")
    run = models.ForeignKey(TrainingRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    held_reason = models.CharField(
        max_length=32,
        choices=HoldReason.choices,
        blank=True,
        default="",
        help_text="why triggers that fired started no run; empty when a run started or nothing fired",
    )

    class Meta:
        ordering = ["-created_at", "-id"]

    def fired_kinds(self) -> list[str]:
        return [name for name, result in self.results.items() if result.get("verdict") == "fire"]

    def __str__(self):
        outcome = f"{self.fired} fired" if self.fired else "nothing fired"
        return f"trigger check at {self.clock:%Y-%m-%d %H:%M}: {outcome}"


class DriftReport(models.Model):
    class Verdict(models.TextChoices):
        OK = "ok"
        WARNING = "warning"
        DRIFT = "drift"

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    events_in_window = models.PositiveIntegerField()
    sampled_rows = models.PositiveIntegerField(default=0)
    reference_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    feature_scores = models.JSONField(default=dict)
    extra_scores = models.JSONField(default=dict, help_text="event-type mix, label and prediction drift")
    drifted_share = models.FloatField(default=0.0)
    overall_score = models.FloatField(default=0.0)
    verdict = models.CharField(max_length=8, choices=Verdict.choices)
    duration_s = models.FloatField(default=0.0)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"drift report {self.pk} ({self.verdict})"


class MlflowMirror(models.Model):
    """The MLflow mirror's one row (pk 1). Its lease serialises mirroring across workers, so that two of them never
    both create the MLflow run or model version of one registry version; its counts are what /metrics exports:
    MLflow is a mirror, and its failures are counted here instead of failing a training run or a promotion."""

    claimed_until = models.DateTimeField(null=True, blank=True, help_text="a mirror holds the lease until then")
    successes = models.PositiveBigIntegerField(default=0)
    failures = models.PositiveBigIntegerField(default=0)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_failure_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        verbose_name = "MLflow mirror"

    def __str__(self):
        return f"MLflow mirror: {self.successes} mirrored, {self.failures} failed"


class ComparisonStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class VersionComparison(models.Model):
    """Two versions and the baselines re-scored on one holdout (retraining.services.comparison): requested, computed
    by a task on the training queue, then its rows and which held-out events they were computed on."""

    version_a = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    version_b = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="+")
    status = models.CharField(
        max_length=8, choices=ComparisonStatus.choices, default=ComparisonStatus.QUEUED, db_index=True
    )
    requested_by = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    holdout = models.JSONField(default=dict, blank=True, help_text="which held-out events every row was scored on")
    rows = models.JSONField(default=list, blank=True, help_text="each version and baseline, its metrics@10")
    segments = models.JSONField(default=dict, blank=True, help_text="the same rows per user segment")
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"comparison {self.pk}: v{self.version_a.version} vs v{self.version_b.version} ({self.status})"
