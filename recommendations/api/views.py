import logging
from collections import Counter

from django.conf import settings
from django.utils import timezone
from drf_spectacular.utils import (
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from recommendations import sql
from recommendations.models import EventType
from recommendations.runtime import process_runtime
from recommendations.services.catalog import ItemInput, item_upsert
from recommendations.services.events import EventInput, event_ingest
from recommendations.serving.recommend import recommendations_for, serving_health, similar_items
from recsite import metrics
from recsite.api import (
    PastDateTimeField,
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictJSONObjectField,
    StrictSerializer,
    StrictUUIDField,
    validated,
)
from recsite.errors import ApplicationError, located

logger = logging.getLogger(__name__)  # HealthApi's database failures
EXTERNAL_ID_MAX = 128
# Limits that keep one event or item small, so that a full batch fits DATA_UPLOAD_MAX_MEMORY_SIZE.
CONTEXT_MAX_KEYS = 32
CONTEXT_MAX_BYTES = 4096
CATEGORIES_MAX = 32
CATEGORY_MAX_LENGTH = 100


def _batch(data, key: str, limit: int) -> tuple[list, bool]:
    """The list under `key`, or the body itself as a batch of one; refuses empty and oversize batches."""
    if not isinstance(data, dict):
        raise ApplicationError(
            "The body must be a JSON object.", extra={"errors": [located("body", "Expected a JSON object.")]}
        )
    if key not in data:
        return [data], False
    batch = data[key]
    if set(data) != {key}:
        extra = sorted(set(data) - {key})
        raise ApplicationError(
            "Unknown fields beside the batch.", extra={"errors": [located(f, "Unknown field.") for f in extra]}
        )
    if not isinstance(batch, list) or not batch:
        raise ApplicationError(
            f"'{key}' must be a non-empty list.", extra={"errors": [located(key, "Expected a non-empty list.")]}
        )
    if len(batch) > limit:
        raise ApplicationError(
            f"At most {limit} {key} per request.",
            extra={"errors": [located(key, f"Got {len(batch)}, the limit is {limit}.")]},
        )
    return batch, True


def _batch_schema(name: str, key: str, child: type[serializers.Serializer]) -> serializers.Serializer:
    """The schema of a batch body as `_batch` takes it: {key: [child, ...]}."""
    batch = serializers.ListField(child=child(), min_length=1, max_length=settings.MAX_EVENTS_PER_REQUEST)
    return inline_serializer(name, fields={key: batch})


class EventIngestApi(APIView):
    required_scope = "ingest"

    @extend_schema_serializer(component_name="EventInput")
    class InputSerializer(StrictSerializer):
        event_id = StrictUUIDField(required=False, allow_null=True)
        user_id = StrictCharField(max_length=EXTERNAL_ID_MAX)
        item_id = StrictCharField(max_length=EXTERNAL_ID_MAX)
        event_type = serializers.ChoiceField(choices=EventType.choices)
        value = StrictFloatField(required=False, allow_null=True)
        timestamp = PastDateTimeField(required=False)
        recommendation_id = StrictUUIDField(required=False, allow_null=True)
        context = StrictJSONObjectField(
            required=False, allow_null=True, max_keys=CONTEXT_MAX_KEYS, max_bytes=CONTEXT_MAX_BYTES
        )

        def validate(self, attrs):
            value = attrs.get("value")
            if attrs["event_type"] == EventType.RATING:
                low, high = settings.RATING_MIN, settings.RATING_MAX
                if value is None:
                    raise serializers.ValidationError({"value": "A rating needs a value."})
                if not low <= value <= high:
                    raise serializers.ValidationError({"value": f"A rating must be between {low:g} and {high:g}."})
            return attrs

    @extend_schema_serializer(component_name="EventIngestResult")
    class OutputSerializer(serializers.Serializer):
        accepted = serializers.IntegerField()
        duplicates = serializers.IntegerField()

    @extend_schema(
        request=PolymorphicProxySerializer(
            component_name="EventIngestBody",
            serializers=[InputSerializer, _batch_schema("EventBatch", "events", InputSerializer)],
            resource_type_field_name=None,
        ),
        responses={201: OutputSerializer, 400: OpenApiResponse(description="Invalid events; nothing was written.")},
        summary='Record one event, or a batch as {"events": [...]} (all or nothing)',
    )
    def post(self, request):
        batch, _ = _batch(request.data, "events", settings.MAX_EVENTS_PER_REQUEST)
        metrics.INGEST_BATCH_SIZE.labels("events").observe(len(batch))
        try:
            valid = validated(
                self.InputSerializer, batch, many=True, message="Some events are invalid; nothing was written."
            )
            now = timezone.now()
            result = event_ingest(events=[EventInput(**{"timestamp": now, **event}) for event in valid])
        except ApplicationError:
            metrics.events_count(counts=_event_types_of(batch), outcome="rejected")
            raise
        return Response(self.OutputSerializer(result).data, status=status.HTTP_201_CREATED)


def _event_types_of(batch: list) -> Counter:
    """The batch's events by type, for the metrics: "invalid" for what is not a known type (bounded labels)."""
    return Counter(
        event.get("event_type")
        if isinstance(event, dict) and event.get("event_type") in EventType.values
        else "invalid"
        for event in batch
    )


class _ItemFields(StrictSerializer):
    title = StrictCharField(max_length=500, required=False, allow_blank=True, default="")
    categories = serializers.ListField(
        child=StrictCharField(max_length=CATEGORY_MAX_LENGTH), max_length=CATEGORIES_MAX, required=False, default=list
    )
    attributes = StrictJSONObjectField(required=False, default=dict)
    active = StrictBooleanField(required=False, default=True)


class ItemBulkUpsertApi(APIView):
    required_scope = "ingest"

    @extend_schema_serializer(component_name="ItemInput")
    class InputSerializer(_ItemFields):
        item_id = StrictCharField(max_length=EXTERNAL_ID_MAX)

    @extend_schema_serializer(component_name="ItemUpsertResult")
    class OutputSerializer(serializers.Serializer):
        created = serializers.IntegerField()
        updated = serializers.IntegerField()

    @extend_schema(
        request=_batch_schema("ItemBatch", "items", InputSerializer),
        responses={200: OutputSerializer, 400: OpenApiResponse(description="Invalid items; nothing was written.")},
        summary='Create or replace items, as {"items": [...]} (all or nothing)',
    )
    def post(self, request):
        batch, is_batch = _batch(request.data, "items", settings.MAX_EVENTS_PER_REQUEST)
        if not is_batch:
            raise ApplicationError(
                'Expected {"items": [...]}.', extra={"errors": [located("items", "This field is required.")]}
            )
        metrics.INGEST_BATCH_SIZE.labels("items").observe(len(batch))
        valid = validated(
            self.InputSerializer, batch, many=True, message="Some items are invalid; nothing was written."
        )
        result = item_upsert(items=[ItemInput(**item) for item in valid])
        return Response(self.OutputSerializer(result).data)


class ItemUpsertApi(APIView):
    required_scope = "ingest"

    @extend_schema_serializer(component_name="ItemFields")
    class InputSerializer(_ItemFields):
        pass

    @extend_schema(
        request=InputSerializer,
        responses={200: ItemBulkUpsertApi.OutputSerializer, 201: ItemBulkUpsertApi.OutputSerializer},
        summary="Create (201) or replace (200) one item",
    )
    def put(self, request, item_id: str):
        if len(item_id) > EXTERNAL_ID_MAX:
            raise ApplicationError(
                "item_id is too long.", extra={"errors": [located("item_id", f"At most {EXTERNAL_ID_MAX} characters.")]}
            )
        valid = validated(self.InputSerializer, request.data, message="The item is invalid; nothing was written.")
        result = item_upsert(items=[ItemInput(item_id=item_id, **valid)])
        return Response(
            ItemBulkUpsertApi.OutputSerializer(result).data,
            status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK,
        )


class ModelHealthOutput(serializers.Serializer):
    serving_version = serializers.IntegerField(allow_null=True)
    expected_version = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(allow_null=True)


class HealthApi(APIView):
    """For load balancers, unauthenticated, so it never shows exception text (details go to the log).
    200 `ok`: serving the champion the pointer names. 200 `degraded`: serving an older champion because the
    named one does not load (still a model; taking every such process out at once would leave nothing).
    503 `degraded`: a champion is named but this process serves only the popular fallback.
    503 `unavailable`: the database is unreachable."""

    authentication_classes: list = []
    permission_classes = [AllowAny]

    class OutputSerializer(serializers.Serializer):  # the schema; the view builds the same fields directly
        status = serializers.ChoiceField(choices=["ok", "degraded", "unavailable"])
        database = serializers.ChoiceField(choices=["ok", "unreachable"])
        message = serializers.CharField(required=False)
        model = ModelHealthOutput(required=False)

    @extend_schema(
        responses={
            200: OpenApiResponse(OutputSerializer, description="Serving the champion, or an older one (degraded)."),
            503: OpenApiResponse(OutputSerializer, description="No database, or no model while one is named."),
        },
        summary="Health for load balancers (no key needed)",
    )
    def get(self, request):
        try:
            sql.database_ping()
        except Exception:  # any database failure means "not healthy", never a 500
            logger.exception("health check: the database is unreachable")
            body = {"status": "unavailable", "database": "unreachable", "message": "The database is unreachable."}
            return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        health = serving_health(runtime=process_runtime())
        if not health.degraded:
            return Response({"status": "ok", "database": "ok"})
        model = {"serving_version": health.serving, "expected_version": health.expected, "error": health.error}
        code = status.HTTP_503_SERVICE_UNAVAILABLE if health.serving is None else status.HTTP_200_OK
        return Response({"status": "degraded", "database": "ok", "model": model}, status=code)


class ServedItem(serializers.Serializer):
    item_id = serializers.CharField()
    score = serializers.FloatField()
    rank = serializers.IntegerField()
    explanation = serializers.JSONField(required=False)


@extend_schema_field(ServedItem(many=True))
class _ServedItems(serializers.JSONField):
    """The served items as `recommendations_for` builds them, already of JSON types: documented as a list of
    ServedItem but passed through, because converting each field of each item cost 0.35 ms a response."""


K_DEFAULT = 10


def k_parse(text: str) -> int | None:
    """The list length `?k=`: a whole number from 1 to MAX_RECOMMENDATIONS written in ASCII digits, else None.
    The only parser of `k`; KField and the recommendations fast path both ask it."""
    if text.isascii() and text.isdigit() and 1 <= (k := int(text)) <= settings.MAX_RECOMMENDATIONS:
        return k
    return None


class KField(serializers.IntegerField):
    default_error_messages = {"invalid_k": f"Must be a whole number from 1 to {settings.MAX_RECOMMENDATIONS}."}

    def __init__(self, **kwargs):
        super().__init__(min_value=1, max_value=settings.MAX_RECOMMENDATIONS, default=K_DEFAULT, **kwargs)

    def to_internal_value(self, data):
        k = k_parse(data) if isinstance(data, str) else None
        if k is None:
            self.fail("invalid_k")
        return k


class RecommendationsApi(APIView):
    required_scope = "serve"

    class QuerySerializer(serializers.Serializer):
        k = KField()
        category = serializers.CharField(required=False, max_length=CATEGORY_MAX_LENGTH)
        exclude = serializers.CharField(required=False, max_length=10_000)
        explain = serializers.BooleanField(required=False, default=False)

    @extend_schema_serializer(component_name="Recommendations")
    class OutputSerializer(serializers.Serializer):  # the schema; the view builds the same fields directly
        user_id = serializers.CharField()
        model_version = serializers.IntegerField(allow_null=True)
        strategy = serializers.CharField()
        recommendation_id = serializers.UUIDField()
        items = _ServedItems()

    @extend_schema(parameters=[QuerySerializer], responses={200: OutputSerializer}, summary="Top-k items for a user")
    def get(self, request, user_id: str):
        query = self.query_of(request.query_params)
        exclude = [part.strip() for part in query.get("exclude", "").split(",") if part.strip()]
        result = recommendations_for(
            runtime=process_runtime(),
            user_external_id=user_id,
            k=query["k"],
            category=query.get("category"),
            exclude=exclude,
            explain=query["explain"],
        )
        return Response(
            {
                "user_id": result.user_id,
                "model_version": result.model_version,
                "strategy": result.strategy,
                "recommendation_id": str(result.recommendation_id),
                "items": result.items,
            }
        )

    @classmethod
    def query_of(cls, params) -> dict:
        """The query as QuerySerializer validates it. The usual `?k=N` (or none) is read directly, by the
        same rules, because setting up the serializer cost 0.1 ms a request; anything else goes through it."""
        k = k_parse(params.get("k", str(K_DEFAULT)))
        if params.keys() <= {"k"} and k is not None:
            return {"k": k, "explain": False}
        return validated(cls.QuerySerializer, params)


class SimilarItemsApi(APIView):
    required_scope = "serve"

    class QuerySerializer(serializers.Serializer):
        k = KField()

    class OutputSerializer(serializers.Serializer):  # the schema; the view builds the same fields directly
        item_id = serializers.CharField()
        model_version = serializers.IntegerField(allow_null=True)
        strategy = serializers.ChoiceField(choices=["collaborative", "popular_in_category", "popular"])
        items = ServedItem(many=True)

    @extend_schema(
        parameters=[QuerySerializer],
        responses={200: OutputSerializer},
        summary="Items similar to an item (collaborative model)",
    )
    def get(self, request, item_id: str):
        query = validated(self.QuerySerializer, request.query_params)
        version, strategy, items = similar_items(runtime=process_runtime(), item_external_id=item_id, k=query["k"])
        return Response({"item_id": item_id, "model_version": version, "strategy": strategy, "items": items})
