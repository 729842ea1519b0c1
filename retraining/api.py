"""Retraining endpoints (scope `admin`): start a run, read runs, trigger evaluations and their efficacy, drift reports
and which model served a user."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from recommendations.clock import system_now
from recommendations.models import Impression
from recsite.api import PastDateTimeField, validated
from recsite.errors import NotFoundError
from registry.api import actor_of
from registry.models import Alias, DeploymentChange
from registry.selectors import champion_version
from retraining.models import DriftReport, TrainingRun, TriggerEvaluation
from retraining.selectors import trigger_efficacy_rows
from retraining.services.drift import drift_check_run
from retraining.services.policy import policy_active
from retraining.services.runs import retrain_request
from retraining.timeline import TIMELINE_MAX_LIMIT, user_timeline


class TrainingRunOutput(serializers.ModelSerializer):
    model_version = serializers.IntegerField(source="model_version.version", allow_null=True, default=None)

    class Meta:
        model = TrainingRun
        fields = [
            "id",
            "trigger",
            "triggers",
            "evidence",
            "status",
            "requested_by",
            "created_at",
            "started_at",
            "trained_at",
            "evaluated_at",
            "finished_at",
            "heartbeat_at",
            "data_until",
            "stage_timings",
            "gate",
            "model_version",
            "error",
        ]


class TrainingRunDetailOutput(TrainingRunOutput):
    class Meta(TrainingRunOutput.Meta):
        fields = [*TrainingRunOutput.Meta.fields, "log"]


class TriggerEvaluationOutput(serializers.ModelSerializer):
    run_id = serializers.IntegerField(source="run.pk", allow_null=True, default=None)

    class Meta:
        model = TriggerEvaluation
        fields = ["id", "created_at", "clock", "results", "fired", "action", "held_reason", "run_id"]


class DriftReportOutput(serializers.ModelSerializer):
    reference_version = serializers.IntegerField(source="reference_version.version", allow_null=True, default=None)

    class Meta:
        model = DriftReport
        fields = [
            "id",
            "created_at",
            "window_start",
            "window_end",
            "events_in_window",
            "sampled_rows",
            "reference_version",
            "feature_scores",
            "extra_scores",
            "drifted_share",
            "overall_score",
            "verdict",
            "duration_s",
        ]


class RetrainApi(APIView):
    required_scope = "admin"

    class OutputSerializer(serializers.Serializer):
        run_id = serializers.IntegerField()
        status = serializers.CharField()

    @extend_schema(
        request=None,
        responses={
            202: OutputSerializer,
            409: OpenApiResponse(description="A run is in flight; the body's `run_id` and `status` are that run's."),
            503: OpenApiResponse(
                description="The task broker is unavailable; the run was not started (nothing is left in flight)."
            ),
        },
        summary="Start a training run now (manual trigger)",
    )
    def post(self, request):
        run = retrain_request(requested_by=actor_of(request))
        return Response({"run_id": run.pk, "status": run.status}, status=status.HTTP_202_ACCEPTED)


class TrainingRunListApi(APIView):
    required_scope = "admin"

    @extend_schema(responses={200: TrainingRunOutput(many=True)}, summary="Training runs, newest first")
    def get(self, request):
        runs = TrainingRun.objects.select_related("model_version").order_by("-created_at", "-id")[:100]
        return Response(TrainingRunOutput(runs, many=True).data)


class TrainingRunDetailApi(APIView):
    required_scope = "admin"

    @extend_schema(
        responses={200: TrainingRunDetailOutput},
        summary="One run with its evidence, stage times, gate decision and log",
    )
    def get(self, request, run_id: int):
        run = TrainingRun.objects.select_related("model_version").filter(pk=run_id).first()
        if run is None:
            raise NotFoundError(f"Training run {run_id} does not exist.")
        return Response(TrainingRunDetailOutput(run).data)


class TriggerEvaluationLatestApi(APIView):
    required_scope = "admin"

    @extend_schema(
        responses={200: TriggerEvaluationOutput, 404: OpenApiResponse(description="No trigger evaluation yet.")},
        summary="The latest trigger evaluation",
    )
    def get(self, request):
        evaluation = TriggerEvaluation.objects.select_related("run").first()
        if evaluation is None:
            raise NotFoundError("No trigger evaluation yet.")
        return Response(TriggerEvaluationOutput(evaluation).data)


class TriggerEfficacyRowOutput(serializers.Serializer):
    trigger = serializers.CharField(help_text="a trigger kind, or `all` (every run once)")
    runs = serializers.IntegerField(help_text="runs this kind started (alone or with others)")
    finished = serializers.IntegerField(help_text="of them, no longer in flight")
    promotions = serializers.IntegerField(help_text="runs whose version became the champion")
    promotions_compared = serializers.IntegerField(help_text="promotions gated against a champion (with a Δ)")
    mean_ndcg_gain = serializers.FloatField(
        allow_null=True, help_text="mean ΔNDCG@10 of the promoted candidates over their champion, on the same holdout"
    )
    best_ndcg_gain = serializers.FloatField(allow_null=True, help_text="largest of those ΔNDCG@10")
    rejected = serializers.IntegerField()
    rejected_for_no_new_data = serializers.IntegerField(
        help_text="runs the gate refused for too few users with a held-out positive since the champion's cut-off"
    )
    no_new_data_share = serializers.FloatField(allow_null=True, help_text="rejected_for_no_new_data / finished")
    failed = serializers.IntegerField()
    training_seconds = serializers.FloatField(help_text="trainer time, claim to finish (failed runs included)")
    held_for_no_new_data = serializers.IntegerField(
        help_text="trigger checks where this kind fired but min_new_holdout_users held the run"
    )


class TriggerEfficacyQuery(serializers.Serializer):
    since = PastDateTimeField(
        required=False,
        help_text="only runs and checks created at or after this time "
        "(ISO 8601; a date means its midnight, UTC without an offset)",
    )


class TriggerEfficacyApi(APIView):
    required_scope = "admin"

    class OutputSerializer(serializers.Serializer):
        since = serializers.DateTimeField(allow_null=True)
        triggers = TriggerEfficacyRowOutput(many=True)

    @extend_schema(
        parameters=[TriggerEfficacyQuery],
        responses={200: OutputSerializer},
        summary="Which triggers paid off: runs, promotions, ΔNDCG@10, training time per trigger kind",
    )
    def get(self, request):
        since = validated(TriggerEfficacyQuery, request.query_params).get("since")
        return Response(self.OutputSerializer({"since": since, "triggers": trigger_efficacy_rows(since=since)}).data)


class DriftReportApi(APIView):
    required_scope = "admin"

    @extend_schema(
        request=None,
        responses={
            201: DriftReportOutput,
            404: OpenApiResponse(description="No champion with a drift reference to compare against."),
        },
        summary="Run a drift check now",
    )
    def post(self, request):
        report = drift_check_run(policy=policy_active(), now=system_now(), champion=champion_version())
        if report is None:
            raise NotFoundError("No champion with a drift reference to compare against.")
        return Response(DriftReportOutput(report).data, status=status.HTTP_201_CREATED)


class DriftReportLatestApi(APIView):
    required_scope = "admin"

    @extend_schema(
        responses={200: DriftReportOutput, 404: OpenApiResponse(description="No drift report yet.")},
        summary="The latest drift report",
    )
    def get(self, request):
        report = DriftReport.objects.select_related("reference_version").first()
        if report is None:
            raise NotFoundError("No drift report yet.")
        return Response(DriftReportOutput(report).data)


class TimelineGateOutput(serializers.Serializer):
    passed = serializers.BooleanField()
    reasons = serializers.ListField(child=serializers.CharField(), help_text="the failed checks, else the passed ones")
    ndcg_at_10 = serializers.DictField(
        child=serializers.FloatField(allow_null=True),
        help_text="candidate, champion and popularity on the same holdout",
    )


class TimelineDeploymentOutput(serializers.Serializer):
    action = serializers.ChoiceField(choices=DeploymentChange.Action.choices)
    alias = serializers.ChoiceField(choices=Alias.choices)
    at = serializers.DateTimeField()
    actor = serializers.CharField()
    reason = serializers.CharField(allow_blank=True)
    version = serializers.IntegerField()
    from_version = serializers.IntegerField(allow_null=True)
    gate = TimelineGateOutput(allow_null=True, help_text="the gate of the training run that produced the version")


class TimelineEventOutput(serializers.Serializer):
    event_type = serializers.CharField()
    item_id = serializers.CharField()
    value = serializers.FloatField(allow_null=True)
    timestamp = serializers.DateTimeField()


class TimelineListOutput(serializers.Serializer):
    recommendation_id = serializers.UUIDField()
    served_at = serializers.DateTimeField()
    model_version = serializers.IntegerField(
        allow_null=True, help_text="the version whose list was served; null for the popular fallback"
    )
    routed_version = serializers.IntegerField(allow_null=True, help_text="the version the request was routed to")
    arm = serializers.ChoiceField(choices=Impression.Arm.choices)
    experiment_id = serializers.IntegerField(allow_null=True)
    strategy = serializers.ChoiceField(choices=Impression.Strategy.choices)
    items = serializers.ListField(child=serializers.CharField())
    deployment = TimelineDeploymentOutput(
        allow_null=True,
        help_text="the change that made the routed version current for this arm when the list was served",
    )
    events = TimelineEventOutput(many=True, help_text="events sent back with the list's recommendation_id")


class UserTimelineApi(APIView):
    required_scope = "admin"

    class QuerySerializer(serializers.Serializer):
        limit = serializers.IntegerField(min_value=1, max_value=TIMELINE_MAX_LIMIT, default=20)
        offset = serializers.IntegerField(min_value=0, max_value=10**9, default=0)

    class OutputSerializer(serializers.Serializer):
        user_id = serializers.CharField()
        total = serializers.IntegerField(help_text="lists served to the user")
        limit = serializers.IntegerField()
        offset = serializers.IntegerField()
        next_offset = serializers.IntegerField(allow_null=True)
        lists = TimelineListOutput(many=True)

    @extend_schema(
        parameters=[QuerySerializer],
        responses={
            200: OutputSerializer,
            404: OpenApiResponse(description="No such user."),
        },
        summary="Which model served this user, when and why: served lists, newest first",
    )
    def get(self, request, user_id: str):
        query = validated(self.QuerySerializer, request.query_params)
        page = user_timeline(external_id=user_id, limit=query["limit"], offset=query["offset"])
        return Response(self.OutputSerializer(page).data)
