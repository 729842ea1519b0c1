"""Reads across retraining and the registry: the per-version story of a running system."""

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from recommendations.selectors import online_hit_rate
from recsite.formatting import duration, number
from registry.models import Alias, DeploymentChange, Experiment, ModelVersion
from retraining.models import IN_FLIGHT, HoldReason, RunStatus, TrainingRun, Trigger, TriggerEvaluation
from retraining.services.gate import NOT_ENOUGH_NEW_DATA
from retraining.services.policy import policy_active
from retraining.services.rollout import challenger_report

ALL_TIME = (datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))


def version_story_rows() -> list[dict]:
    """One row per version, oldest first: what triggered it, its window, offline and online scores, and
    what the gate decided and why."""
    rows = []
    for version in ModelVersion.objects.order_by("version").prefetch_related("training_runs"):
        run = version.training_runs.first()
        online = online_hit_rate(model_version=version.version, start=ALL_TIME[0], end=ALL_TIME[1])
        gate = run.gate if run else {}
        why = gate.get("failures") or gate.get("reasons") or []
        rows.append(
            {
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
            }
        )
    return rows


def version_story_table(rows: list[dict]) -> str:
    header = (
        "| Version | Trigger | Training window | NDCG@10 | MAP@10 | RMSE | Online hit rate (lists) | Status | Why |"
    )
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        online = "—" if r["online_hit_rate"] is None else f"{r['online_hit_rate']:.3f} ({r['impressions']})"
        lines.append(
            f"| {r['version']} | {r['trigger']} | {r['window']} | {number(r['ndcg@10'])} | "
            f"{number(r['map@10'])} | {number(r['rmse'])} | {online} | {r['status']} | {r['why']} |"
        )
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
        rows.append(
            {
                "experiment": experiment.pk,
                "mode": experiment.mode,
                "champion": str(experiment.champion or "—"),
                "challenger": str(experiment.version),
                "traffic": experiment.traffic_percent,
                "status": experiment.status,
                "control": arms.get("champion", {}),
                "treatment": arms.get(treatment, {}),
                "ctr": report.get("differences", {}).get("ctr", {}),
                "hit_rate": report.get("differences", {}).get("hit_rate", {}),
                "verdict": report.get("verdict", "—"),
                "why": experiment.outcome_reason,
            }
        )
    return rows


def experiments_table(rows: list[dict]) -> str:
    header = (
        "| # | Mode | Champion arm | Challenger arm | Δ CTR (95% CI) | Δ hit rate (95% CI) | Verdict | Status | Why |"
    )
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        lines.append(
            f"| {r['experiment']} | {r['mode']} {r['traffic']}% | {r['champion']}: {_arm(r['control'])} | "
            f"{r['challenger']}: {_arm(r['treatment'])} | {_delta(r['ctr'])} | {_delta(r['hit_rate'])} | "
            f"{r['verdict']} | {r['status']} | {r['why'] or '—'} |"
        )
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


@dataclass
class TriggerEfficacy:
    """What the runs one trigger kind started came to. A run that several kinds started counts for each."""

    trigger: str
    runs: int = 0
    finished: int = 0
    promotions: int = 0
    rejected: int = 0
    rejected_for_no_new_data: int = 0
    failed: int = 0
    training_seconds: float = 0.0
    held_for_no_new_data: int = 0
    ndcg_gains: list[float] = field(default_factory=list)

    def add(self, run: TrainingRun, *, promoted: bool) -> None:
        self.runs += 1
        self.finished += run.status not in IN_FLIGHT
        self.promotions += promoted
        self.rejected += run.status == RunStatus.REJECTED
        self.rejected_for_no_new_data += (run.gate or {}).get("refusal_code") == NOT_ENOUGH_NEW_DATA
        self.failed += run.status == RunStatus.FAILED
        if run.started_at and run.finished_at:
            self.training_seconds += (run.finished_at - run.started_at).total_seconds()
        gain = _ndcg_gain(run.gate or {})
        if promoted and gain is not None:
            self.ndcg_gains.append(gain)

    def as_dict(self) -> dict:
        row = asdict(self)
        gains = row.pop("ndcg_gains")
        share = self.rejected_for_no_new_data / self.finished if self.finished else None
        return {
            **row,
            "training_seconds": round(self.training_seconds, 3),
            "promotions_compared": len(gains),
            "mean_ndcg_gain": sum(gains) / len(gains) if gains else None,
            "best_ndcg_gain": max(gains) if gains else None,
            "no_new_data_share": share,
        }


ALL_TRIGGERS = "all"


def trigger_efficacy_rows(*, since: datetime | None = None) -> list[dict]:
    """Per trigger kind (and for all runs together, each once): runs, promotions (the run's version became the
    champion, by the gate or later from its experiment or by an operator), ΔNDCG@10 of the promoted candidates
    over the champion they were gated against (same holdout; a first model has no champion and no Δ), seconds the
    trainer spent (claim to finish, failed runs included), and the runs the gate refused for too few new holdout
    users; plus the trigger checks that `min_new_holdout_users` held instead of starting a run."""
    runs = TrainingRun.objects.order_by("id")
    checks = TriggerEvaluation.objects.filter(held_reason=HoldReason.NOT_ENOUGH_NEW_DATA)
    if since is not None:
        runs, checks = runs.filter(created_at__gte=since), checks.filter(created_at__gte=since)
    runs = list(runs.only("trigger", "triggers", "status", "gate", "started_at", "finished_at", "model_version"))
    promoted = set(
        DeploymentChange.objects.filter(
            alias=Alias.CHAMPION,
            action=DeploymentChange.Action.PROMOTE,
            to_version__in=[run.model_version_id for run in runs if run.model_version_id],
        ).values_list("to_version_id", flat=True)
    )
    rows = {kind: TriggerEfficacy(trigger=kind) for kind in [*Trigger.values, ALL_TRIGGERS]}
    for run in runs:
        for kind in {*(run.triggers or [run.trigger]), ALL_TRIGGERS}:
            rows.setdefault(kind, TriggerEfficacy(trigger=kind)).add(run, promoted=run.model_version_id in promoted)
    for check in checks.only("results"):
        for kind in {*check.fired_kinds(), ALL_TRIGGERS}:
            rows.setdefault(kind, TriggerEfficacy(trigger=kind)).held_for_no_new_data += 1
    return [row.as_dict() for row in rows.values()]


def _ndcg_gain(gate: dict) -> float | None:
    numbers = gate.get("numbers") or {}
    candidate = (numbers.get("candidate") or {}).get("ndcg@10")
    champion = (numbers.get("champion") or {}).get("ndcg@10")
    return None if candidate is None or champion is None else candidate - champion


def trigger_efficacy_table(rows: list[dict]) -> str:
    header = (
        "| Trigger | Runs | Promotions | Mean ΔNDCG@10 | Best ΔNDCG@10 | Training time | Rejected: no new data "
        "| Held: no new data |"
    )
    lines = [header, "|" + "---|" * 8]
    for r in rows:
        share = r["no_new_data_share"]
        share = "—" if share is None else f"{r['rejected_for_no_new_data']} ({share:.0%})"
        lines.append(
            f"| {r['trigger']} | {r['runs']} | {r['promotions']} | {_signed(r['mean_ndcg_gain'])} | "
            f"{_signed(r['best_ndcg_gain'])} | {duration(r['training_seconds'])} | {share} | "
            f"{r['held_for_no_new_data']} |"
        )
    return "\n".join(lines) + "\n"


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4f}"
