from datetime import UTC, datetime, timedelta

import pytest

from recommendations.models import Impression, Item
from recommendations.selectors import impression_outcomes, online_hit_rate, online_metrics
from recommendations.services.outcomes import impression_outcomes_record
from retraining.services.experiments import arms_compare
from tests.recommendations.factories import event, experiment_traffic, outcomes_recorded, serve, user

pytestmark = pytest.mark.django_db
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def catalog():
    return [Item.objects.create(external_id=f"i{n}") for n in range(15)]


def outcome(impression, **kwargs):
    rows = impression_outcomes(impressions=Impression.objects.all(), **kwargs).set_index("id")
    return rows.loc[impression.pk]


def test_an_event_carrying_the_recommendation_id_on_a_served_item_is_a_click_and_a_hit(catalog):
    shown = serve(user(), catalog[:10], T0)
    event(user(), catalog[3], "click", T0 + timedelta(hours=5), rec=shown)
    row = outcome(shown)
    assert row["clicked"] and row["hit"] and row["delay_s"] == 5 * 3600


def test_an_event_on_an_item_the_list_did_not_serve_earns_it_nothing(catalog):
    shown = serve(user(), catalog[:10], T0)
    event(user(), catalog[12], "click", T0 + timedelta(minutes=1), rec=shown)
    row = outcome(shown)
    assert not row["clicked"] and not row["hit"]


def test_an_event_without_an_id_is_attributed_within_the_window_only(catalog, settings):
    settings.ATTRIBUTION_WINDOW_MINUTES = 30
    early, late = serve(user("a"), catalog[:10], T0), serve(user("b"), catalog[:10], T0)
    event(user("a"), catalog[1], "view", T0 + timedelta(minutes=29))
    event(user("b"), catalog[1], "view", T0 + timedelta(minutes=31))
    event(user("b"), catalog[2], "view", T0 - timedelta(minutes=1))
    assert outcome(early)["clicked"]
    assert not outcome(late)["clicked"]


def test_the_latest_list_that_served_the_item_takes_the_event(catalog):
    first = serve(user(), catalog[:10], T0, version=1)
    second = serve(user(), catalog[:5], T0 + timedelta(minutes=10), version=2)
    event(user(), catalog[2], "like", T0 + timedelta(minutes=12))
    rows = impression_outcomes(impressions=Impression.objects.filter(routed_version=1)).set_index("id")
    assert not rows.loc[first.pk, "hit"], "version 2's later list showed the item, so the like is its"
    assert outcome(second)["hit"]


def test_a_dislike_is_never_a_click_or_a_hit(catalog):
    shown = serve(user(), catalog[:10], T0)
    event(user(), catalog[0], "dislike", T0 + timedelta(minutes=1), rec=shown)
    row = outcome(shown)
    assert not row["clicked"] and not row["hit"]


def test_a_rating_is_a_hit_but_not_a_click_and_feeds_the_mean_rating(catalog):
    shown = serve(user(), catalog[:10], T0)
    event(user(), catalog[0], "rating", T0 + timedelta(minutes=1), rec=shown, value=4.0)
    event(user(), catalog[1], "rating", T0 + timedelta(minutes=2), rec=shown, value=2.0)
    row = outcome(shown)
    assert row["hit"] and not row["clicked"]
    assert row["rating_sum"] / row["rating_count"] == 3.0


def test_an_engagement_below_the_top_k_is_a_click_but_not_a_hit(catalog):
    shown = serve(user(), catalog[:15], T0)
    event(user(), catalog[12], "click", T0 + timedelta(minutes=1), rec=shown)
    row = outcome(shown)
    assert row["clicked"] and not row["hit"]


def test_a_shadow_list_earns_what_the_user_did_with_its_items_even_under_the_champions_id(catalog):
    shown = serve(user(), catalog[:5], T0, version=1)
    shadow = serve(user(), catalog[3:8], T0, version=2, arm="shadow", shadow_of=shown.recommendation_id)
    event(user(), catalog[6], "click", T0 + timedelta(minutes=3), rec=shown)
    assert outcome(shadow)["clicked"], "the shadow list had the item the user clicked"
    assert not outcome(shown)["clicked"], "the champion's list did not"


def test_online_metrics_are_split_by_day_and_arm_with_cold_start_share(catalog):
    for n in range(4):
        shown = serve(user(f"u{n}"), catalog[:10], T0 + timedelta(hours=n))
        if n < 2:
            event(user(f"u{n}"), catalog[0], "click", T0 + timedelta(hours=n, minutes=1), rec=shown)
    serve(user("cold"), catalog[:10], T0, strategy="popular")
    serve(user("next-day"), catalog[:10], T0 + timedelta(days=1))
    impression_outcomes_record(now=T0 + timedelta(days=1, hours=1))
    rows = online_metrics(version=1, start=T0 - timedelta(days=1), end=T0 + timedelta(days=2), bucket="day")
    first, second = rows
    assert (first["impressions"], first["ctr"], first["cold_start_share"], first["complete"]) == (5, 0.4, 0.2, True)
    assert (second["impressions"], second["complete"]) == (1, False)
    assert first["arm"] == second["arm"] == "champion"


def test_online_hit_rate_counts_the_lists_a_version_served(catalog):
    for n in range(4):
        shown = serve(user(f"u{n}"), catalog[:10], T0 + timedelta(hours=n), version=3)
        if n == 0:
            event(user(f"u{n}"), catalog[0], "purchase", T0 + timedelta(hours=n, minutes=1), rec=shown)
    outcomes_recorded()
    rate = online_hit_rate(model_version=3, start=T0, end=T0 + timedelta(days=1))
    assert (rate.impressions, rate.hits) == (4, 1)


def simulate_experiment(catalog, *, users, control_rate, treatment_rate, seed=0):
    experiment_traffic(
        experiment=7,
        items=catalog,
        users=users,
        start=T0,
        control_rate=control_rate,
        treatment_rate=treatment_rate,
        seed=seed,
    )
    outcomes_recorded()


def test_a_clearly_worse_challenger_is_reported_worse_with_an_interval_below_zero(catalog):
    simulate_experiment(catalog, users=400, control_rate=0.40, treatment_rate=0.15)
    report = arms_compare(experiment_id=7, treatment_arm="challenger", min_impressions=300)
    assert report["verdict"] == "challenger_worse"
    ctr = report["differences"]["ctr"]
    assert ctr["ci_low"] < ctr["delta"] < ctr["ci_high"] < 0
    assert report["arms"]["champion"]["impressions"] == report["arms"]["challenger"]["impressions"] == 600


def test_equal_arms_show_no_significant_difference(catalog):
    simulate_experiment(catalog, users=400, control_rate=0.30, treatment_rate=0.30, seed=3)
    report = arms_compare(experiment_id=7, treatment_arm="challenger", min_impressions=300)
    assert report["verdict"] == "no_significant_difference", report["differences"]


def test_an_experiment_is_not_judged_before_its_minimum_sample(catalog):
    simulate_experiment(catalog, users=40, control_rate=0.9, treatment_rate=0.0)
    report = arms_compare(experiment_id=7, treatment_arm="challenger", min_impressions=1000)
    assert report["verdict"] == "insufficient_sample" and not report["sufficient_sample"]


def test_a_shadow_report_measures_the_overlap_of_the_two_lists(catalog):
    shown = serve(user(), catalog[:10], T0, experiment=7)
    serve(user(), catalog[5:15], T0, version=2, arm="shadow", experiment=7, shadow_of=shown.recommendation_id)
    outcomes_recorded()
    report = arms_compare(experiment_id=7, treatment_arm="shadow", min_impressions=1)
    assert report["overlap_at_k"] == 0.5
    assert report["attribution"] == "user, item and time"


@pytest.mark.parametrize("treatment", ["challenger", "shadow"])
def test_the_report_from_outcome_rows_equals_the_raw_attribution_of_the_experiments_lists(catalog, treatment):
    experiment_traffic(
        experiment=7,
        items=catalog,
        users=80,
        start=T0,
        control_rate=0.4,
        treatment_rate=0.25,
        treatment_arm=treatment,
        treatment_errors=0.1,
        seed=5,
    )
    outcomes_recorded()
    report = arms_compare(experiment_id=7, treatment_arm=treatment, min_impressions=10)
    raw = impression_outcomes(
        impressions=Impression.objects.filter(experiment_id=7), by_recommendation_id=treatment != "shadow"
    )
    rates = {}
    for arm in ("champion", treatment):
        lists, summary = raw[raw["arm"] == arm], report["arms"][arm]
        assert (summary["impressions"], summary["users"]) == (len(lists), lists["user_id"].nunique())
        assert summary["ctr"] == pytest.approx(lists["clicked"].mean())
        assert summary["hit_rate"] == pytest.approx(lists["hit"].mean())
        assert summary["error_share"] == pytest.approx((lists["strategy"] == "error").mean())
        rates[arm] = lists["clicked"].mean()
    assert report["differences"]["ctr"]["delta"] == pytest.approx(rates[treatment] - rates["champion"])
