"""Registry reads: the champion, version comparisons, the version history table."""

from dataclasses import dataclass

from recsite.formatting import number
from registry.models import Alias, Deployment, DeploymentMode, Experiment, ModelStatus, ModelVersion

# (key in metrics, label, higher is better)
COMPARED_METRICS = [
    ("rmse", "RMSE", False),
    ("mae", "MAE", False),
    ("r2", "R²", True),
    ("recall@10", "Recall@10", True),
    ("precision@10", "Precision@10", True),
    ("map@10", "MAP@10", True),
    ("ndcg@10", "NDCG@10", True),
    ("hit_rate@10", "HitRate@10", True),
    ("coverage@10", "Coverage@10", True),
]
HISTORY_METRICS = ["rmse", "mae", "r2", "recall@10", "map@10", "ndcg@10", "candidate_recall@100"]


def champion_version() -> ModelVersion | None:
    pointer = Deployment.objects.filter(alias=Alias.CHAMPION).select_related("version").first()
    return pointer.version if pointer else None


@dataclass(frozen=True)
class ServingPointers:
    """What a web worker needs to route a request: the champion and the challenger with its mode and share."""

    champion: int | None = None
    challenger: int | None = None
    mode: str = DeploymentMode.NONE
    traffic_percent: int = 0
    experiment_id: int | None = None


def serving_pointers() -> ServingPointers:
    """Both pointers in one indexed query (what web workers poll)."""
    rows = {
        alias: rest
        for alias, *rest in Deployment.objects.values_list(
            "alias", "version__version", "mode", "traffic_percent", "experiment_id"
        )
    }
    champion = rows.get(Alias.CHAMPION, [None])[0]
    challenger = rows.get(Alias.CHALLENGER)
    if not challenger or challenger[0] is None:
        return ServingPointers(champion=champion)
    version, mode, traffic, experiment_id = challenger
    return ServingPointers(
        champion=champion, challenger=version, mode=mode, traffic_percent=traffic, experiment_id=experiment_id
    )


def running_experiment(*, lock: bool = False) -> Experiment | None:
    experiments = Experiment.objects.filter(status=Experiment.Status.RUNNING).select_related("version", "champion")
    if lock:
        experiments = experiments.select_for_update(of=("self",))
    return experiments.first()


def model_versions_compare(*, a: ModelVersion, b: ModelVersion) -> list[dict]:
    """Both versions' recorded metrics side by side, with the change from a to b and which is better. Each number
    is the one its version recorded on its own holdout: a caller must say so (the two holdouts differ)."""
    rows = []
    for key, label, higher_is_better in COMPARED_METRICS:
        left, right = a.metrics.get(key), b.metrics.get(key)
        row = {
            "metric": key,
            "label": label,
            "higher_is_better": higher_is_better,
            "a": left,
            "b": right,
            "delta": None,
            "relative_change": None,
            "better": None,
        }
        if left is not None and right is not None:
            row["delta"] = right - left
            row["relative_change"] = (right - left) / abs(left) if left else None
            row["better"] = "equal" if right == left else ("b" if (right > left) == higher_is_better else "a")
        rows.append(row)
    return rows


def model_history_markdown() -> str:
    """The version history as a Markdown table, newest first, the active version marked. The rating baselines
    (user + item biases, global mean) are each version's own, on its holdout's ratings, beside its RMSE."""
    header = (
        "| Version | Date | RMSE | RMSE bias baseline | RMSE global mean | MAE | R² | Recall@10 | MAP@10 "
        "| NDCG@10 | Candidate recall@100 | Status |"
    )
    lines = [header, "|" + "---|" * 12]
    for version in ModelVersion.objects.order_by("-version"):
        baselines = version.baseline_metrics or {}
        cells = [number(version.metrics.get(key)) for key in HISTORY_METRICS]
        cells[1:1] = [number(baselines.get(name, {}).get("rmse")) for name in ("bias", "global_mean")]
        status = "**active** ✅" if version.status == ModelStatus.ACTIVE else version.status
        name = f"**{version.label}**" if version.status == ModelStatus.ACTIVE else version.label
        lines.append(f"| {name} | {version.created_at:%Y-%m-%d %H:%M} | " + " | ".join(cells) + f" | {status} |")
    return "\n".join(lines) + "\n"
