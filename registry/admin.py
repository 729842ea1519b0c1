from django.contrib import admin, messages
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from recsite.admin import ReadOnlyAdmin, admin_action_view, data_field, gate_html, table_html
from recsite.errors import ApplicationError
from recsite.formatting import duration, number, size
from registry.models import Deployment, DeploymentChange, ModelStatus, ModelVersion
from registry.selectors import champion_version
from registry.services import PROMOTABLE as _PROMOTABLE
from registry.services import model_version_promote, model_version_rollback

PROMOTE = "registry.promote_modelversion"
ROLLBACK = "registry.rollback_modelversion"


def _metric(key):
    def column(obj):
        return number(obj.metrics.get(key))

    column.short_description = key.upper()
    return column


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    list_display = [
        "label",
        "status",
        "created_at",
        "trigger_reason",
        _metric("ndcg@10"),
        _metric("recall@10"),
        _metric("map@10"),
        _metric("rmse"),
        _metric("mae"),
        _metric("r2"),
    ]
    list_filter = ["status", "trigger_reason"]
    ordering = ["-version"]
    readonly_fields = [
        "version",
        "status",
        "created_at",
        "training_window_start",
        "training_window_end",
        "trigger_reason",
        "training_run",
        "training_duration",
        "artifact_path",
        "artifact_size_shown",
        "artifact_sha256",
        "metrics_table",
        "gate_decision",
        data_field("dataset_stats"),
        data_field("parameters"),
        data_field("manifest"),
    ]
    fields = readonly_fields
    change_form_template = "admin/registry/modelversion/change_form.html"
    change_list_template = "admin/registry/modelversion/change_list.html"

    @admin.display(description="training run")
    def training_run(self, obj):
        if obj.training_run_id is None:
            return "—"
        url = reverse("admin:retraining_trainingrun_change", args=[obj.training_run_id])
        return format_html("<a href='{}'>run {}</a>", url, obj.training_run_id)

    @admin.display(description="training duration")
    def training_duration(self, obj):
        return duration(obj.training_duration_s)

    @admin.display(description="artifact size")
    def artifact_size_shown(self, obj):
        return size(obj.artifact_size)

    @admin.display(description="gate decision (from its training run)")
    def gate_decision(self, obj):
        return gate_html(_producing_gate(obj))

    @admin.display(description="Metrics (model and baselines, on its own holdout)")
    def metrics_table(self, obj):
        baselines = obj.baseline_metrics or {}
        rows = [[key, obj.metrics[key], *(b.get(key) for b in baselines.values())] for key in sorted(obj.metrics)]
        return table_html(["metric", "model", *baselines], rows)

    def get_urls(self):
        return [
            path(
                "<int:pk>/promote/",
                admin_action_view(self.admin_site, self.promote_view, permission=PROMOTE),
                name="registry_modelversion_promote",
            ),
            path(
                "<int:pk>/rollback/",
                admin_action_view(self.admin_site, self.rollback_view, permission=ROLLBACK),
                name="registry_modelversion_rollback",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, object_id)
        champion = champion_version()
        is_champion = obj is not None and champion is not None and obj.pk == champion.pk
        servable = obj is not None and obj.status in _PROMOTABLE and not is_champion
        extra = {
            "champion": champion,
            "rejection_reasons": _rejection_reasons(obj),
            "can_promote": servable and request.user.has_perm(PROMOTE),
            "can_roll_back": servable
            and champion is not None
            and obj.version < champion.version
            and request.user.has_perm(ROLLBACK),
        }
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), **extra})

    def promote_view(self, request, pk):
        return self._pointer_view(request, pk, "promote")

    def rollback_view(self, request, pk):
        return self._pointer_view(request, pk, "rollback")

    def _pointer_view(self, request, pk, action):
        version = get_object_or_404(ModelVersion, pk=pk)
        champion = champion_version()
        if request.method == "POST":
            reason = request.POST.get("reason", "").strip()
            expected = request.POST.get("expected_current") or None
            actor = f"admin:{request.user.get_username()}"
            try:
                expected_current = int(expected) if expected else None
                change = model_version_promote if action == "promote" else model_version_rollback
                change(version=version.version, actor=actor, reason=reason, expected_current=expected_current)
            except (ApplicationError, ValueError) as exc:
                self.message_user(request, getattr(exc, "message", str(exc)), messages.ERROR)
            else:
                self.message_user(request, f"{version} is now the champion ({action}).", messages.SUCCESS)
            return redirect(reverse("admin:registry_modelversion_change", args=[pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": f"{'Promote' if action == 'promote' else 'Roll back to'} {version}?",
            "version": version,
            "ndcg": number(version.metrics.get("ndcg@10")),
            "champion": champion,
            "action": action,
        }
        return TemplateResponse(request, "admin/registry/modelversion/confirm_pointer_change.html", context)


def _producing_gate(version: ModelVersion) -> dict:
    """The gate decision of the training run that registered `version` (read through the reverse relation:
    the registry imports no other app)."""
    run = version.training_runs.order_by("-id").first()
    return run.gate if run is not None else {}


def _rejection_reasons(version: ModelVersion | None) -> list[str]:
    """Why a rejected version was rejected: the gate's failed checks, else the audit trail's reason."""
    if version is None or version.status != ModelStatus.REJECTED:
        return []
    gate = _producing_gate(version)
    if gate.get("failures"):
        return gate["failures"]
    change = DeploymentChange.objects.filter(action=DeploymentChange.Action.REJECT, to_version=version).first()
    return [change.reason] if change is not None and change.reason else ["no reason was recorded"]


@admin.register(Deployment)
class DeploymentAdmin(ReadOnlyAdmin):
    list_display = ["alias", "version", "mode", "traffic_percent", "updated_at"]


@admin.register(DeploymentChange)
class DeploymentChangeAdmin(ReadOnlyAdmin):
    """The audit trail."""

    list_display = ["created_at", "alias", "action", "from_version", "to_version", "actor", "reason"]
    list_filter = ["action", "alias"]
    readonly_fields = [data_field("details")]
    exclude = ["details"]
