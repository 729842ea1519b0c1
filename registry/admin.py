import json

from django.contrib import admin, messages
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from recsite.admin import ReadOnlyAdmin, admin_action_view
from recsite.errors import ApplicationError
from registry.models import Deployment, DeploymentChange, ModelVersion
from registry.selectors import champion_version
from registry.services import PROMOTABLE as _PROMOTABLE, model_version_promote, model_version_rollback


PROMOTE = "registry.promote_modelversion"
ROLLBACK = "registry.rollback_modelversion"


def _metric(key):
    def column(obj):
        value = obj.metrics.get(key)
        return "—" if value is None else f"{value:.4f}"

    column.short_description = key.upper()
    return column


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ["label", "status", "created_at", "trigger_reason", _metric("ndcg@10"), _metric("recall@10"),
                    _metric("map@10"), _metric("rmse"), _metric("mae"), _metric("r2")]
    list_filter = ["status", "trigger_reason"]
    ordering = ["-version"]
    readonly_fields = ["version", "status", "created_at", "training_window_start", "training_window_end", "trigger_reason",
                       "training_run_id", "training_duration_s", "artifact_path", "artifact_size", "artifact_sha256",
                       "metrics_table", "dataset_stats", "parameters", "manifest_pretty"]
    exclude = ["metrics", "baseline_metrics", "manifest"]
    change_form_template = "admin/registry/modelversion/change_form.html"

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="Metrics (model and baselines)")
    def metrics_table(self, obj):
        baselines = obj.baseline_metrics or {}
        header = format_html_join("", "<th>{}</th>", ((name,) for name in ["metric", "model", *baselines]))
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td>{}</tr>",
            (
                (key, _fmt(obj.metrics.get(key)), format_html_join("", "<td>{}</td>", ((_fmt(b.get(key)),) for b in baselines.values())))
                for key in sorted(obj.metrics)
            ),
        )
        return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", header, rows)

    @admin.display(description="Manifest")
    def manifest_pretty(self, obj):
        return format_html("<pre style='max-height:40em;overflow:auto'>{}</pre>", json.dumps(obj.manifest, indent=2)[:200_000])

    def get_urls(self):
        return [
            path("<int:pk>/promote/", admin_action_view(self.admin_site, self.promote_view, permission=PROMOTE),
                 name="registry_modelversion_promote"),
            path("<int:pk>/rollback/", admin_action_view(self.admin_site, self.rollback_view, permission=ROLLBACK),
                 name="registry_modelversion_rollback"),
        ] + super().get_urls()

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, object_id)
        champion = champion_version()
        is_champion = obj is not None and champion is not None and obj.pk == champion.pk
        servable = obj is not None and obj.status in _PROMOTABLE and not is_champion
        extra = {
            "champion": champion,
            "can_promote": servable and request.user.has_perm(PROMOTE),
            "can_roll_back": servable and champion is not None and obj.version < champion.version
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
            "ndcg": version.metrics.get("ndcg@10"),
            "champion": champion,
            "action": action,
        }
        return TemplateResponse(request, "admin/registry/modelversion/confirm_pointer_change.html", context)


def _fmt(value):
    return "—" if value is None else f"{value:.4f}" if isinstance(value, (int, float)) else str(value)


@admin.register(Deployment)
class DeploymentAdmin(ReadOnlyAdmin):
    list_display = ["alias", "version", "mode", "traffic_percent", "updated_at"]


@admin.register(DeploymentChange)
class DeploymentChangeAdmin(ReadOnlyAdmin):
    """The audit trail."""

    list_display = ["created_at", "alias", "action", "from_version", "to_version", "actor", "reason"]
    list_filter = ["action", "alias"]
