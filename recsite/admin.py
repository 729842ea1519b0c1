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
    """The address the login throttle counts failures by. Behind the TLS proxy every request comes from the proxy,
    which would lock a username out for everyone: there it is the last X-Forwarded-For entry, the one the proxy
    appended (the ones before it are whatever the client sent)."""
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "") if settings.BEHIND_TLS_PROXY else ""
    return forwarded.rsplit(",", 1)[-1].strip() or request.META.get("REMOTE_ADDR")
