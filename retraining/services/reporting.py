"""Plain-text tables for the commands."""

from retraining.ml.metrics import RANKING_METRICS


def metrics_table(*, metrics: dict | None, baselines: dict, dataset: dict, k: int = 10) -> str:
    names = [f"{m}@{k}" for m in RANKING_METRICS]
    rows = ([("LightGBM ranker", metrics)] if metrics else []) + list(baselines.items())
    lines = [
        f"events {dataset['events']} (train {dataset['train_events']}, holdout {dataset['holdout_events']}), "
        f"users {dataset['users']}, active items {dataset['items']}",
        f"{'model':<18}" + "".join(f"{n:>14}" for n in names),
    ]
    lines += [f"{label:<18}" + "".join(f"{row[n]:>14.4f}" for n in names) for label, row in rows]
    if metrics:
        for name, row in baselines.items():
            base = row[f"ndcg@{k}"]
            lift = f"{metrics[f'ndcg@{k}'] / base:.2f}x" if base else "n/a"
            lines.append(f"NDCG@{k} lift over {name}: {lift}")
        if "candidate_recall@100" in metrics:
            lines.append(f"candidate stage: recall@100 {metrics['candidate_recall@100']:.4f}, whole pool "
                         f"{metrics['candidate_recall']:.4f} ({metrics['candidates_per_user']:.0f} items per user)")
        lines.append(f"rating model: RMSE {metrics['rmse']:.4f}  MAE {metrics['mae']:.4f}  R2 {metrics['r2']:.4f}")
    return "\n".join(lines)
