from django.core.management.base import BaseCommand, CommandError

from retraining.services.mlflow_mirror import MirrorBusy, mlflow_enabled, mlflow_sync


class Command(BaseCommand):
    help = (
        "Mirror every finished training run, every model version and the champion / challenger aliases to MLflow "
        "(MLFLOW_TRACKING_URI): after an MLflow outage, or when MLflow is added to a running system. Idempotent."
    )

    def handle(self, *args, **options):
        if not mlflow_enabled():
            raise CommandError("MLFLOW_TRACKING_URI is not set: there is no MLflow to mirror to.")
        try:
            done = mlflow_sync()
        except MirrorBusy as exc:
            raise CommandError(f"{exc}; retry in a moment.") from exc
        except Exception as exc:
            raise CommandError(f"MLflow refused or did not answer: {type(exc).__name__}: {exc}") from exc
        self.stdout.write(f"mirrored {done['training_runs']} training runs and {done['versions']} versions to MLflow")
