import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from retraining.services.training import TrainingParams, json_safe, training_run_execute
from retraining.services.reporting import metrics_table


def parse_until(value: str | None) -> datetime | None:
    if value is None:
        return None
    moment = parse_datetime(value)
    if moment is None:
        raise CommandError(f"--until must be an ISO 8601 time, got {value!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class Command(BaseCommand):
    help = "Train the ranker and the rating model, evaluate them and the baselines on the holdout, write artifacts."

    def add_arguments(self, parser):
        parser.add_argument("--until", help="cut-off time (ISO 8601): only events before it are used")
        parser.add_argument("--output", help="model directory (default: MODEL_STORE/runs/<timestamp>)")
        parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
        parser.add_argument("--threads", type=int, default=TrainingParams.num_threads, help="LightGBM threads")

    def handle(self, *args, **options):
        output = Path(options["output"]) if options["output"] else (
            Path(settings.MODEL_STORE) / "runs" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        )
        try:
            result = training_run_execute(
                until=parse_until(options["until"]),
                output_dir=output,
                params=TrainingParams(num_threads=options["threads"]),
                progress=sys.stderr,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if options["json"]:
            self.stdout.write(json.dumps(json_safe(result.summary()), allow_nan=False))
            return
        self.stdout.write(metrics_table(metrics=result.metrics, baselines=result.baselines, dataset=result.dataset))
        self.stdout.write(f"model directory: {output}")
