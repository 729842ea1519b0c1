"""The operator dashboard and the "which model served this user" page, in the admin (recsite/urls.py mounts them
under /admin/dashboard/). Thin views: the reads are retraining.dashboard and retraining.timeline."""

from datetime import datetime

from django.contrib import admin
from django.template.response import TemplateResponse
from django.urls import path
from django.utils import timezone

from recommendations.clock import system_now
from recsite.admin import admin_action_view
from recsite.errors import NotFoundError
from retraining.dashboard import CHARTJS, Heartbeat, dashboard_charts, dashboard_health, dashboard_pointers
from retraining.timeline import TIMELINE_MAX_LIMIT, user_timeline

# (name, title, what it shows): the order of the charts on the page.
CHARTS = [
    (
        "offline",
        "Offline NDCG@10 per version",
        (
            "Each version on its own holdout, with most-popular and the "
            "collaborative model scored on the same holdout (dashed): compare a version with its own baselines, not "
            "versions with each other (Version comparisons re-score two on one holdout). ▲ became champion, ✕ "
            "rejected by the gate."
        ),
    ),
    (
        "online",
        "Online CTR and hit rate per version per day",
        (
            "Shown lists of the last 14 days (shadow lists "
            "excluded); solid CTR, dashed hit rate@10. Today's values grow while events are still attributed."
        ),
    ),
    (
        "drift",
        "PSI per feature, recent drift reports",
        (
            "Grey dotted lines: 0.1 (moderate shift) and 0.25 "
            "(significant shift), and the policy's own threshold when it differs."
        ),
    ),
    ("experiment", "Experiment arms over time", "CTR (solid) and hit rate@10 (dashed) of each arm."),
    ("training", "Training duration and model size per version", "Bars: seconds to train; line: artifact size."),
    ("triggers", "Trigger timeline", "Training runs started per day over the last 30 days, by trigger."),
]


def dashboard_view(request):
    now = system_now()
    charts = dashboard_charts(now=now)
    context = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        "now": now,
        "pointers": dashboard_pointers(),
        "health": [_health_row(beat, system=now, real=timezone.now()) for beat in dashboard_health()],
        "charts": [
            {"name": name, "title": title, "caption": caption, "config": charts[name], "data_id": f"chart-data-{name}"}
            for name, title, caption in CHARTS
        ],
        "chartjs": CHARTJS,
    }
    return TemplateResponse(request, "admin/retraining/dashboard.html", context)


def _health_row(beat: Heartbeat, *, system: datetime, real: datetime) -> dict:
    """The heartbeat, its age against the clock it was stamped with, and whether it is late."""
    now = system if beat.system_clock else real
    return {"beat": beat, "now": now, "late": beat.late(now=now)}


def timeline_view(request):
    """?user=<external id> (the form on the dashboard), &page=N."""
    external_id = request.GET.get("user", "").strip()
    context = {**admin.site.each_context(request), "title": "Which model served this user", "user_id": external_id}
    if external_id:
        page_number = request.GET.get("page", "1")
        page_number = int(page_number) if page_number.isdigit() and 0 < int(page_number) < 10**6 else 1
        try:
            context["page"] = user_timeline(
                external_id=external_id,
                limit=TIMELINE_MAX_LIMIT // 2,
                offset=(page_number - 1) * (TIMELINE_MAX_LIMIT // 2),
            )
        except NotFoundError as exc:
            context["error"] = exc.message
        context["page_number"] = page_number
    status = 404 if "error" in context else 200
    return TemplateResponse(request, "admin/retraining/user_timeline.html", context, status=status)


def dashboard_urls():
    """The dashboard's URL patterns; the dashboard needs the permission to see model versions, the timeline the
    permission to see events (it shows what a user did)."""
    return [
        path(
            "", admin_action_view(admin.site, dashboard_view, permission="registry.view_modelversion"), name="dashboard"
        ),
        path(
            "timeline/",
            admin_action_view(admin.site, timeline_view, permission="recommendations.view_interaction"),
            name="dashboard-timeline",
        ),
    ]
