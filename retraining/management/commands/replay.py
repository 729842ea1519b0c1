import time
from pathlib import Path

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from recommendations.clock import system_now
from recommendations.services.outcomes import impression_outcomes_record
from recsite.errors import ApplicationError
from registry.models import Experiment
from retraining.models import IN_FLIGHT, TrainingRun
from retraining.selectors import experiment_rows, experiments_table, version_story_rows, version_story_table
from retraining.services.replay import replay_run


class Command(BaseCommand):
    help = (
        "Replay a MovieLens (or synthetic) timeline through the running system: import the first part, train "
        "and promote v1, then stream the rest at an accelerated clock while beat and the worker retrain on their "
        "own. Needs an empty database, and a Celery worker and beat running (make run starts them)."
    )

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument("--start-fraction", type=float, default=0.5)
        parser.add_argument("--speed", type=float, default=3600, help="simulated seconds per real second")
        parser.add_argument("--via-api", default=None, metavar="URL")
        parser.add_argument("--api-key", default=None)
        parser.add_argument("--check-every", type=int, default=2, help="real seconds between trigger checks")
        parser.add_argument(
            "--max-idle", type=float, default=1.0, help="skip quiet stretches longer than this (real s)"
        )
        parser.add_argument("--wait-at-end", type=float, default=300, help="seconds to wait for a run in flight")
        parser.add_argument("--output", default="MODEL_COMPARISON.md")
        parser.add_argument(
            "--rollout",
            choices=["shadow", "ab", "canary"],
            default=None,
            help="start each gated candidate as this kind of challenger instead of promoting it",
        )
        parser.add_argument(
            "--rollout-min-impressions",
            type=int,
            default=200,
            help="lists per arm (and per canary step) before an experiment is judged",
        )

    def handle(
        self,
        *args,
        path,
        start_fraction,
        speed,
        via_api,
        api_key,
        check_every,
        max_idle,
        wait_at_end,
        output,
        rollout,
        rollout_min_impressions,
        **options,
    ):
        if via_api and not api_key:
            raise CommandError("--via-api needs --api-key")
        try:
            report = replay_run(
                path=path,
                start_fraction=start_fraction,
                speed=speed,
                api_url=via_api,
                api_key=api_key,
                check_every_s=check_every,
                max_idle_s=max_idle,
                out=self.stdout,
                rollout=rollout,
                rollout_min_impressions=rollout_min_impressions,
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        deadline = time.monotonic() + wait_at_end
        while TrainingRun.objects.filter(status__in=IN_FLIGHT).exists() and time.monotonic() < deadline:
            time.sleep(1)
        self.stdout.write(
            f"\nreplayed {report.sent_events:,} events ({report.acknowledged_events:,} acknowledged, "
            f"{report.duplicates} duplicates, {report.failed_requests} failed requests), "
            f"{report.recommendation_requests:,} recommendation requests, {report.clock_jumps} clock jumps over quiet "
            f"stretches, {report.clock_holds} clock holds while sending caught up\n"
        )
        impression_outcomes_record(now=system_now())  # beat's last minute may not have run: the tables read outcomes
        self.stdout.write(version_story_table(version_story_rows()))
        if Experiment.objects.exists():
            self.stdout.write("\nExperiments (per arm: lists served, CTR, hit rate@10):\n")
            self.stdout.write(experiments_table(experiment_rows()))
        call_command("export_model_comparison", "--output", output, stdout=self.stdout)
