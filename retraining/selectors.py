"""Reads across retraining and the registry: the per-version story of a running system."""

from datetime import datetime, timezone

from recommendations.selectors import online_hit_rate
from recsite.formatting import number
from registry.models import Experiment, ModelVersion
from retraining.services.policy import policy_active
from retraining.services.rollout import challenger_report

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
        lines.append(f"| {r['version']} | {r['trigger']} | {r['window']} | {number(r['ndcg@10'])} | "
                     f"{number(r['map@10'])} | {number(r['rmse'])} | {online} | {r['status']} | {r['why']} |")
    return "\n".join(lines) + "\n"


def experiment_rows() -> list[dict]:
    """One row per experiment, oldest first, with its arms as last judged (a running one is judged now)."""
    rows = []
    for experiment in Experiment.objects.order_by("id").select_related("version", "champion"):
        report = experiment.last_report
        if experiment.status == Experiment.Status.RUNNING:
            report = challenger_report(experiment=experiment, confidence=policy_active().rollout_confidence)
        arms = report.get("arms", {})
        treatment = "shadow" if experiment.mode == "shadow" else "challenger"
        rows.append({
            "experiment": experiment.pk, "mode": experiment.mode, "champion": str(experiment.champion or "—"),
            "challenger": str(experiment.version), "traffic": experiment.traffic_percent, "status": experiment.status,
            "control": arms.get("champion", {}), "treatment": arms.get(treatment, {}),
            "ctr": report.get("differences", {}).get("ctr", {}),
            "hit_rate": report.get("differences", {}).get("hit_rate", {}), "verdict": report.get("verdict", "—"),
            "why": experiment.outcome_reason,
        })
    return rows


def experiments_table(rows: list[dict]) -> str:
    header = "| # | Mode | Champion arm | Challenger arm | Δ CTR (95% CI) | Δ hit rate (95% CI) | Verdict | Status | Why |"
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['experiment']} | {r['mode']} {r['traffic']}% | {r['champion']}: {_arm(r['control'])} | "
                     f"{r['challenger']}: {_arm(r['treatment'])} | {_delta(r['ctr'])} | {_delta(r['hit_rate'])} | "
                     f"{r['verdict']} | {r['status']} | {r['why'] or '—'} |")
    return "\n".join(lines) + "\n"


def _delta(difference: dict) -> str:
    if difference.get("delta") is None:
        return "—"
    return f"{difference['delta']:+.3f} ({difference['ci_low']:+.3f} … {difference['ci_high']:+.3f})"


def _arm(arm: dict) -> str:
    if not arm or not arm.get("impressions"):
        return "no lists"
    return f"{arm['impressions']:,} lists, CTR {number(arm['ctr'])}, hit rate {number(arm['hit_rate'])}"


def _day(moment) -> str:
    return moment.strftime("%Y-%m-%d") if moment else "—"
