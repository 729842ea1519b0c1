from datetime import datetime, timedelta

from django.contrib import admin, messages
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from recommendations.clock import system_now
from recommendations.selectors import online_metrics
from recsite.admin import ReadOnlyAdmin, admin_action_view, data_field, gate_html, segments_html, table_html
from recsite.api import validated
from recsite.errors import ApplicationError
from recsite.formatting import duration, number
from registry.admin import PROMOTE
from registry.models import DeploymentMode, Experiment, ModelStatus, ModelVersion
from registry.selectors import champion_version
from registry.services import PROMOTABLE
from retraining.api import TriggerEfficacyQuery
from retraining.models import (
    ComparisonStatus,
    DriftReport,
    RetrainPolicy,
    TrainingRun,
    Trigger,
    TriggerEvaluation,
    VersionComparison,
)
from retraining.selectors import trigger_efficacy_rows
from retraining.services.comparison import RANKING_KEYS, RATING_KEYS, version_comparison_request
from retraining.services.gate import MIN_COMPARISON_USERS
from retraining.services.policy import policy_active, policy_save
from retraining.services.rollout import challenger_deploy, challenger_report, experiment_promote, experiment_stop
from retraining.services.runs import retrain_request


@admin.register(RetrainPolicy)
class RetrainPolicyAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "active",
        "time_enabled",
        "volume_enabled",
        "performance_enabled",
        "drift_enabled",
        "cooldown_minutes",
        "updated_at",
    ]
    fieldsets = [
        (None, {"fields": ["name", "active", "check_interval_minutes", "cooldown_minutes", "min_new_holdout_users"]}),
        ("Time", {"fields": ["time_enabled", "time_interval_hours"]}),
        ("Volume", {"fields": ["volume_enabled", "volume_min_events"]}),
        ("Event retention", {"fields": ["event_retention_days"]}),
        (
            "Online performance",
            {
                "fields": [
                    "performance_enabled",
                    "performance_ratio",
                    "performance_window_hours",
                    "performance_min_impressions",
                ]
            },
        ),
        (
            "Drift",
            {
                "fields": [
                    "drift_enabled",
                    "drift_window_days",
                    "drift_window_min_events",
                    "drift_psi_warning",
                    "drift_psi_threshold",
                    "drift_share_threshold",
                    "drift_key_features",
                ]
            },
        ),
        (
            "Evaluation gate",
            {
                "fields": [
                    "gate_min_relative_gain",
                    "gate_guardrail_tolerance",
                    "gate_bootstrap_tolerance",
                    "gate_bootstrap_samples",
                    "refit_on_full_data",
                ]
            },
        ),
        (
            "Rollout of a gated candidate",
            {
                "fields": [
                    "candidate_rollout",
                    "ab_traffic_percent",
                    "shadow_traffic_percent",
                    "canary_steps",
                    "rollout_min_step_minutes",
                    "rollout_min_impressions",
                    "rollout_confidence",
                    "rollout_max_error_increase",
                ]
            },
        ),
    ]

    def save_model(self, request, obj, form, change):
        policy_save(policy=obj)


@admin.register(TrainingRun)
class TrainingRunAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "triggers_shown",
        "status",
        "requested_by",
        "created_at",
        "finished_at",
        "model_version",
        "gate_summary",
    ]
    list_filter = ["status", "trigger"]
    change_list_template = "admin/retraining/trainingrun/change_list.html"
    readonly_fields = [
        "trigger",
        "triggers_shown",
        "status",
        "requested_by",
        "created_at",
        "started_at",
        "trained_at",
        "evaluated_at",
        "finished_at",
        "heartbeat_at",
        "data_until",
        "model_version",
        "error",
        data_field("evidence"),
        "gate_pretty",
        "stage_timings_pretty",
        "log_pretty",
    ]
    exclude = ["evidence", "gate", "stage_timings", "log", "triggers"]

    @admin.display(description="triggers")
    def triggers_shown(self, obj):
        labels = dict(Trigger.choices)
        return " + ".join(labels.get(kind, kind) for kind in obj.triggers or [obj.trigger])

    @admin.display(description="gate")
    def gate_summary(self, obj):
        if not obj.gate:
            return "—"
        return ("passed: " if obj.gate.get("passed") else "refused: ") + (obj.gate.get("reasons") or [""])[-1]

    @admin.display(description="gate decision")
    def gate_pretty(self, obj):
        return gate_html(obj.gate)

    @admin.display(description="stage timings")
    def stage_timings_pretty(self, obj):
        return (
            table_html(["stage", "duration"], [[stage, duration(s)] for stage, s in obj.stage_timings.items()])
            if obj.stage_timings
            else "—"
        )

    @admin.display(description="log")
    def log_pretty(self, obj):
        return format_html("<pre>{}</pre>", "\n".join(obj.log))

    def get_urls(self):
        retrain = admin_action_view(
            self.admin_site, require_POST(self.retrain_view), permission="retraining.start_trainingrun"
        )
        efficacy = admin_action_view(self.admin_site, self.efficacy_view, permission="retraining.view_trainingrun")
        return [
            path("retrain/", retrain, name="retraining_retrain"),
            path("efficacy/", efficacy, name="retraining_trigger_efficacy"),
            *super().get_urls(),
        ]

    def efficacy_view(self, request):
        """?since=<ISO 8601 date or time>: only runs and checks from then on."""
        since, error = _since_of({"since": text} if (text := request.GET.get("since", "").strip()) else {})
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "since": since,
            "since_text": request.GET.get("since", ""),
            "error": error,
            "title": "Trigger efficacy: which triggers paid off",
            "rows": [
                {**row, "training_time": duration(row["training_seconds"])}
                for row in trigger_efficacy_rows(since=since)
            ],
            "policy": policy_active(),
            "min_comparison_users": MIN_COMPARISON_USERS,
        }
        return TemplateResponse(
            request, "admin/retraining/trainingrun/efficacy.html", context, status=400 if error else 200
        )

    def retrain_view(self, request):
        try:
            run = retrain_request(requested_by=f"admin:{request.user.get_username()}")
        except ApplicationError as exc:  # a run in flight (a warning), or e.g. the broker down (an error)
            level = messages.ERROR if exc.status_code >= 500 else messages.WARNING
            self.message_user(request, f"Not started: {exc.message}", level)
        else:
            self.message_user(request, f"Training run {run.pk} queued.", messages.SUCCESS)
        return redirect(reverse("admin:retraining_trainingrun_changelist"))


def _since_of(query) -> tuple[datetime | None, str]:
    """The efficacy page's `since` (validated as the API validates it), or why it was refused."""
    try:
        return validated(TriggerEfficacyQuery, query).get("since"), ""
    except ApplicationError as exc:
        detail = "; ".join(error["message"] for error in exc.extra.get("errors", []))
        return None, f"since: {detail} Showing every run."


@admin.register(TriggerEvaluation)
class TriggerEvaluationAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "clock", "fired", "action", "held_reason", "verdicts"]
    list_filter = ["fired", "held_reason"]
    readonly_fields = ["created_at", "clock", "fired", "action", "held_reason", "run", data_field("results")]
    exclude = ["results"]

    @admin.display(description="verdicts")
    def verdicts(self, obj):
        return ", ".join(f"{name}: {result.get('verdict')}" for name, result in obj.results.items())


@admin.register(DriftReport)
class DriftReportAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "verdict",
        "drifted_share_shown",
        "overall_score_shown",
        "events_in_window",
        "reference_version",
        "duration_shown",
    ]
    list_filter = ["verdict"]
    readonly_fields = [
        "created_at",
        "window_start",
        "window_end",
        "events_in_window",
        "sampled_rows",
        "reference_version",
        "verdict",
        "drifted_share_shown",
        "overall_score_shown",
        "duration_shown",
        "scores_table",
        data_field("extra_scores"),
    ]
    fields = readonly_fields

    @admin.display(description="drifted share")
    def drifted_share_shown(self, obj):
        return number(obj.drifted_share)

    @admin.display(description="overall score")
    def overall_score_shown(self, obj):
        return number(obj.overall_score)

    @admin.display(description="duration")
    def duration_shown(self, obj):
        return duration(obj.duration_s)

    @admin.display(description="per-feature scores")
    def scores_table(self, obj):
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            ((name, s.get("kind"), number(s.get("psi")), s.get("verdict")) for name, s in obj.feature_scores.items()),
        )
        return format_html("<table><tr><th>feature</th><th>kind</th><th>PSI</th><th>verdict</th></tr>{}</table>", rows)


ARM_ROWS = [
    ("impressions", "lists served", "{:,}"),
    ("users", "users", "{:,}"),
    ("ctr", "CTR", "{:.2%}"),
    ("hit_rate", "hit rate@10", "{:.2%}"),
    ("mean_rating", "mean attributed rating", "{:.2f}"),
    ("median_delay_s", "median time to interaction (s)", "{:.0f}"),
    ("cold_start_share", "cold-start fallbacks", "{:.1%}"),
    ("error_share", "errors (fallback served)", "{:.1%}"),
]


def arms_table(report: dict):
    """The experiment's arms side by side, then the differences with their confidence intervals."""
    if not report.get("arms"):
        return "—"
    arms = list(report["arms"])
    header = format_html_join("", "<th>{}</th>", ((arm,) for arm in ["", *arms]))
    rows = format_html_join(
        "",
        "<tr><td>{}</td>{}</tr>",
        (
            (label, format_html_join("", "<td>{}</td>", ((_shown(report["arms"][arm][key], pattern),) for arm in arms)))
            for key, label, pattern in ARM_ROWS
        ),
    )
    differences = format_html_join(
        "",
        "<tr><td>Δ {}</td><td colspan='2'>{} (CI {} … {})</td></tr>",
        (
            (name, _shown(d["delta"], "{:+.2%}"), _shown(d["ci_low"], "{:+.2%}"), _shown(d["ci_high"], "{:+.2%}"))
            for name, d in report["differences"].items()
        ),
    )
    overlap = report.get("overlap_at_k")
    verdict = format_html(
        "<p>Verdict: <strong>{}</strong> (confidence {}, at least {} lists per arm){}</p>",
        report["verdict"].replace("_", " "),
        report["confidence"],
        report["min_impressions"],
        format_html("; overlap of the two lists@10: {}", _shown(overlap, "{:.0%}")) if overlap is not None else "",
    )
    return format_html(
        "<table><thead><tr>{}</tr></thead><tbody>{}{}</tbody></table>{}", header, rows, differences, verdict
    )


def _shown(value, pattern: str) -> str:
    return "—" if value is None else pattern.format(value)


@admin.register(Experiment)
class ExperimentAdmin(ReadOnlyAdmin):
    """Challenger experiments: start one, see its arms side by side, stop it, promote its challenger."""

    list_display = [
        "id",
        "version",
        "champion",
        "mode",
        "status",
        "traffic_percent",
        "started_at",
        "ended_at",
        "verdict",
    ]
    list_filter = ["status", "mode"]
    readonly_fields = [
        "version",
        "champion",
        "mode",
        "status",
        "traffic_percent",
        data_field("steps"),
        "step_index",
        "step_started_at",
        "min_step_seconds",
        "min_impressions",
        "started_by",
        "started_at",
        "ended_at",
        "outcome_reason",
        "arms",
    ]
    exclude = ["last_report", "steps"]
    change_form_template = "admin/registry/experiment/change_form.html"
    change_list_template = "admin/registry/experiment/change_list.html"

    @admin.display(description="verdict")
    def verdict(self, obj):
        return (obj.last_report or {}).get("verdict", "—")

    @admin.display(description="arms")
    def arms(self, obj):
        report = obj.last_report
        if obj.status == Experiment.Status.RUNNING:
            report = challenger_report(experiment=obj, confidence=policy_active().rollout_confidence)
        return arms_table(report or {})

    def get_urls(self):
        def guarded(view, permission):
            return admin_action_view(self.admin_site, view, permission=permission)

        return [
            path("start/", guarded(self.start_view, "registry.start_experiment"), name="registry_experiment_start"),
            path(
                "<int:pk>/stop/",
                guarded(require_POST(self.stop_view), "registry.stop_experiment"),
                name="registry_experiment_stop",
            ),
            path(
                "<int:pk>/promote/",
                guarded(require_POST(self.promote_view), PROMOTE),
                name="registry_experiment_promote",
            ),
            path(
                "online-metrics/<int:version>/",
                guarded(self.online_metrics_view, "registry.view_modelversion"),
                name="registry_modelversion_online_metrics",
            ),
            *super().get_urls(),
        ]

    def _actor(self, request) -> str:
        return f"admin:{request.user.get_username()}"

    def start_view(self, request):
        actor = self._actor(request)
        if request.method == "POST":
            try:
                steps = [int(step) for step in request.POST.get("steps", "").replace(",", " ").split()] or None
                traffic = int(request.POST["traffic_percent"]) if request.POST.get("traffic_percent") else None
                experiment = challenger_deploy(
                    version=int(request.POST.get("version", "")),
                    mode=request.POST.get("mode", ""),
                    actor=actor,
                    reason=request.POST.get("reason", "").strip(),
                    traffic_percent=traffic,
                    steps=steps,
                )
            except (ApplicationError, ValueError) as exc:
                self.message_user(request, getattr(exc, "message", f"Invalid input: {exc}"), messages.ERROR)
            else:
                self.message_user(request, f"{experiment} started.", messages.SUCCESS)
                return redirect(reverse("admin:registry_experiment_change", args=[experiment.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Start an experiment",
            "versions": ModelVersion.objects.filter(status__in=PROMOTABLE).exclude(artifact_sha256=""),
            "default_version": ModelVersion.objects.filter(status=ModelStatus.CANDIDATE)
            .exclude(artifact_sha256="")
            .order_by("-version")
            .values_list("version", flat=True)
            .first(),
            "modes": [DeploymentMode.SHADOW, DeploymentMode.AB, DeploymentMode.CANARY],
            "policy": policy_active(),
        }
        return TemplateResponse(request, "admin/registry/experiment/start.html", context)

    def stop_view(self, request, pk):
        actor = self._actor(request)
        reject = request.POST.get("reject") == "1"
        try:
            experiment_stop(
                actor=actor,
                reason=request.POST.get("reason", "").strip() or "stopped in the admin",
                reject=reject,
                experiment_id=pk,
            )
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
        else:
            self.message_user(
                request, "Experiment stopped" + (" and its version rejected." if reject else "."), messages.SUCCESS
            )
        return redirect(reverse("admin:registry_experiment_change", args=[pk]))

    def promote_view(self, request, pk):
        actor = self._actor(request)
        experiment = get_object_or_404(Experiment.objects.select_related("version", "champion"), pk=pk)
        try:
            experiment_promote(
                experiment=experiment,
                actor=actor,
                reason=request.POST.get("reason", "").strip() or "promoted from its experiment in the admin",
            )
        except ApplicationError as exc:
            self.message_user(request, exc.message, messages.ERROR)
        else:
            self.message_user(request, f"{experiment.version} is now the champion.", messages.SUCCESS)
        return redirect(reverse("admin:registry_experiment_change", args=[pk]))

    def online_metrics_view(self, request, version):
        now = system_now()
        rows = online_metrics(version=version, start=now - timedelta(days=14), end=now, bucket="day")
        context = {
            **self.admin_site.each_context(request),
            "opts": ModelVersion._meta,
            "rows": rows,
            "title": f"Online metrics of v{version} (last 14 days, per day and arm)",
            "version": ModelVersion.objects.filter(version=version).first(),
        }
        return TemplateResponse(request, "admin/registry/modelversion/online_metrics.html", context)


COMPARE = "retraining.add_versioncomparison"


@admin.register(VersionComparison)
class VersionComparisonAdmin(ReadOnlyAdmin):
    """Two versions and the baselines on one holdout: ask for one ("Compare two versions"), then its rows."""

    list_display = ["id", "versions_shown", "status", "created_at", "finished_at", "holdout_shown"]
    list_filter = ["status"]
    readonly_fields = [
        "version_a",
        "version_b",
        "status",
        "requested_by",
        "created_at",
        "started_at",
        "finished_at",
        "holdout_shown",
        "rows_table",
        "segments_table",
        "error",
    ]
    fields = readonly_fields
    change_list_template = "admin/retraining/versioncomparison/change_list.html"
    change_form_template = "admin/retraining/versioncomparison/change_form.html"

    @admin.display(description="versions")
    def versions_shown(self, obj):
        return f"v{obj.version_a.version} vs v{obj.version_b.version}"

    @admin.display(description="held-out events (the same for every row)")
    def holdout_shown(self, obj):
        if not obj.holdout:
            return "not computed yet" if obj.status in (ComparisonStatus.QUEUED, ComparisonStatus.RUNNING) else "—"
        sentences = [text[:1].upper() + text[1:] for text in (obj.holdout["description"], obj.holdout["basis"])]
        return format_html("{}.<br>{}.", *sentences)

    @admin.display(description="every row on those events")
    def rows_table(self, obj):
        """Two tables: the ranking metrics (versions and ranking baselines), then the rating metrics (versions and
        rating baselines)."""
        if not obj.rows:
            return "—"
        tables = []
        for keys, first in ((RANKING_KEYS, ["users"]), (RATING_KEYS, [])):
            rows = [row for row in obj.rows if any(row["metrics"].get(key) is not None for key in keys)]
            tables.append(
                table_html(
                    ["", *first, *keys],
                    [
                        [row["name"], *([row["users"]] if first else []), *(row["metrics"].get(k) for k in keys)]
                        for row in rows
                    ],
                )
                if rows
                else ""
            )
        return format_html("{}<br>{}", *tables)

    @admin.display(description="by user segment")
    def segments_table(self, obj):
        if not obj.segments:
            return "—"
        names = [row["name"] for row in obj.rows if row["kind"] == "version"]
        return segments_html(obj.segments, models=[*names, "popularity", "ease"])

    def get_urls(self):
        return [
            path(
                "compare/",
                admin_action_view(self.admin_site, self.compare_view, permission=COMPARE),
                name="retraining_versioncomparison_compare",
            ),
            *super().get_urls(),
        ]

    def compare_view(self, request):
        """GET: the form (?a=&b= preselect two versions; by default the champion and the newest other version).
        POST: queue the comparison and go to its page."""
        if request.method == "POST":
            try:
                versions = [int(request.POST.get(name, "")) for name in ("a", "b")]
                comparison, created = version_comparison_request(
                    versions=versions, requested_by=f"admin:{request.user.get_username()}"
                )
            except (ApplicationError, ValueError) as exc:
                self.message_user(request, getattr(exc, "message", "Choose two versions."), messages.ERROR)
            else:
                queued = "queued" if created else "already queued or running"
                self.message_user(
                    request, f"{comparison} {queued}: this page shows its rows once done.", messages.SUCCESS
                )
                return redirect(reverse("admin:retraining_versioncomparison_change", args=[comparison.pk]))
        versions = ModelVersion.objects.exclude(artifact_sha256="").order_by("-version")
        champion = champion_version()
        newest_other = next((v.version for v in versions if champion is None or v.pk != champion.pk), None)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Compare two versions on one holdout",
            "versions": versions,
            "a": request.GET.get("a") or (str(champion.version) if champion else ""),
            "b": request.GET.get("b") or str(newest_other or ""),
        }
        return TemplateResponse(request, "admin/retraining/versioncomparison/compare.html", context)
