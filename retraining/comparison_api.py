"""Comparison endpoints (scope `admin`): ask for two versions to be compared on one holdout, then read the result.
Re-scoring replays the models over the event history, too slow for one request on large data: the POST queues it
for the trainer and answers 202 with the comparison's id; the GET answers its status and, once done, its rows."""

from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from recsite.api import StrictIntegerField, StrictSerializer, validated
from recsite.errors import NotFoundError
from registry.api import actor_of
from retraining.models import VersionComparison
from retraining.services.comparison import version_comparison_request


class ComparisonHoldoutOutput(serializers.Serializer):
    events = serializers.IntegerField(help_text="held-out events scored")
    users = serializers.IntegerField(
        help_text="users with a held-out positive: every ranking metric averages over them"
    )
    after = serializers.DateTimeField(allow_null=True, help_text="only held-out events after this time were scored")
    until = serializers.DateTimeField(
        allow_null=True, help_text="the split is of the events up to this time (null: every event so far)"
    )
    holdout_of = serializers.IntegerField(help_text="the version whose holdout it is (the later one)")
    basis = serializers.CharField(help_text="why these events: neither version trained on them")
    description = serializers.CharField()


class ComparisonRowOutput(serializers.Serializer):
    name = serializers.CharField(help_text="the version's label (v3) or the baseline's name")
    kind = serializers.ChoiceField(choices=["version", "baseline"])
    version = serializers.IntegerField(allow_null=True)
    users = serializers.IntegerField(
        allow_null=True, help_text="users its ranking metrics average over (null: a rating baseline)"
    )
    metrics = serializers.DictField(
        child=serializers.FloatField(allow_null=True), help_text="ndcg@10, recall@10, …, rmse, mae, r2"
    )


class VersionComparisonOutput(serializers.ModelSerializer):
    versions = serializers.SerializerMethodField()
    holdout = serializers.SerializerMethodField()
    rows = ComparisonRowOutput(many=True)

    class Meta:
        model = VersionComparison
        fields = [
            "id",
            "versions",
            "status",
            "requested_by",
            "created_at",
            "started_at",
            "finished_at",
            "holdout",
            "rows",
            "segments",
            "error",
        ]

    @extend_schema_field(serializers.ListField(child=serializers.IntegerField(), min_length=2, max_length=2))
    def get_versions(self, comparison) -> list[int]:
        return [comparison.version_a.version, comparison.version_b.version]

    @extend_schema_field(ComparisonHoldoutOutput(allow_null=True))
    def get_holdout(self, comparison) -> dict | None:
        return comparison.holdout or None


class ComparisonCreateApi(APIView):
    required_scope = "admin"

    class InputSerializer(StrictSerializer):
        versions = serializers.ListField(child=StrictIntegerField(min_value=1), min_length=2, max_length=2)

    @extend_schema(
        request=InputSerializer,
        responses={
            202: VersionComparisonOutput,
            404: OpenApiResponse(description="No such version."),
            422: OpenApiResponse(description="A version has no artifact to load; nothing was queued."),
            503: OpenApiResponse(description="The task broker is unavailable; the comparison was not started."),
        },
        summary="Compare two versions and the baselines on one holdout (queued; poll the returned comparison)",
        description="Both versions are re-scored with the baselines on the same held-out events, those neither has "
        "trained on: the later version's holdout after the earlier version's training cut-off. The same two "
        "versions asked again while a comparison of them is queued or running get that comparison.",
    )
    def post(self, request):
        data = validated(self.InputSerializer, request.data)
        comparison, _ = version_comparison_request(versions=data["versions"], requested_by=actor_of(request))
        return Response(VersionComparisonOutput(comparison).data, status=status.HTTP_202_ACCEPTED)


class ComparisonDetailApi(APIView):
    required_scope = "admin"

    @extend_schema(
        responses={200: VersionComparisonOutput, 404: OpenApiResponse(description="No such comparison.")},
        summary="A comparison: its status and, once done, every row on one holdout and which events those are",
    )
    def get(self, request, comparison_id: int):
        comparison = VersionComparison.objects.select_related("version_a", "version_b").filter(pk=comparison_id)
        if not comparison:
            raise NotFoundError(f"Comparison {comparison_id} does not exist.")
        return Response(VersionComparisonOutput(comparison[0]).data)
