from django.urls import path

from recommendations.api import views

urlpatterns = [
    path("events", views.EventIngestApi.as_view(), name="events"),
    path("items", views.ItemBulkUpsertApi.as_view(), name="items"),
    path("items/<str:item_id>", views.ItemUpsertApi.as_view(), name="item"),
    path("health", views.HealthApi.as_view(), name="health"),
]
