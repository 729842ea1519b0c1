from django.urls import path

from retraining import api, comparison_api, rollout_api

urlpatterns = [
    path("retrain", api.RetrainApi.as_view(), name="retrain"),
    path("training-runs", api.TrainingRunListApi.as_view(), name="training-runs"),
    path("training-runs/<int:run_id>", api.TrainingRunDetailApi.as_view(), name="training-run"),
    path("trigger-evaluations/latest", api.TriggerEvaluationLatestApi.as_view(), name="trigger-evaluation-latest"),
    path("triggers/efficacy", api.TriggerEfficacyApi.as_view(), name="trigger-efficacy"),
    path("drift-reports", api.DriftReportApi.as_view(), name="drift-reports"),
    path("drift-reports/latest", api.DriftReportLatestApi.as_view(), name="drift-report-latest"),
    path("users/<str:user_id>/timeline", api.UserTimelineApi.as_view(), name="user-timeline"),
    path("comparisons", comparison_api.ComparisonCreateApi.as_view(), name="comparisons"),
    path("comparisons/<int:comparison_id>", comparison_api.ComparisonDetailApi.as_view(), name="comparison"),
    path("deployments", rollout_api.DeploymentsApi.as_view(), name="deployments"),
    path("deployments/challenger", rollout_api.ChallengerApi.as_view(), name="deployments-challenger"),
    path(
        "deployments/challenger/report", rollout_api.ChallengerReportApi.as_view(), name="deployments-challenger-report"
    ),
    path("models/<int:version>/online-metrics", rollout_api.OnlineMetricsApi.as_view(), name="model-online-metrics"),
]
