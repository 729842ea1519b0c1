from django.urls import path

from recommendations.api import views

urlpatterns = [
    path("events", views.EventIngestApi.as_view(), name="events"),
    path("items", views.ItemBulkUpsertApi.as_view(), name="items"),
    path("items/<str:item_id>", views.ItemUpsertApi.as_view(), name="item"),
    path("items/<str:item_id>/similar", views.SimilarItemsApi.as_view(), name="item-similar"),
    path("users/<str:user_id>/recommendations", views.RecommendationsApi.as_view(), name="recommendations"),
    path("health", views.HealthApi.as_view(), name="health"),
]
