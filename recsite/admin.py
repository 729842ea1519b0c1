import re

from django.conf import settings
from django.contrib import admin
from django.contrib.auth.decorators import permission_required
from django.urls import reverse_lazy
from django.utils.html import format_html, format_html_join

from recsite.formatting import number


class ReadOnlyAdmin(admin.ModelAdmin):
    """For rows that are records (events, audit entries, evaluations, runs): shown, never edited."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def admin_action_view(admin_site: admin.AdminSite, view, *, permission: str):
    """An admin view that changes what is served or what runs: staff status alone is not enough, the user needs
    `permission` (superusers have every one). Anonymous users go to the login page, staff without it get a 403."""
    return admin_site.admin_view(permission_required(permission, raise_exception=True)(view))


def login_client_ip(request) -> str | None:
    """The address the login throttle counts failures by. Behind proxies every request comes from a proxy, which
    would lock a username out for everyone: there it is the X-Forwarded-For entry the outermost of the NUM_PROXIES
    proxies appended (the ones before it are whatever the client sent) — the rule DRF's throttles use too."""
    proxies = settings.REST_FRAMEWORK["NUM_PROXIES"]
    forwarded = [a.strip() for a in request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")] if proxies else []
    return forwarded[-min(proxies, len(forwarded))] if forwarded and forwarded[-1] else request.META.get("REMOTE_ADDR")


# "View site" goes to the API documentation: the service has no public site of its own.
admin.site.site_url = reverse_lazy("docs")


def data_html(value):
    """A JSON value as people read it: objects as definition lists (keys as they are: they are names, e.g. of
    parameters), lists of objects with the same keys as tables, other lists comma-separated, numbers rounded
    (recsite.formatting.number), booleans as yes/no."""
    if isinstance(value, dict):
        if not value:
            return "—"
        return format_html(
            "<dl class='data'>{}</dl>",
            format_html_join("", "<dt>{}</dt><dd>{}</dd>", ((key, data_html(item)) for key, item in value.items())),
        )
    if isinstance(value, list):
        if value and all(isinstance(row, dict) for row in value) and len({tuple(row) for row in value}) == 1:
            return table_html(list(value[0]), [[row[key] for key in value[0]] for row in value])
        return ", ".join(number(item) for item in value) if value else "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return number(value)


def data_field(name: str):
    """A read-only admin field showing the JSON field `name` through data_html (list it in readonly_fields and
    its field in exclude)."""

    @admin.display(description=name.replace("_", " "))
    def shown(obj):
        return data_html(getattr(obj, name))

    shown.__name__ = f"{name}_shown"
    return shown


def table_html(header: list, rows: list[list]):
    """A table of `rows` under `header`; every cell through data_html."""
    head = format_html_join("", "<th>{}</th>", ((name,) for name in header))
    body = format_html_join(
        "",
        "<tr>{}</tr>",
        ((format_html_join("", "<td>{}</td>", ((data_html(cell),) for cell in row)),) for row in rows),
    )
    return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)


def gate_html(gate: dict):
    """A gate decision (retraining.services.gate): the verdict and each check as a sentence, the metrics of the
    candidate, champion, most-popular and the rating bias baseline side by side, then the other numbers that
    decided."""
    if not gate:
        return "—"
    failures = set(gate.get("failures") or [])
    checks = format_html_join(
        "", "<li>{} {}</li>", (("✗" if reason in failures else "✓", reason) for reason in gate.get("reasons") or [])
    )
    numbers = dict(gate.get("numbers") or {})
    scored = {
        name: numbers.pop(name) for name in ("candidate", "champion", "popularity", "rating_bias") if numbers.get(name)
    }
    segments = numbers.pop("segments", None)
    metrics = sorted({key for values in scored.values() for key in values})
    rest = {key: value for key, value in gate.items() if key not in {"passed", "reasons", "failures", "numbers"}}
    return format_html(
        "<p><strong>{}</strong></p><ul>{}</ul>{}{}{}",
        "Passed: the candidate may replace the champion."
        if gate.get("passed")
        else "Refused: the candidate may not replace the champion.",
        checks,
        table_html(["metric", *scored], [[key, *(values.get(key) for values in scored.values())] for key in metrics])
        if scored
        else "",
        segments_html(segments) if segments else "",
        data_html({**numbers, **rest}) if numbers or rest else "",
    )


SEGMENT_MODELS = ("candidate", "champion", "ranker", "popularity", "ease")


def segments_html(segments: dict, models: tuple | list = SEGMENT_MODELS):
    """The per-segment table of an evaluation (retraining.ml.segments): one row per segment, fewest events first
    (a JSON column keeps no key order), each of `models`' NDCG@10 / Recall@10 / HitRate@10, and the gate's
    ΔNDCG@10 interval or why the segment was not checked."""
    rows = sorted(segments.items(), key=lambda item: int(re.match(r"\d*", str(item[1].get("training_events")))[0] or 0))
    models = [name for name in models if any(name in row for _, row in rows)]
    checked = any("ndcg_difference" in row for _, row in rows)
    header = ["segment", "training events", "users", *(f"{name} NDCG / Recall / HitRate @10" for name in models)]
    body = [
        [
            name,
            row.get("training_events"),
            row.get("users"),
            *(_segment_cell(row.get(model)) for model in models),
            *([_difference_cell(row)] if checked else []),
        ]
        for name, row in rows
    ]
    return format_html(
        "<p>By user segment (training events before the holdout):</p>{}",
        table_html([*header, *(["ΔNDCG@10 95% CI"] if checked else [])], body),
    )


def _segment_cell(metrics: dict | None) -> str:
    if not metrics:
        return "—"
    return " / ".join(number(metrics.get(key)) for key in ("ndcg@10", "recall@10", "hit_rate@10"))


def _difference_cell(row: dict) -> str:
    difference = row.get("ndcg_difference") or {}
    if "skipped" in difference:
        return f"not checked: {difference['skipped']}"
    if "ci95_low" not in difference:
        return "—"
    return f"[{difference['ci95_low']:+.4f}, {difference['ci95_high']:+.4f}]"
