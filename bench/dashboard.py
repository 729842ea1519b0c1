"""Dashboard benchmark: how long the admin dashboard's charts and a user's timeline take to build on PostgreSQL.

    .venv/bin/python bench/dashboard.py [--lists 50000] [--users 5000] [--items 500] [--click-share 0.3]

Steps: recreate the database (--database-url, default bench_dashboard), migrate, then in one Django process
(`manage.py shell`): three
versions, --lists served lists of 10 items spread over the last 14 days (alternately v1 and v2, random users and
items), a click with its recommendation_id on a --click-share of them; then dashboard_charts twice and each chart
alone, and user_timeline of one user, each timed. The online chart is recommendations.selectors.online_metrics
per version over 14 days, so its time is that selector's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import benchmark_run, database_recreate, django_env, manage, step

SNIPPET = """
import json, random, time, uuid
from datetime import timedelta
from django.utils import timezone
from recommendations.models import EndUser, Impression, Interaction, Item
from recommendations.services.outcomes import impression_outcomes_record
from registry.models import ModelVersion
from retraining import dashboard
from retraining.timeline import user_timeline

config = json.loads('{config}')
rng = random.Random(0)
now = timezone.now()
items = Item.objects.bulk_create([Item(external_id=f"i{{n}}") for n in range(config["items"])])
users = EndUser.objects.bulk_create([EndUser(external_id=f"u{{n}}") for n in range(config["users"])])
for v in (1, 2, 3):
    ModelVersion.objects.create(version=v, status="active" if v == 1 else "rejected", metrics={{"ndcg@10": 0.1}},
                                baseline_metrics={{"popularity": {{"ndcg@10": 0.05}}}}, training_duration_s=30,
                                artifact_size=10**6)
lists, events = [], []
for n in range(config["lists"]):
    who, at, shown = rng.choice(users), now - timedelta(seconds=rng.uniform(0, 14 * 86400)), rng.sample(items, 10)
    lists.append(Impression(recommendation_id=uuid.uuid4(), user=who, model_version=1 + n % 2, routed_version=1 + n % 2,
                            strategy="model", arm="champion", items=[i.pk for i in shown], served_at=at))
    if rng.random() < config["click_share"]:
        events.append(Interaction(user=who, item=shown[0], event_type="click", timestamp=at + timedelta(minutes=2),
                                  recommendation_id=lists[-1].recommendation_id))
Impression.objects.bulk_create(lists, batch_size=5000)
Interaction.objects.bulk_create(events, batch_size=5000)
print(f"{{len(lists):,}} lists, {{len(events):,}} clicks")
# What beat's recorder does once a minute, all at once here: the online charts read these outcome rows.
start = time.perf_counter()
recorded = impression_outcomes_record(now=now)
print(f"outcome rows recorded (beat's job, once): {{recorded:,}} in {{time.perf_counter() - start:.1f}} s")
for attempt in (1, 2):
    start = time.perf_counter(); dashboard.dashboard_charts(now=now)
    print(f"dashboard_charts, run {{attempt}}: {{time.perf_counter() - start:.2f}} s")
versions = list(ModelVersion.objects.order_by("version"))
for name, build in [("offline", lambda: dashboard.offline_metrics_chart(versions=versions)),
                    ("online", lambda: dashboard.online_metrics_chart(now=now)), ("drift", dashboard.drift_chart),
                    ("experiment", lambda: dashboard.experiment_chart(now=now)),
                    ("training", lambda: dashboard.training_cost_chart(versions=versions)),
                    ("triggers", lambda: dashboard.trigger_timeline_chart(now=now))]:
    start = time.perf_counter(); build(); print(f"  {{name}}: {{time.perf_counter() - start:.2f}} s")
start = time.perf_counter(); page = user_timeline(external_id="u1", limit=100)
print(f"user_timeline (100 at most): {{time.perf_counter() - start:.3f}} s for {{page.total}} lists")
"""


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lists", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--click-share", type=float, default=0.3)
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/bench_dashboard")
    args = parser.parse_args(argv)
    url = args.database_url
    var_dir = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    env = django_env(database_url=url, var_dir=var_dir)
    step(f"database {url}, logs in {var_dir}")
    database_recreate(url)
    manage("migrate", "--noinput", env=env)
    config = json.dumps(
        {"lists": args.lists, "users": args.users, "items": args.items, "click_share": args.click_share}
    )
    step("serving lists and timing the dashboard")
    print(manage("shell", "-c", SNIPPET.format(config=config), env=env, timeout=3600).stdout, end="")


if __name__ == "__main__":
    benchmark_run(main)
