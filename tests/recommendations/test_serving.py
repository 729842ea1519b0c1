from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import override_settings

from recommendations.models import CatalogState, Impression, Interaction, Item
from recommendations.services.catalog import ItemInput, item_upsert
from recommendations.serving import loading, recommend
from registry.services import model_version_promote
from retraining.ml.params import TrainingParams
from tests.recommendations.factories import store_history, train_and_register

pytestmark = pytest.mark.django_db
URL = "/api/v1/users/{}/recommendations"


@pytest.fixture(autouse=True)
def isolated_serving(settings):
    settings.MODEL_POLL_SECONDS = 0


@pytest.fixture(scope="module")
def trained_once(django_db_setup, django_db_blocker, tmp_path_factory):
    """History and a registered, promoted model, committed once for the module (tests roll back on top)."""
    folder = tmp_path_factory.mktemp("serving")
    with django_db_blocker.unblock(), override_settings(MODEL_STORE=folder / "store"):
        store_history()
        version = train_and_register(folder)
        model_version_promote(version=version.version, actor="test")
        yield version
        call_command("flush", interactive=False, verbosity=0)


@pytest.fixture
def served(trained_once, settings):
    settings.MODEL_STORE = Path(trained_once.artifact_path).parent
    return trained_once


def get(client, user, **params):
    return client.get(URL.format(user), params)


def test_a_known_user_is_scored_by_the_champion(served, serve_client):
    body = get(serve_client, "user-3", k=5).json()
    assert body["user_id"] == "user-3" and body["model_version"] == served.version and body["strategy"] == "model"
    assert [item["rank"] for item in body["items"]] == [1, 2, 3, 4, 5]
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_seen_and_inactive_items_never_appear(served, serve_client):
    seen = set(Interaction.objects.filter(user__external_id="user-3").values_list("item__external_id", flat=True))
    first = get(serve_client, "user-3", k=20).json()["items"]
    Item.objects.filter(external_id=first[0]["item_id"]).update(active=False)
    served_ids = {item["item_id"] for item in get(serve_client, "user-3", k=50).json()["items"]}
    assert not served_ids & seen
    assert first[0]["item_id"] not in served_ids


def test_an_item_stays_seen_after_retention_dropped_the_events_with_it(served, serve_client):
    seen = set(Interaction.objects.filter(user__external_id="user-3").values_list("item__external_id", flat=True))
    Interaction.objects.filter(user__external_id="user-3").delete()  # as retention drops old months; pairs stay
    served_ids = {item["item_id"] for item in get(serve_client, "user-3", k=50).json()["items"]}
    assert seen and not served_ids & seen


def test_category_and_exclude_filters(served, serve_client):
    body = get(serve_client, "user-5", k=10, category="genre-2").json()
    categories = dict(Item.objects.values_list("external_id", "categories"))
    assert body["items"] and all("genre-2" in categories[i["item_id"]] for i in body["items"])
    top = [i["item_id"] for i in get(serve_client, "user-5", k=3).json()["items"]]
    again = [i["item_id"] for i in get(serve_client, "user-5", k=3, exclude=",".join(top[:2])).json()["items"]]
    assert not set(top[:2]) & set(again)


def test_explain_adds_sources_and_feature_contributions(served, serve_client):
    item = get(serve_client, "user-1", k=3, explain="true").json()["items"][0]
    assert set(item["explanation"]["sources"]) <= {"collaborative", "popular"} and item["explanation"]["sources"]
    assert item["explanation"]["top_features"][0]["feature"]


def test_an_unknown_user_gets_the_labelled_popular_fallback(served, serve_client):
    body = get(serve_client, "never-seen", k=5).json()
    assert body["model_version"] is None and body["strategy"] == "popular" and len(body["items"]) == 5


@pytest.mark.parametrize(
    "query",
    [
        {"k": 0},
        {"k": 101},
        {"k": "ten"},
        {"explain": "maybe"},
        {"k": "5.0"},
        {"k": " 5"},
        {"k": "\uff15"},
        {"k": "5.0", "explain": "false"},
        {"k": 0, "category": "a"},
    ],
)
def test_bad_parameters_get_a_400(served, serve_client, query):
    assert get(serve_client, "user-3", **query).status_code == 400


@pytest.mark.parametrize("extra", [{}, {"explain": "false"}])
def test_k_means_the_same_with_or_without_other_parameters(served, serve_client, extra):
    assert len(get(serve_client, "user-3", k=7, **extra).json()["items"]) == 7


@pytest.mark.parametrize("k", [0, 101, "5.0"])
def test_similar_items_refuse_the_same_k_as_recommendations(served, serve_client, k):
    assert serve_client.get("/api/v1/items/item-4/similar", {"k": k}).status_code == 400


def test_recommendations_need_the_serve_scope(served, ingest_client):
    assert get(ingest_client, "user-3").status_code == 403


def test_every_served_list_is_logged_as_an_impression(served, serve_client):
    body = get(serve_client, "user-3", k=4).json()
    impression = Impression.objects.get(recommendation_id=body["recommendation_id"])
    assert impression.model_version == served.version and impression.user.external_id == "user-3"
    assert len(impression.items) == 4


def test_an_event_changes_the_next_recommendation(served, serve_client, ingest_client):
    before = get(serve_client, "user-7", k=10).json()
    top = before["items"][0]["item_id"]
    response = ingest_client.post(
        "/api/v1/events",
        {
            "user_id": "user-7",
            "item_id": top,
            "event_type": "rating",
            "value": 5.0,
            "recommendation_id": before["recommendation_id"],
        },
        format="json",
    )
    assert response.status_code == 201
    after = get(serve_client, "user-7", k=10).json()
    assert top not in {i["item_id"] for i in after["items"]}
    assert [i["score"] for i in after["items"][:3]] != [i["score"] for i in before["items"][1:4]]


def test_a_new_champion_is_served_and_a_failed_load_keeps_the_old(served, serve_client, tmp_path):
    assert get(serve_client, "user-3").json()["model_version"] == served.version
    second = train_and_register(tmp_path, "second")
    model_version_promote(version=second.version, actor="test")
    assert get(serve_client, "user-3").json()["model_version"] == second.version
    third = train_and_register(tmp_path, "third")
    model_version_promote(version=third.version, actor="test")
    Path(third.artifact_path).write_bytes(b"tampered")  # after the registry verified it, before this process loads it
    response = get(serve_client, "user-3")
    assert response.status_code == 200 and response.json()["model_version"] == second.version


def test_a_model_whose_blend_is_all_popularity_serves_its_candidates_in_popularity_order(
    served, serve_client, tmp_path
):
    """Serving ranks by the blend the manifest records (retraining.ml.ranker.ranker_blend_fit), not by the
    ranker's score alone: with the prior's whole share, the order is most-popular's."""
    params = TrainingParams(ranker_selection=False, ranker_popularity_weight=1.0)
    version = train_and_register(tmp_path, "popular", params=params)
    model_version_promote(version=version.version, actor="test")
    items = get(serve_client, "user-3", k=10).json()["items"]
    trained = loading.trained_model_of(version)
    assert trained.blend.ranker_coefficient == 0.0 and trained.blend.prior_coefficient > 0.0
    codes = [trained.item_external_ids.index(item["item_id"]) for item in items]
    ranks = trained.collaborative.popularity_rank[codes].tolist()
    assert len(ranks) == 10 and ranks == sorted(ranks)


def test_similar_items_come_from_the_collaborative_model(served, serve_client):
    body = serve_client.get("/api/v1/items/item-4/similar", {"k": 5}).json()
    assert body["strategy"] == "collaborative" and body["model_version"] == served.version
    assert len(body["items"]) == 5 and "item-4" not in {i["item_id"] for i in body["items"]}
    assert serve_client.get("/api/v1/items/nope/similar").status_code == 404


def test_an_item_deactivated_since_the_snapshot_was_built_is_never_served(served, serve_client, settings):
    settings.ITEM_SNAPSHOT_SECONDS = 3600
    first = get(serve_client, "user-3", k=20).json()["items"]
    trending = get(serve_client, "never-seen", k=5).json()["items"]
    Item.objects.filter(external_id__in=[first[0]["item_id"], trending[0]["item_id"]]).update(active=False)
    ranked = [item["item_id"] for item in get(serve_client, "user-3", k=20).json()["items"]]
    fallback = [item["item_id"] for item in get(serve_client, "never-seen", k=5).json()["items"]]
    assert first[0]["item_id"] not in ranked and len(ranked) == 20
    assert trending[0]["item_id"] not in fallback and len(fallback) == 5


def test_a_category_change_reaches_recommendations_when_the_snapshot_is_rebuilt(served, serve_client, settings):
    settings.ITEM_SNAPSHOT_SECONDS = 3600
    top = get(serve_client, "user-5", k=1).json()["items"][0]["item_id"]
    Item.objects.filter(external_id=top).update(categories=["brand-new"])
    settings.ITEM_SNAPSHOT_SECONDS = 0
    body = get(serve_client, "user-5", k=10, category="brand-new").json()
    assert [item["item_id"] for item in body["items"]] == [top]


@pytest.fixture
def counted_catalog(served, settings, runtime):
    """The CatalogState row (a flush by an earlier module may have removed it) and a snapshot built now
    that stays for the test."""
    CatalogState.objects.get_or_create(singleton=True)
    settings.ITEM_SNAPSHOT_SECONDS = 3600
    runtime.items.refresh(keep_going=False)


@pytest.fixture
def flag_reads(monkeypatch):
    """How many times serving re-read items' active flags."""
    reads = []
    original = recommend.inactive_items
    monkeypatch.setattr(recommend, "inactive_items", lambda *, pks: reads.append(pks) or original(pks=pks))
    return reads


def _deactivate_by_update(external_id):
    Item.objects.filter(external_id=external_id).update(active=False)


def _deactivate_by_sql(external_id):
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {Item._meta.db_table} SET active = %s WHERE external_id = %s", [False, external_id])


def _deactivate_by_upsert(external_id):
    item_upsert(items=[ItemInput(item_id=external_id, title="retired", active=False)])


@pytest.mark.parametrize("deactivate", [_deactivate_by_update, _deactivate_by_sql, _deactivate_by_upsert])
def test_any_deactivation_is_counted_and_makes_serving_re_read_the_flags(
    counted_catalog, flag_reads, serve_client, deactivate
):
    first = [item["item_id"] for item in get(serve_client, "user-3", k=10).json()["items"]]
    assert flag_reads == [], "nothing was deactivated since the snapshot: the flags are not re-read"
    before = CatalogState.objects.get().deactivations
    deactivate(first[0])
    assert CatalogState.objects.get().deactivations == before + 1
    again = [item["item_id"] for item in get(serve_client, "user-3", k=10).json()["items"]]
    assert flag_reads and first[0] not in again and len(again) == 10


def test_reactivating_or_editing_an_item_is_not_counted(counted_catalog, serve_client):
    item = Item.objects.order_by("pk").first()
    before = CatalogState.objects.get().deactivations
    Item.objects.filter(pk=item.pk).update(title="renamed")
    Item.objects.filter(pk=item.pk).update(active=False)
    Item.objects.filter(pk=item.pk).update(active=False)  # already inactive: not a deactivation
    Item.objects.filter(pk=item.pk).update(active=True)
    assert CatalogState.objects.get().deactivations == before + 1


def test_without_the_counter_serving_always_re_reads_the_flags(counted_catalog, flag_reads, serve_client, runtime):
    CatalogState.objects.all().delete()
    runtime.items.refresh(keep_going=False)
    get(serve_client, "user-3", k=10)
    get(serve_client, "never-seen", k=5)
    assert len(flag_reads) == 2


@pytest.mark.parametrize(
    "query",
    [
        "",
        "k=1",
        "k=10",
        "k=100",
        "k=007",
        "k=101",
        "k=0",
        "k=-1",
        "k=",
        "k=1.0",
        "k= 5",
        "k=\u0665",
        "k=5&k=7",
        "k=5&explain=true",
        "explain=false",
        "category=a",
        "k=5&exclude=x,y",
        "k=99999999999999999999",
    ],
)
def test_the_direct_reading_of_k_agrees_with_the_serializer(query):
    from django.http import QueryDict

    from recommendations.api.views import RecommendationsApi
    from recsite.api import validated
    from recsite.errors import ApplicationError

    def outcome(read):
        try:
            return dict(read(QueryDict(query)))
        except ApplicationError as error:
            return ("error", str(error), error.extra)

    assert outcome(RecommendationsApi.query_of) == outcome(lambda q: validated(RecommendationsApi.QuerySerializer, q))
