import json
from pathlib import Path

from registry.models import ModelVersion
from registry.services import VersionInput, model_version_register


def artifact_dir(tmp_path: Path, marker: str = "a") -> Path:
    folder = tmp_path / f"artifact-{marker}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ranker.txt").write_text(f"tree\nmarker={marker}\n")
    (folder / "manifest.json").write_text(json.dumps({"marker": marker}))
    return folder


def registered_version(tmp_path: Path, *, ndcg: float = 0.1, marker: str | None = None, **metrics) -> ModelVersion:
    marker = marker or f"m{ModelVersion.objects.count()}"
    data = VersionInput(
        metrics={"ndcg@10": ndcg, "rmse": 0.9, "mae": 0.7, "r2": 0.25, "recall@10": 0.1, "map@10": 0.05, **metrics},
        baseline_metrics={"popularity": {"ndcg@10": 0.07}},
        dataset_stats={"users": 10, "items": 20, "events": 300},
        parameters={"num_leaves": 31},
        manifest={"marker": marker},
        trigger_reason="manual",
    )
    return model_version_register(artifact_dir=artifact_dir(tmp_path, marker), data=data)
