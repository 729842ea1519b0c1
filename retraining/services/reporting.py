"""Plain-text tables for the commands."""

from recsite.formatting import number
from retraining.ml.metrics import RANKING_METRICS, RATING_BASELINES


def metrics_table(*, metrics: dict | None, baselines: dict, dataset: dict, k: int = 10) -> str:
    names = [f"{m}@{k}" for m in RANKING_METRICS]
    ranking_baselines = {name: row for name, row in baselines.items() if name not in RATING_BASELINES}
    rows = ([("LightGBM ranker", metrics)] if metrics else []) + list(ranking_baselines.items())
    lines = [
        f"events {dataset['events']} (train {dataset['train_events']}, holdout {dataset['holdout_events']}), "
        f"users {dataset['users']}, active items {dataset['items']}",
        f"{'model':<18}" + "".join(f"{n:>14}" for n in names),
    ]
    lines += [f"{label:<18}" + "".join(f"{row[n]:>14.4f}" for n in names) for label, row in rows]
    if metrics:
        for name, row in ranking_baselines.items():
            base = row[f"ndcg@{k}"]
            lift = f"{metrics[f'ndcg@{k}'] / base:.2f}x" if base else "n/a"
            lines.append(f"NDCG@{k} lift over {name}: {lift}")
        if "candidate_recall@100" in metrics:
            lines.append(
                f"candidate stage: recall@100 {metrics['candidate_recall@100']:.4f}, whole pool "
                f"{metrics['candidate_recall']:.4f} ({metrics['candidates_per_user']:.0f} items per user)"
            )
        lines.append(f"rating model: RMSE {metrics['rmse']:.4f}  MAE {metrics['mae']:.4f}  R2 {metrics['r2']:.4f}")
        lines += [
            rating_baseline_line(name, baselines[name], metrics) for name in RATING_BASELINES if name in baselines
        ]
    return "\n".join(lines)


def rating_baseline_line(name: str, row: dict, metrics: dict) -> str:
    """One rating baseline's RMSE/MAE/R² and the model's RMSE change against it."""
    label = f"{name} (λ={row['l2']:g})" if "l2" in row else name
    known = row.get("rmse") and metrics.get("rmse") is not None
    change = f"{metrics['rmse'] / row['rmse'] - 1:+.1%}" if known else "n/a"
    return (
        f"  baseline {label}: RMSE {number(row.get('rmse'))}  MAE {number(row.get('mae'))}  "
        f"R2 {number(row.get('r2'))}  (model's RMSE {change})"
    )
