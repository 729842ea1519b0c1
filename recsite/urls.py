from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from recsite.metrics_http import metrics_view
from retraining.admin_dashboard import dashboard_urls

urlpatterns = [
    path("admin/dashboard/", include(dashboard_urls())),  # before the admin's own catch-all
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),  # Prometheus; a plain view, outside the API and its schema
    path("api/v1/", include("recommendations.api.urls")),
    path("api/v1/", include("registry.urls")),
    path("api/v1/", include("retraining.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    # Our template: drf-spectacular's loads fonts from Google.
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema", template_name="api/redoc.html"), name="redoc"),
]

# JSON on /api/ paths for what fails outside DRF (unknown path, oversize body, an error in a middleware).
handler400 = "recsite.errors.bad_request"
handler403 = "recsite.errors.permission_denied"
handler404 = "recsite.errors.page_not_found"
handler500 = "recsite.errors.server_error"
