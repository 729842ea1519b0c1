from django.conf import settings
from django.contrib import admin
from django.contrib.auth.decorators import permission_required


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
