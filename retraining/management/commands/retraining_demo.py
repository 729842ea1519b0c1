import sys
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

from recommendations.clock import system_now
from recommendations.models import Interaction
from recsite.formatting import number
from registry.selectors import champion_version
from retraining.ml.metrics import RATING_BASELINES
from retraining.services.demo import (
    demo_comparison_events,
    demo_comparison_rows,
    demo_rating_baselines,
    demo_timeline_prepare,
)
from retraining.services.pipeline import training_run_process
from retraining.services.reporting import rating_baseline_line
from retraining.services.runs import training_run_request


class Command(BaseCommand):
    help = (
        "The retraining lifecycle, measured: show the champion, train a new version on the data accumulated "
        "since, compare old and new on the same holdout, promote only if the gate passes, update "
        "MODEL_COMPARISON.md. On an empty database it first sets itself up on a synthetic timeline "
        "(or --dataset, a MovieLens directory)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dataset", type=Path, default=None)
        parser.add_argument("--first-part", type=float, default=0.7, help="share of the timeline v1 is trained on")
        parser.add_argument("--output", default="MODEL_COMPARISON.md")

    def handle(self, *args, dataset, first_part, output, **options):
        say = lambda text: self.stdout.write(text)  # noqa: E731
        if not Interaction.objects.exists():
            say("Empty database: setting up a timeline first.")
            demo_timeline_prepare(dataset=dataset, first_part=first_part, say=say)
        champion = champion_version()
        say("\n(1) Champion")
        if champion is None:
            say("  none yet: every user gets the popular fallback; the new version only has to beat most-popular")
        else:
            stored = ", ".join(
                f"{k} {champion.metrics[k]:.4f}"
                for k in ("ndcg@10", "map@10", "recall@10", "rmse")
                if champion.metrics.get(k) is not None
            )
            say(
                f"  {champion} (trained up to {champion.training_window_end:%Y-%m-%d %H:%M}, "
                f"{champion.trigger_reason}): {stored}"
            )
            say(
                "  (those are its numbers on its own holdout; below it is re-scored on the new one's held-out events "
                "after its cut-off)"
            )
        say("\n(2) Training a new version on all data up to now (progress on stderr)")
        run = training_run_request(
            trigger="manual", requested_by="retraining_demo", data_until=system_now(), enqueue=False
        )
        training_run_process(run_id=run.pk, echo=sys.stderr)
        run.refresh_from_db()
        self._comparison(run, champion)
        say("\n(4) Gate")
        for reason in run.gate.get("reasons", []):
            say(f"  {'✗' if reason in run.gate.get('failures', []) else '✓'} {reason}")
        verdict = (
            f"{run.model_version} PROMOTED: it is now the champion"
            if run.status == "promoted"
            else f"{run.model_version} REJECTED: {champion or 'the fallback'} keeps serving"
        )
        say(f"  → {verdict}")
        say("\n(5) Where everything is")
        call_command("export_model_comparison", "--output", output, stdout=self.stdout)
        say(f"  artifact: {run.model_version.artifact_path} (sha256 {run.model_version.artifact_sha256[:12]}…)")
        say(
            f"  run log and gate numbers: admin → Retraining → Training runs → {run.pk}, "
            f"or GET /api/v1/training-runs/{run.pk}"
        )
        say(f"  database: {settings.DATABASES['default']['NAME']}")

    def _comparison(self, run, champion):
        say = self.stdout.write
        say("\n(3) Old vs new on the same holdout")
        say(f"  every row and column below: {demo_comparison_events(run)}")
        rows = demo_comparison_rows(run)
        names = list(rows[0]["baselines"]) if rows else []
        old = str(champion) if champion else "(none)"
        say(
            f"  {'metric':<12} {old:>9} {run.model_version!s:>9} {'change':>9}  {'':<6}"
            + "".join(f" {name:>10}" for name in names)
        )
        for row in rows:
            mark = "" if row["old"] is None else {True: "better", False: "worse", None: "same"}[row["better"]]
            change = "—" if row["change"] is None else f"{row['change']:+.1%}"
            say(
                f"  {row['label']:<12} {number(row['old']):>9} {number(row['new']):>9} {change:>9}  {mark:<6}"
                + "".join(f" {number(row['baselines'][name]):>10}" for name in names)
            )
        rating, new = demo_rating_baselines(run)
        say("  rating baselines on the same held-out ratings (fitted on the same training events):")
        for name in RATING_BASELINES:
            if name in rating:
                say("  " + rating_baseline_line(name, rating[name], new))
