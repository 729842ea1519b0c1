from django.apps import AppConfig


class RecommendationsConfig(AppConfig):
    name = "recommendations"
    verbose_name = "Recommendations: catalog, events, features, serving"

    def __init__(self, app_name, app_module):
        super().__init__(app_name, app_module)
        self.runtime = None  # this process's recommendations.runtime.ServingRuntime, built by process_runtime()
