import json

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from recsite.admin import ReadOnlyAdmin
from retraining.models import DriftReport, RetrainPolicy, TrainingRun, TriggerEvaluation
from retraining.services.runs import RunInFlight, retrain_request


def pretty_json(value) -> str:
    return format_html("<pre style='max-height:40em;overflow:auto'>{}</pre>", json.dumps(value, indent=2, default=str))


@admin.register(RetrainPolicy)
class RetrainPolicyAdmin(admin.ModelAdmin):
    list_display = ["name", "active", "time_enabled", "volume_enabled", "performance_enabled", "drift_enabled",
                    "cooldown_minutes", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "active", "check_interval_minutes", "cooldown_minutes"]}),
        ("Time", {"fields": ["time_enabled", "time_interval_hours"]}),
        ("Volume", {"fields": ["volume_enabled", "volume_min_events"]}),
        ("Online performance", {"fields": ["performance_enabled", "performance_ratio", "performance_window_hours",
                                           "performance_min_impressions"]}),
        ("Drift", {"fields": ["drift_enabled", "drift_window_days", "drift_window_min_events", "drift_psi_warning",
                              "drift_psi_threshold", "drift_share_threshold", "drift_key_features"]}),
        ("Evaluation gate", {"fields": ["gate_min_relative_gain", "gate_guardrail_tolerance", "gate_bootstrap_tolerance",
                                        "gate_bootstrap_samples", "refit_on_full_data"]}),
    ]


@admin.register(TrainingRun)
class TrainingRunAdmin(ReadOnlyAdmin):
    list_display = ["id", "trigger", "status", "requested_by", "created_at", "finished_at", "model_version", "gate_summary"]
    list_filter = ["status", "trigger"]
    change_list_template = "admin/retraining/trainingrun/change_list.html"
    readonly_fields = ["trigger", "status", "requested_by", "created_at", "started_at", "trained_at", "evaluated_at",
                       "finished_at", "heartbeat_at", "data_until", "model_version", "error", "evidence_pretty",
                       "gate_pretty", "stage_timings_pretty", "log_pretty"]
    exclude = ["evidence", "gate", "stage_timings", "log"]

    @admin.display(description="gate")
    def gate_summary(self, obj):
        if not obj.gate:
            return "—"
        return ("passed: " if obj.gate.get("passed") else "refused: ") + (obj.gate.get("reasons") or [""])[-1]

    @admin.display(description="evidence")
    def evidence_pretty(self, obj):
        return pretty_json(obj.evidence)

    @admin.display(description="gate decision")
    def gate_pretty(self, obj):
        return pretty_json(obj.gate)

    @admin.display(description="stage timings (s)")
    def stage_timings_pretty(self, obj):
        return pretty_json(obj.stage_timings)

    @admin.display(description="log")
    def log_pretty(self, obj):
        return format_html("<pre>{}</pre>", "\n".join(obj.log))

    def get_urls(self):
        return [path("retrain/", self.admin_site.admin_view(require_POST(self.retrain_view)), name="retraining_retrain")] + super().get_urls()

    def retrain_view(self, request):
        if not request.user.is_staff:
            raise PermissionDenied
        try:
            run = retrain_request(requested_by=f"admin:{request.user.get_username()}")
        except RunInFlight as exc:
            self.message_user(request, f"Not started: {exc.message}", messages.WARNING)
        else:
            self.message_user(request, f"Training run {run.pk} queued.", messages.SUCCESS)
        return redirect(reverse("admin:retraining_trainingrun_changelist"))


@admin.register(TriggerEvaluation)
class TriggerEvaluationAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "clock", "fired", "action", "verdicts"]
    list_filter = ["fired"]
    readonly_fields = ["created_at", "clock", "fired", "action", "run", "results_pretty"]
    exclude = ["results"]

    @admin.display(description="verdicts")
    def verdicts(self, obj):
        return ", ".join(f"{name}: {result.get('verdict')}" for name, result in obj.results.items())

    @admin.display(description="results")
    def results_pretty(self, obj):
        return pretty_json(obj.results)


@admin.register(DriftReport)
class DriftReportAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "verdict", "drifted_share", "overall_score", "events_in_window", "reference_version", "duration_s"]
    list_filter = ["verdict"]
    readonly_fields = ["created_at", "window_start", "window_end", "events_in_window", "sampled_rows", "reference_version",
                       "verdict", "drifted_share", "overall_score", "duration_s", "scores_table", "extra_pretty"]
    exclude = ["feature_scores", "extra_scores"]

    @admin.display(description="per-feature scores")
    def scores_table(self, obj):
        rows = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", (
            (name, s.get("kind"), "—" if s.get("psi") is None else f"{s['psi']:.4f}", s.get("verdict"))
            for name, s in obj.feature_scores.items()
        ))
        return format_html("<table><tr><th>feature</th><th>kind</th><th>PSI</th><th>verdict</th></tr>{}</table>", rows)

    @admin.display(description="event-type mix, label drift")
    def extra_pretty(self, obj):
        return pretty_json(obj.extra_scores)
