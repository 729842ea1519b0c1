import json
import sys

from django.core.management.base import BaseCommand, CommandError

from retraining.management.commands.train import parse_until
from retraining.ml.manifest import json_safe
from retraining.services.reporting import metrics_table
from retraining.services.training import baselines_evaluate


class Command(BaseCommand):
    help = "Score most-popular and the collaborative model alone on the evaluation protocol's holdout."

    def add_arguments(self, parser):
        parser.add_argument("--until", help="cut-off time (ISO 8601): only events before it are used")
        parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")

    def handle(self, *args, **options):
        try:
            result = baselines_evaluate(until=parse_until(options["until"]), progress=sys.stderr)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        if options["json"]:
            self.stdout.write(json.dumps(json_safe(result), allow_nan=False))
            return
        self.stdout.write(metrics_table(metrics=None, baselines=result["baselines"], dataset=result["dataset"]))
