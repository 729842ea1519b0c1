from pathlib import Path

from django.core.management.base import BaseCommand

from registry.selectors import model_history_markdown
from retraining.selectors import trigger_efficacy_rows, trigger_efficacy_table

# Lives in retraining, not registry: the efficacy section reads training runs, and registry imports no other app.
EFFICACY_INTRO = (
    "Per trigger kind: the runs it started (a run several triggers started counts for each; *all* counts every run "
    "once), how many became the champion, the ΔNDCG@10 of those over the champion they were gated against (same "
    "held-out events), the trainer's time, the runs the gate refused for too few new holdout users (share of the "
    "finished runs), and the trigger checks that the policy's `min_new_holdout_users` held instead.\n\n"
)


class Command(BaseCommand):
    help = (
        "Write the version history as a Markdown table, and the trigger efficacy report (default MODEL_COMPARISON.md)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--output", default="MODEL_COMPARISON.md")

    def handle(self, *args, output, **options):
        path = Path(output)
        text = (
            "# Model versions\n\nNewest first; the active version is in bold.\n\n"
            + model_history_markdown()
            + "\n## Trigger efficacy\n\n"
            + EFFICACY_INTRO
            + trigger_efficacy_table(trigger_efficacy_rows())
        )
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(text)
        temporary.replace(path)
        self.stdout.write(f"wrote {path.resolve()}")
