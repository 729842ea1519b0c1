"""Model versions, deployment pointers and their audit trail. No ML and no HTTP here (ARCHITECTURE.md)."""

from django.db import models
from django.db.models import Q


class ModelStatus(models.TextChoices):
    TRAINING = "training"
    CANDIDATE = "candidate"
    REJECTED = "rejected"
    ACTIVE = "active"
    RETIRED = "retired"
    FAILED = "failed"


class ModelVersion(models.Model):
    """One trained model, immutable once registered; only `status` moves."""

    version = models.PositiveIntegerField(unique=True, editable=False)
    status = models.CharField(max_length=16, choices=ModelStatus.choices, default=ModelStatus.CANDIDATE, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True)
    training_window_start = models.DateTimeField(null=True, blank=True)
    training_window_end = models.DateTimeField(null=True, blank=True)
    trigger_reason = models.CharField(max_length=200, blank=True, default="")
    dataset_stats = models.JSONField(default=dict, blank=True)
    parameters = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    baseline_metrics = models.JSONField(default=dict, blank=True)
    manifest = models.JSONField(default=dict, blank=True)
    artifact_path = models.CharField(max_length=500, blank=True, default="")
    artifact_size = models.BigIntegerField(null=True, blank=True)
    artifact_sha256 = models.CharField(max_length=64, blank=True, default="")
    training_duration_s = models.FloatField(null=True, blank=True)
    # The retraining app's TrainingRun id; a plain integer because the registry imports no other app.
    training_run_id = models.BigIntegerField(null=True, blank=True)
    # The sha256 of the ranker compiled to native code, per compilation key (model text, compiler, CPU): a
    # cached object file is loaded only if it has the digest recorded here by a trusted compile.
    compiled_checksums = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-version"]
        constraints = [
            # One champion, always: whatever code runs, the database holds at most one active version.
            models.UniqueConstraint(fields=["status"], condition=Q(status="active"), name="one_active_version"),
        ]
        # Changing what is served is not plain CRUD: the admin's pointer views each need their own permission.
        permissions = [
            ("promote_modelversion", "Can promote a model version to champion"),
            ("rollback_modelversion", "Can roll the champion back to an earlier version"),
        ]

    def __str__(self):
        return f"v{self.version}"

    @property
    def label(self) -> str:
        return f"v{self.version}"


class Alias(models.TextChoices):
    CHAMPION = "champion"
    CHALLENGER = "challenger"


class DeploymentMode(models.TextChoices):
    NONE = "none"
    SHADOW = "shadow"
    AB = "ab"
    CANARY = "canary"


# --- The rules of a challenger's traffic: the only copy (the policy, the services and the API ask these) ---

CHALLENGER_MODES = [DeploymentMode.SHADOW, DeploymentMode.AB, DeploymentMode.CANARY]
# Default shares. A shadowed request is scored twice, so a shadow scores a quarter of requests by default: enough
# paired lists within hours at modest traffic, and a bounded cost on the web processes at any traffic.
SHADOW_TRAFFIC_PERCENT = 25
AB_TRAFFIC_PERCENT = 50
CANARY_STEPS_ERROR = "Canary steps must be whole percentages rising from at least 1 to 100, e.g. [10, 50, 100]."
TRAFFIC_PERCENT_ERROR = "traffic_percent must be a whole number between 1 and 100."


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def canary_steps_error(steps) -> str | None:
    """Why `steps` is not a canary schedule, or None when it is."""
    steps = list(steps) if isinstance(steps, (list, tuple)) else None
    if not steps or not all(_whole(step) for step in steps):
        return CANARY_STEPS_ERROR
    return None if steps == sorted(set(steps)) and steps[0] >= 1 and steps[-1] == 100 else CANARY_STEPS_ERROR


def traffic_percent_error(percent) -> str | None:
    """Why `percent` is not a challenger's share of traffic, or None when it is."""
    return None if _whole(percent) and 1 <= percent <= 100 else TRAFFIC_PERCENT_ERROR


def challenger_input_error(*, mode: str, traffic_percent: int | None, steps) -> str | None:
    """Why this start of a challenger is invalid, or None: a known mode; a canary's traffic follows its steps;
    a shadow or an A/B test has one share (None: the default)."""
    if mode not in CHALLENGER_MODES:
        return f"Unknown mode '{mode}'; use shadow, ab or canary."
    if mode == DeploymentMode.CANARY:
        if traffic_percent is not None:
            return "A canary's traffic follows its steps; give steps, not traffic_percent."
        return canary_steps_error(steps)
    if steps:
        return "steps apply to a canary only."
    return None if traffic_percent is None else traffic_percent_error(traffic_percent)


class Deployment(models.Model):
    """A pointer alias → version. `champion` serves traffic; `challenger` is for shadow / A/B / canary and
    points at the running experiment, whose id seeds the users' assignment to arms."""

    alias = models.CharField(max_length=16, choices=Alias.choices, unique=True)
    version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    mode = models.CharField(max_length=8, choices=DeploymentMode.choices, default=DeploymentMode.NONE)
    traffic_percent = models.PositiveSmallIntegerField(default=0)
    experiment = models.ForeignKey("Experiment", null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(traffic_percent__lte=100), name="traffic_percent_at_most_100"),
        ]

    def __str__(self):
        return f"{self.alias} → {self.version or '—'}"


class DeploymentChange(models.Model):
    """The audit trail: every pointer flip, with who, when, from, to and why."""

    class Action(models.TextChoices):
        PROMOTE = "promote"
        ROLLBACK = "rollback"
        REJECT = "reject"
        CHALLENGER_START = "challenger_start"
        CHALLENGER_STOP = "challenger_stop"
        TRAFFIC = "traffic"
        REFUSE = "refuse", "Refused (artifact invalid)"

    alias = models.CharField(max_length=16, choices=Alias.choices)
    action = models.CharField(max_length=20, choices=Action.choices)
    from_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    to_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    actor = models.CharField(max_length=150)
    reason = models.TextField(blank=True, default="")
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self):
        return f"{self.action} {self.alias}: {self.from_version or '—'} → {self.to_version or '—'} by {self.actor}"


class Experiment(models.Model):
    """One challenger deployment from start to end: its mode, traffic, canary schedule and outcome.
    The bookkeeping only; what to conclude from online metrics is decided in the retraining app."""

    class Status(models.TextChoices):
        RUNNING = "running"
        PROMOTED = "promoted"
        ROLLED_BACK = "rolled_back"
        STOPPED = "stopped"

    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="experiments")
    champion = models.ForeignKey(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="the champion when the experiment started",
    )
    mode = models.CharField(max_length=8, choices=DeploymentMode.choices)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.RUNNING, db_index=True)
    traffic_percent = models.PositiveSmallIntegerField(default=0)
    steps = models.JSONField(default=list, blank=True, help_text="canary: the traffic percentages, in order")
    step_index = models.PositiveSmallIntegerField(default=0)
    step_started_at = models.DateTimeField(null=True, blank=True)
    min_step_seconds = models.PositiveIntegerField(default=3600)
    min_impressions = models.PositiveIntegerField(default=1000, help_text="per arm, before the arms are compared")
    started_by = models.CharField(max_length=150)
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    outcome_reason = models.TextField(blank=True, default="")
    last_report = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-id"]
        permissions = [
            ("start_experiment", "Can start an experiment"),
            ("stop_experiment", "Can stop an experiment (and reject its challenger)"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["status"], condition=Q(status="running"), name="one_running_experiment"),
            models.CheckConstraint(condition=Q(traffic_percent__lte=100), name="experiment_traffic_at_most_100"),
        ]

    def __str__(self):
        return f"experiment {self.pk}: {self.version} {self.mode} ({self.status})"
