"""Reads across retraining and the registry: the per-version story of a running system."""

from datetime import datetime, timezone

from recommendations.selectors import online_hit_rate
from registry.models import ModelVersion

ALL_TIME = (datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(9999, 1, 1, tzinfo=timezone.utc))


def version_story_rows() -> list[dict]:
    """One row per version, oldest first: what triggered it, its window, offline and online scores, and
    what the gate decided and why."""
    rows = []
    for version in ModelVersion.objects.order_by("version").prefetch_related("training_runs"):
        run = version.training_runs.first()
        online = online_hit_rate(model_version=version.version, start=ALL_TIME[0], end=ALL_TIME[1])
        gate = run.gate if run else {}
        why = gate.get("failures") or gate.get("reasons") or []
        rows.append({
            "version": version.label,
            "trigger": version.trigger_reason or "—",
            "window": f"{_day(version.training_window_start)} → {_day(version.training_window_end)}",
            "ndcg@10": version.metrics.get("ndcg@10"),
            "map@10": version.metrics.get("map@10"),
            "rmse": version.metrics.get("rmse"),
            "online_hit_rate": online.rate,
            "impressions": online.impressions,
            "status": version.status,
            "why": "; ".join(why[:2]) if gate.get("failures") else (why[0] if why else ""),
        })
    return rows


def version_story_table(rows: list[dict]) -> str:
    header = "| Version | Trigger | Training window | NDCG@10 | MAP@10 | RMSE | Online hit rate (lists) | Status | Why |"
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        online = "—" if r["online_hit_rate"] is None else f"{r['online_hit_rate']:.3f} ({r['impressions']})"
        lines.append(f"| {r['version']} | {r['trigger']} | {r['window']} | {_f(r['ndcg@10'])} | {_f(r['map@10'])} | "
                     f"{_f(r['rmse'])} | {online} | {r['status']} | {r['why']} |")
    return "\n".join(lines) + "\n"


def _day(moment) -> str:
    return moment.strftime("%Y-%m-%d") if moment else "—"


def _f(value) -> str:
    return "—" if value is None else f"{value:.4f}"
