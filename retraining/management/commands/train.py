import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils.dateparse import parse_datetime

from registry.services import model_version_promote
from retraining.ml.manifest import json_safe
from retraining.ml.params import TrainingParams
from retraining.services.mlflow_mirror import model_version_mirror_schedule
from retraining.services.pipeline import candidate_register, drift_reference_attach, training_cluster
from retraining.services.policy import policy_active
from retraining.services.reporting import metrics_table
from retraining.services.training import model_refit, model_train


def parse_until(value: str | None) -> datetime | None:
    if value is None:
        return None
    moment = parse_datetime(value)
    if moment is None:
        raise CommandError(f"--until must be an ISO 8601 time, got {value!r}")
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = "Train the ranker and the rating model, evaluate them and the baselines on the holdout, write artifacts."

    def add_arguments(self, parser):
        parser.add_argument("--until", help="cut-off time (ISO 8601): only events before it are used")
        parser.add_argument("--output", help="model directory (default: MODEL_STORE/runs/<timestamp>)")
        parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
        parser.add_argument("--threads", type=int, default=TrainingParams.num_threads, help="LightGBM threads")
        parser.add_argument(
            "--promote",
            action="store_true",
            help="also make the new version the champion (an operator's choice, audited; no gate)",
        )
        parser.add_argument("--no-register", action="store_true", help="only write the model directory")
        parser.add_argument(
            "--refit-on-full-data",
            action="store_true",
            help="after the evaluation, train again on all events (holdout included) and keep that "
            "model; its recorded metrics are those of the evaluated model on the holdout",
        )

    def handle(self, *args, **options):
        output = (
            Path(options["output"])
            if options["output"]
            else (Path(settings.MODEL_STORE) / "runs" / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ"))
        )
        until = parse_until(options["until"])
        started = time.perf_counter()
        refit = options["refit_on_full_data"]
        try:
            result = model_train(
                until=until,
                output_dir=None if refit else output,
                params=TrainingParams(num_threads=options["threads"]),
                progress=sys.stderr,
                cluster=training_cluster(),
            )
            if refit:
                result = model_refit(
                    gated=result, until=until, output_dir=output, progress=sys.stderr, cluster=training_cluster()
                )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        version = None
        if not options["no_register"]:
            manifest = drift_reference_attach(result=result, directory=output, until=until, policy=policy_active())
            version = candidate_register(
                result=result,
                manifest=manifest,
                directory=output,
                until=until,
                trigger="manual",
                training_seconds=time.perf_counter() - started,
            )
            model_version_mirror_schedule(version=version.version)  # no training run to mirror it with
            if options["promote"]:
                model_version_promote(
                    version=version.version,
                    actor="cli:train --promote",
                    reason="operator's choice at training time (no gate)",
                )
        if options["json"]:
            summary = {**result.summary(), "version": version.version if version else None}
            self.stdout.write(json.dumps(json_safe(summary), allow_nan=False))
            return
        self.stdout.write(metrics_table(metrics=result.metrics, baselines=result.baselines, dataset=result.dataset))
        self.stdout.write(f"model directory: {output}")
        if version is not None:
            state = "promoted to champion" if options["promote"] else "registered as a candidate"
            self.stdout.write(f"{version}: {state}")
