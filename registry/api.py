"""Registry endpoints (scope `admin`). One view per operation: validate, call a service or selector, serialize."""

from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from recsite.api import StrictCharField, StrictIntegerField, StrictSerializer, validated
from recsite.errors import ApplicationError
from registry.models import DeploymentChange, ModelVersion
from registry.selectors import model_versions_compare
from registry.services import UNSET, model_version_get, model_version_promote, model_version_rollback


def actor_of(request) -> str:
    return f"api-key:{request.auth.name}" if request.auth is not None else "api"


class ModelVersionOutput(serializers.ModelSerializer):
    label = serializers.CharField()

    class Meta:
        model = ModelVersion
        fields = [
            "version",
            "label",
            "status",
            "created_at",
            "training_window_start",
            "training_window_end",
            "trigger_reason",
            "dataset_stats",
            "parameters",
            "metrics",
            "baseline_metrics",
            "artifact_size",
            "artifact_sha256",
            "training_duration_s",
            "training_run_id",
        ]


class ModelVersionDetailOutput(ModelVersionOutput):
    class Meta(ModelVersionOutput.Meta):
        fields = [*ModelVersionOutput.Meta.fields, "manifest", "artifact_path"]


class DeploymentChangeOutput(serializers.ModelSerializer):
    from_version = serializers.IntegerField(source="from_version.version", allow_null=True, default=None)
    to_version = serializers.IntegerField(source="to_version.version", allow_null=True, default=None)

    class Meta:
        model = DeploymentChange
        fields = ["id", "alias", "action", "from_version", "to_version", "actor", "reason", "created_at"]


class _ChangeInput(StrictSerializer):
    reason = StrictCharField(required=False, allow_blank=True, default="", max_length=2000)
    expected_current = StrictIntegerField(required=False, allow_null=True, min_value=1)


# A pointer change's failures beyond bad input (the views document them; recsite.schema gives them the error body).
CHANGE_FAILURES = {
    409: OpenApiResponse(
        description="Another change of the champion won (or `expected_current` did not match); "
        "the body's `current_version` is the champion now."
    ),
    422: OpenApiResponse(description="The version's artifact does not load or fails its checksum; nothing changed."),
}


class ModelListApi(APIView):
    required_scope = "admin"

    @extend_schema(responses={200: ModelVersionOutput(many=True)}, summary="All model versions, newest first")
    def get(self, request):
        return Response(ModelVersionOutput(ModelVersion.objects.order_by("-version"), many=True).data)


class ModelDetailApi(APIView):
    required_scope = "admin"

    @extend_schema(responses={200: ModelVersionDetailOutput}, summary="One model version with its manifest")
    def get(self, request, version: int):
        return Response(ModelVersionDetailOutput(model_version_get(version=version)).data)


class ModelPromoteApi(APIView):
    required_scope = "admin"

    class InputSerializer(_ChangeInput):
        pass

    @extend_schema(
        request=InputSerializer,
        responses={200: DeploymentChangeOutput, **CHANGE_FAILURES},
        summary="Make a version the champion",
    )
    def post(self, request, version: int):
        data = validated(self.InputSerializer, request.data)
        change = model_version_promote(
            version=version,
            actor=actor_of(request),
            reason=data["reason"],
            expected_current=data.get("expected_current", UNSET),
        )
        return Response(DeploymentChangeOutput(change).data)


class ModelRollbackApi(APIView):
    required_scope = "admin"

    class InputSerializer(_ChangeInput):
        version = StrictIntegerField(required=False, allow_null=True, min_value=1)

    @extend_schema(
        request=InputSerializer,
        responses={
            200: DeploymentChangeOutput,
            404: OpenApiResponse(description="No such version, or no earlier champion to return to."),
            **CHANGE_FAILURES,
        },
        summary="Return to the previous (or a named) champion",
    )
    def post(self, request):
        data = validated(self.InputSerializer, request.data)
        change = model_version_rollback(
            actor=actor_of(request),
            reason=data["reason"],
            version=data.get("version"),
            expected_current=data.get("expected_current", UNSET),
        )
        return Response(DeploymentChangeOutput(change).data)


RECORDED_NOTE = (
    "As recorded on each version's own holdout — not comparable: each version was scored on its own held-out "
    "events. POST /api/v1/comparisons re-scores both, with the baselines, on one holdout."
)


class ModelCompareApi(APIView):
    required_scope = "admin"

    class QuerySerializer(serializers.Serializer):
        a = serializers.IntegerField(min_value=1)
        b = serializers.IntegerField(min_value=1)

    class MetricSerializer(serializers.Serializer):
        metric = serializers.CharField()
        label = serializers.CharField()
        higher_is_better = serializers.BooleanField()
        a = serializers.FloatField(allow_null=True)
        b = serializers.FloatField(allow_null=True)
        delta = serializers.FloatField(allow_null=True, help_text="b - a")
        relative_change = serializers.FloatField(allow_null=True, help_text="(b - a) / |a|; null when a is 0")
        better = serializers.ChoiceField(choices=["a", "b", "equal"], allow_null=True)

    class RecordedHoldoutSerializer(serializers.Serializer):
        holdout_events = serializers.IntegerField(allow_null=True, help_text="the version's own held-out events")
        training_window_end = serializers.DateTimeField(allow_null=True, help_text="its training cut-off")

    @extend_schema(
        parameters=[QuerySerializer],
        responses={
            200: inline_serializer(
                "ModelComparison",
                fields={
                    "a": serializers.IntegerField(),
                    "b": serializers.IntegerField(),
                    "comparable": serializers.BooleanField(
                        help_text="always false: the numbers come from two different holdouts"
                    ),
                    "note": serializers.CharField(),
                    "holdouts": inline_serializer(
                        "RecordedHoldouts", fields={"a": RecordedHoldoutSerializer(), "b": RecordedHoldoutSerializer()}
                    ),
                    "metrics": MetricSerializer(many=True),
                },
            ),
            404: OpenApiResponse(description="No such version."),
        },
        summary="Two versions' recorded metrics side by side, each on its own holdout (not comparable)",
        description=RECORDED_NOTE,
    )
    def get(self, request):
        query = validated(self.QuerySerializer, request.query_params)
        if query["a"] == query["b"]:
            raise ApplicationError("Compare two different versions.")
        a, b = model_version_get(version=query["a"]), model_version_get(version=query["b"])
        return Response(
            {
                "a": a.version,
                "b": b.version,
                "comparable": False,
                "note": RECORDED_NOTE,
                "holdouts": {name: _recorded_holdout(version) for name, version in (("a", a), ("b", b))},
                "metrics": model_versions_compare(a=a, b=b),
            }
        )


def _recorded_holdout(version: ModelVersion) -> dict:
    return {
        "holdout_events": (version.dataset_stats or {}).get("holdout_events"),
        "training_window_end": version.training_window_end,
    }


class DeploymentHistoryApi(APIView):
    required_scope = "admin"

    @extend_schema(responses={200: DeploymentChangeOutput(many=True)}, summary="The audit trail, newest first")
    def get(self, request):
        changes = DeploymentChange.objects.select_related("from_version", "to_version")[:200]
        return Response(DeploymentChangeOutput(changes, many=True).data)
