"""Deployment and experiment endpoints (scope `admin`): the pointers, start and stop a challenger, the
per-arm report, and a version's online metrics."""

from datetime import timedelta

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from recommendations.clock import system_now
from recommendations.models import Impression
from recommendations.selectors import online_metrics
from recsite.api import StrictBooleanField, StrictCharField, StrictIntegerField, StrictSerializer, validated
from recsite.errors import NotFoundError
from registry.api import actor_of
from registry.models import CHALLENGER_MODES, Alias, Deployment, DeploymentMode, Experiment
from registry.selectors import running_experiment
from registry.services import model_version_get
from retraining.services.policy import policy_active
from retraining.services.rollout import challenger_deploy, challenger_report, experiment_stop


class ExperimentOutput(serializers.ModelSerializer):
    version = serializers.IntegerField(source="version.version")
    champion = serializers.IntegerField(source="champion.version", allow_null=True, default=None)

    class Meta:
        model = Experiment
        fields = [
            "id",
            "version",
            "champion",
            "mode",
            "status",
            "traffic_percent",
            "steps",
            "step_index",
            "step_started_at",
            "min_step_seconds",
            "min_impressions",
            "started_by",
            "started_at",
            "ended_at",
            "outcome_reason",
        ]


class ArmSummaryOutput(serializers.Serializer):
    """The schema of recommendations.selectors.online.ArmSummary (the views pass its dicts through)."""

    impressions = serializers.IntegerField()
    users = serializers.IntegerField()
    ctr = serializers.FloatField(allow_null=True)
    hit_rate = serializers.FloatField(allow_null=True)
    mean_rating = serializers.FloatField(allow_null=True)
    median_delay_s = serializers.FloatField(allow_null=True)
    cold_start_share = serializers.FloatField(allow_null=True)
    error_share = serializers.FloatField(allow_null=True)


class OnlineMetricsRowOutput(ArmSummaryOutput):
    bucket = serializers.DateTimeField(help_text="The start of the day or hour.")
    arm = serializers.ChoiceField(choices=Impression.Arm.choices)
    complete = serializers.BooleanField(help_text="False while events may still be attributed to its lists.")


class ArmDifferenceOutput(serializers.Serializer):
    delta = serializers.FloatField(allow_null=True, help_text="challenger (or shadow) - champion")
    ci_low = serializers.FloatField(allow_null=True)
    ci_high = serializers.FloatField(allow_null=True)


class ArmDifferencesOutput(serializers.Serializer):
    ctr = ArmDifferenceOutput()
    hit_rate = ArmDifferenceOutput()


class ChampionPointerOutput(serializers.Serializer):
    version = serializers.IntegerField(allow_null=True)
    updated_at = serializers.DateTimeField(allow_null=True)


class ChallengerPointerOutput(serializers.Serializer):
    version = serializers.IntegerField(allow_null=True)
    mode = serializers.ChoiceField(choices=DeploymentMode.choices)
    traffic_percent = serializers.IntegerField()
    experiment = ExperimentOutput(allow_null=True)


class DeploymentsOutput(serializers.Serializer):  # the schema of deployments_state()
    champion = ChampionPointerOutput()
    challenger = ChallengerPointerOutput()


def deployments_state() -> dict:
    pointers = {
        d.alias: d for d in Deployment.objects.select_related("version", "experiment__version", "experiment__champion")
    }
    champion, challenger = pointers.get(Alias.CHAMPION), pointers.get(Alias.CHALLENGER)
    serving = challenger is not None and challenger.version_id is not None
    return {
        "champion": {
            "version": champion.version.version if champion and champion.version else None,
            "updated_at": champion.updated_at if champion else None,
        },
        "challenger": {
            "version": challenger.version.version if serving else None,
            "mode": challenger.mode if serving else DeploymentMode.NONE,
            "traffic_percent": challenger.traffic_percent if serving else 0,
            "experiment": ExperimentOutput(challenger.experiment).data if serving and challenger.experiment else None,
        },
    }


class DeploymentsApi(APIView):
    required_scope = "admin"

    @extend_schema(
        responses={200: DeploymentsOutput},
        summary="The champion and the challenger with its mode, traffic share and experiment",
    )
    def get(self, request):
        return Response(deployments_state())


class ChallengerApi(APIView):
    required_scope = "admin"

    class InputSerializer(StrictSerializer):
        version = StrictIntegerField(min_value=1)
        mode = serializers.ChoiceField(choices=CHALLENGER_MODES)
        # Shares and steps are checked by the registry's rules (challenger_input_error), the only copy.
        traffic_percent = StrictIntegerField(required=False)
        steps = serializers.ListField(child=StrictIntegerField(), required=False, max_length=20)
        reason = StrictCharField(required=False, allow_blank=True, default="", max_length=2000)
        replace = StrictBooleanField(required=False, default=False)

    @extend_schema(
        request=InputSerializer,
        responses={
            201: ExperimentOutput,
            404: OpenApiResponse(description="No such version."),
            409: OpenApiResponse(
                description="An experiment is running (its `experiment_id` is in the body); stop it "
                "first or pass `replace`."
            ),
        },
        summary="Deploy a version as the challenger (shadow, A/B or canary); canary steps default to the policy's",
    )
    def post(self, request):
        data = validated(self.InputSerializer, request.data)
        model_version_get(version=data["version"])
        experiment = challenger_deploy(
            version=data["version"],
            mode=data["mode"],
            actor=actor_of(request),
            reason=data["reason"],
            traffic_percent=data.get("traffic_percent"),
            steps=data.get("steps"),
            replace=data["replace"],
        )
        return Response(ExperimentOutput(experiment).data, status=status.HTTP_201_CREATED)

    class StopSerializer(StrictSerializer):
        reason = StrictCharField(required=False, allow_blank=True, default="", max_length=2000)
        reject = StrictBooleanField(required=False, default=False)

    # OpenAPI 3.0 gives DELETE no request body, so the optional body is described in words.
    @extend_schema(
        request=None,
        responses={
            200: ExperimentOutput,
            400: OpenApiResponse(description="No experiment is running, or the optional body is invalid."),
        },
        summary="Stop the running experiment (all traffic back to the champion); optionally reject the version",
        description="An optional JSON body: `reason` (a string, at most 2000 characters) and `reject` (a boolean: "
        "also mark the challenger's version rejected).",
    )
    def delete(self, request):
        data = validated(self.StopSerializer, request.data)
        experiment = experiment_stop(
            actor=actor_of(request), reason=data["reason"] or "stopped by an operator", reject=data["reject"]
        )
        return Response(ExperimentOutput(experiment).data)


class ChallengerReportApi(APIView):
    required_scope = "admin"

    class OutputSerializer(serializers.Serializer):
        """What challenger_report builds; a finished experiment that never got one has only the first three fields
        and its outcome_reason."""

        experiment_id = serializers.IntegerField()
        status = serializers.ChoiceField(choices=Experiment.Status.choices)
        outcome_reason = serializers.CharField(required=False, help_text="A finished experiment's only.")
        mode = serializers.ChoiceField(choices=DeploymentMode.choices, required=False)
        champion_version = serializers.IntegerField(allow_null=True, required=False)
        challenger_version = serializers.IntegerField(required=False)
        traffic_percent = serializers.IntegerField(required=False)
        steps = serializers.ListField(child=serializers.IntegerField(), required=False)
        step_index = serializers.IntegerField(required=False)
        started_at = serializers.DateTimeField(required=False)
        ended_at = serializers.DateTimeField(allow_null=True, required=False)
        arms = serializers.DictField(
            child=ArmSummaryOutput(), required=False, help_text="By arm: `champion` and `challenger` (or `shadow`)."
        )
        differences = ArmDifferencesOutput(required=False)
        min_impressions = serializers.IntegerField(required=False)
        confidence = serializers.FloatField(required=False)
        sufficient_sample = serializers.BooleanField(required=False)
        verdict = serializers.ChoiceField(
            required=False,
            choices=["insufficient_sample", "challenger_worse", "challenger_better", "no_significant_difference"],
        )
        attribution = serializers.CharField(required=False)
        overlap_at_k = serializers.FloatField(allow_null=True, required=False, help_text="Shadow mode only.")

    @extend_schema(
        responses={200: OutputSerializer, 404: OpenApiResponse(description="No experiment has run yet.")},
        summary="The per-arm comparison of the running experiment (or the last one's final report)",
    )
    def get(self, request):
        experiment = running_experiment()
        if experiment is not None:
            return Response(challenger_report(experiment=experiment, confidence=policy_active().rollout_confidence))
        last = Experiment.objects.first()
        if last is None:
            raise NotFoundError("No experiment has run yet.")
        return Response(
            {**last.last_report, "experiment_id": last.pk, "status": last.status, "outcome_reason": last.outcome_reason}
        )


class OnlineMetricsApi(APIView):
    required_scope = "admin"

    class QuerySerializer(serializers.Serializer):
        bucket = serializers.ChoiceField(choices=["day", "hour"], default="day")
        days = serializers.IntegerField(min_value=1, max_value=90, default=7)

    class OutputSerializer(serializers.Serializer):
        version = serializers.IntegerField()
        bucket = serializers.ChoiceField(choices=["day", "hour"])
        rows = OnlineMetricsRowOutput(many=True)

    @extend_schema(
        parameters=[QuerySerializer],
        responses={200: OutputSerializer},
        summary="A version's online metrics per day or hour and arm, over the last `days`",
    )
    def get(self, request, version: int):
        query = validated(self.QuerySerializer, request.query_params)
        model_version_get(version=version)
        now = system_now()
        rows = online_metrics(
            version=version, start=now - timedelta(days=query["days"]), end=now, bucket=query["bucket"]
        )
        return Response({"version": version, "bucket": query["bucket"], "rows": rows})
