from django.urls import path

from registry import api

urlpatterns = [
    path("models", api.ModelListApi.as_view(), name="models"),
    path("models/compare", api.ModelCompareApi.as_view(), name="models-compare"),
    path("models/rollback", api.ModelRollbackApi.as_view(), name="models-rollback"),
    path("models/<int:version>", api.ModelDetailApi.as_view(), name="model"),
    path("models/<int:version>/promote", api.ModelPromoteApi.as_view(), name="model-promote"),
    path("deployments/history", api.DeploymentHistoryApi.as_view(), name="deployment-history"),
]
