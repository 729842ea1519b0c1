from django.urls import path

from retraining import api

urlpatterns = [
    path("retrain", api.RetrainApi.as_view(), name="retrain"),
    path("training-runs", api.TrainingRunListApi.as_view(), name="training-runs"),
    path("training-runs/<int:run_id>", api.TrainingRunDetailApi.as_view(), name="training-run"),
    path("trigger-evaluations/latest", api.TriggerEvaluationLatestApi.as_view(), name="trigger-evaluation-latest"),
    path("drift-reports", api.DriftReportApi.as_view(), name="drift-reports"),
    path("drift-reports/latest", api.DriftReportLatestApi.as_view(), name="drift-report-latest"),
]
