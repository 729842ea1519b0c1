"""One training run, end to end: train → evaluate the candidate → score it and re-score the champion on the
same held-out events, those after the champion's training cut-off → gate → (if the policy says so and the
gate passed: refit on all data) → register → promote or reject. Called by the `training` queue's task with
a run id.

A crash anywhere leaves the champion untouched: the pointer only moves in the last step, in one
transaction. The run's heartbeat is refreshed by a thread while the heavy stages run (LightGBM's and lleaves'
native calls release the GIL, so it keeps beating through them), so a run whose worker died is recognised as
stale once its lease passes without a beat."""

import json
import logging
import shutil
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TextIO

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from recommendations import ranking
from recommendations.clock import system_now
from recommendations.serving.loading import ranker_precompile, trained_model_of
from recsite import metrics
from registry.models import ModelVersion
from registry.selectors import champion_version
from registry.services import VersionInput, model_version_register, model_version_reject
from retraining.ml.manifest import json_safe
from retraining.ml.metrics import CF_NAME
from retraining.ml.params import TrainingParams
from retraining.models import RetrainPolicy, RunStatus, TrainingRun
from retraining.services.drift import drift_profile, drift_reference, drift_window
from retraining.services.gate import GateDecision, gate_decide
from retraining.services.mlflow_mirror import training_run_mirror_schedule
from retraining.services.policy import policy_active
from retraining.services.rescoring import HoldoutScores, models_score_on_holdout
from retraining.services.rollout import candidate_deploy
from retraining.services.runs import training_run_advance, training_run_claim, training_run_fail, training_run_heartbeat
from retraining.services.training import TrainingResult, model_refit, model_train

logger = logging.getLogger(__name__)


def training_run_process(*, run_id: int, echo: TextIO | None = None) -> None:
    """`echo` also receives the progress lines that go to the run's log (for commands run in-process)."""
    if not training_run_claim(run_id=run_id):
        return
    run = TrainingRun.objects.get(pk=run_id)
    workdir = Path(tempfile.mkdtemp(prefix=f"run-{run_id}-", dir=_work_root()))
    try:
        with training_run_heartbeats(run_id=run_id):
            _process(run, workdir, _RunLog(run_id, echo))
    except Exception as exc:
        training_run_fail(run_id=run_id, error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}")
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        training_run_mirror_schedule(run_id=run_id)  # the run has ended, promoted, rejected or failed


def training_cluster() -> str | None:
    """The address of the Dask scheduler that trains (setting DASK_SCHEDULER_ADDRESS); None: in-process."""
    return settings.DASK_SCHEDULER_ADDRESS or None


def _process(run: TrainingRun, workdir: Path, log_line: "_RunLog") -> None:
    policy = policy_active()
    started = time.perf_counter()
    result = model_train(until=run.data_until, output_dir=workdir, progress=log_line, cluster=training_cluster())
    manifest = drift_reference_attach(result=result, directory=workdir, until=run.data_until, policy=policy)
    training_seconds = time.perf_counter() - started
    metrics.training_measured(seconds=training_seconds, peak_memory_mb=result.peak_memory_mb)
    training_run_advance(
        run_id=run.pk, status=RunStatus.EVALUATING, trained_at=timezone.now(), stage_timings=result.timings_s
    )
    _ensure_in_flight(run.pk)

    champion = champion_version()
    decision, comparison = _gate_decision(
        run=run,
        result=result,
        manifest=manifest,
        directory=workdir,
        champion=champion,
        policy=policy,
        log_line=log_line,
    )
    refit = decision.passed and policy.refit_on_full_data
    gate = json_safe(
        {
            **decision.as_dict(),
            "champion_version": champion.version if champion else None,
            **comparison,
            "refit_on_full_data": refit,
        }
    )
    timings = dict(result.timings_s)
    reason = f"run {run.pk} ({run.trigger}): " + "; ".join(decision.failures or decision.reasons)
    if refit:
        training_run_advance(run_id=run.pk, status=RunStatus.EVALUATING, gate=gate)
        workdir = workdir / "refit"
        result, manifest, timings["refit"] = _refit(
            run=run, gated=result, directory=workdir, policy=policy, log_line=log_line
        )
        training_seconds += timings["refit"]
        reason += "; refit on all data (its metrics are the gated model's on the holdout)"
    _ensure_in_flight(run.pk)
    version = candidate_register(
        result=result,
        manifest=manifest,
        directory=workdir,
        until=run.data_until,
        trigger=run.trigger,
        training_seconds=training_seconds,
        run_id=run.pk,
    )
    if decision.passed:
        status = candidate_deploy(
            version=version.version, champion=champion.version if champion else None, reason=reason, policy=policy
        )
    else:
        model_version_reject(version=version.version, actor="gate", reason=reason)
        status = RunStatus.REJECTED
    log_line.write(f"{version}: {status}; {reason}\n")
    training_run_advance(
        run_id=run.pk,
        status=status,
        evaluated_at=timezone.now(),
        gate=gate,
        model_version=version,
        stage_timings={**timings, "total": round(time.perf_counter() - started, 3)},
    )


def _ensure_in_flight(run_id: int) -> None:
    """A run failed meanwhile (declared stale when its heartbeats stopped reaching the database for a lease) may
    already have a successor in flight: it must not go on to register or promote anything."""
    if not TrainingRun.objects.filter(pk=run_id, in_flight=True).exists():
        raise RuntimeError(f"run {run_id} is no longer in flight (failed meanwhile); nothing was registered")


def _gate_decision(
    *,
    run: TrainingRun,
    result: TrainingResult,
    manifest: dict,
    directory: Path,
    champion: ModelVersion | None,
    policy: RetrainPolicy,
    log_line: "_RunLog",
) -> tuple[GateDecision, dict]:
    """The decision, and what the candidate was compared with the champion on (for the run's record)."""
    thresholds = dict(
        min_relative_gain=policy.gate_min_relative_gain,
        guardrail_tolerance=policy.gate_guardrail_tolerance,
        bootstrap_tolerance=policy.gate_bootstrap_tolerance,
        bootstrap_samples=policy.gate_bootstrap_samples,
    )
    if champion is None:
        return gate_decide(
            candidate=result.metrics,
            popularity=result.baselines["popularity"],
            champion=None,
            candidate_user_ndcg=None,
            champion_user_ndcg=None,
            segments=result.segments,
            rating_bias=result.baselines.get("bias"),
            **thresholds,
        ), {}
    scores = _champion_rescore(run=run, manifest=manifest, directory=directory, champion=champion, log_line=log_line)
    candidate, champion_scored = scores.models["candidate"], scores.models["champion"]
    decision = gate_decide(
        candidate=candidate.metrics,
        popularity=candidate.popularity,
        champion=champion_scored.metrics,
        candidate_user_ndcg=candidate.user_ndcg,
        champion_user_ndcg=champion_scored.user_ndcg,
        rating_bias=scores.rating_baselines.get("bias"),
        segments=scores.segments,
        user_segments=scores.user_segments,
        **thresholds,
    )
    return decision, {
        "comparison_holdout_after": scores.after.isoformat() if scores.after else None,
        "comparison_users": scores.users,
        "comparison_events": scores.events,
        # most-popular, EASE and the rating baselines, on the same held-out events as candidate and champion
        "comparison_baselines": {
            "popularity": candidate.popularity,
            CF_NAME: candidate.ease,
            **scores.rating_baselines,
        },
    }


def _champion_rescore(
    *, run: TrainingRun, manifest: dict, directory: Path, champion: ModelVersion, log_line: "_RunLog"
) -> HoldoutScores:
    """The candidate and the champion scored on the held-out events after the champion's training cut-off:
    events neither has trained on (a champion refit on all data trained on its whole holdout, and any
    champion on the earlier part of a later holdout). A champion without a recorded cut-off is compared on
    the whole holdout: what it may have seen can only favour it, never promote a candidate wrongly."""
    after = champion.training_window_end
    scores = models_score_on_holdout(
        until=run.data_until,
        after=after,
        params=TrainingParams(**manifest["params"]["training"]),
        models={"candidate": ranking.trained_model_load(directory), "champion": trained_model_of(champion)},
        cluster=training_cluster(),
    )
    since = f"after its training cut-off {after:%Y-%m-%d %H:%M}" if after else "(it records no training cut-off)"
    log_line.write(
        f"scored the candidate and re-scored the champion {champion} on the holdout {since}: "
        f"{scores.users} users with a held-out positive, {scores.events} held-out events\n"
    )
    return scores


def _refit(
    *, run: TrainingRun, gated: TrainingResult, directory: Path, policy: RetrainPolicy, log_line: "_RunLog"
) -> tuple[TrainingResult, dict, float]:
    """The gated configuration trained again on every event up to the cut-off, holdout included; with its
    manifest and the seconds it took. Its failure fails the run: nothing is registered, the champion stays."""
    log_line.write("gate passed: refitting the candidate on all events up to the cut-off (holdout included)\n")
    started = time.perf_counter()
    try:
        refit = model_refit(
            gated=gated, until=run.data_until, output_dir=directory, progress=log_line, cluster=training_cluster()
        )
        manifest = drift_reference_attach(result=refit, directory=directory, until=run.data_until, policy=policy)
    except Exception as exc:
        raise RuntimeError(
            f"the refit on all data failed after the gate passed; nothing was registered: {type(exc).__name__}: {exc}"
        ) from exc
    return refit, manifest, round(time.perf_counter() - started, 3)


def drift_reference_attach(
    *, result: TrainingResult, directory: Path, until: datetime | None, policy: RetrainPolicy
) -> dict:
    """Add the drift reference (the event profile of the window before the cut-off) to the manifest."""
    window = drift_window(
        end=until or system_now(), days=policy.drift_window_days, min_events=policy.drift_window_min_events
    )
    manifest = json_safe({**result.manifest, "drift_reference": drift_reference(profile=drift_profile(window=window))})
    (directory / ranking.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True, allow_nan=False))
    return manifest


def candidate_register(
    *,
    result: TrainingResult,
    manifest: dict,
    directory: Path,
    until: datetime | None,
    trigger: str,
    training_seconds: float,
    run_id: int | None = None,
) -> ModelVersion:
    """Register a trained model directory as a candidate version, its ranker compiled for serving."""
    window_of = manifest.get("training_window", {})
    compiled = ranker_precompile(directory)
    return model_version_register(
        artifact_dir=directory,
        data=VersionInput(
            metrics=json_safe(result.metrics),
            baseline_metrics=json_safe(result.baselines),
            dataset_stats=result.dataset,
            parameters=manifest.get("params", {}),
            manifest=manifest,
            training_window_start=_parse(window_of.get("min_event_time")),
            training_window_end=until or _parse(window_of.get("max_event_time")),
            trigger_reason=trigger,
            training_duration_s=training_seconds,
            training_run_id=run_id,
            compiled_checksums=compiled,
        ),
    )


def _parse(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _work_root() -> Path:
    root = Path(settings.MODEL_STORE) / "work"
    root.mkdir(parents=True, exist_ok=True)
    return root


class _RunLog:
    """A text stream for the training stages' progress lines, appended to the run's log."""

    def __init__(self, run_id: int, echo: TextIO | None = None):
        self.run_id, self.echo = run_id, echo

    def write(self, text: str) -> None:
        for line in text.splitlines():
            if line.strip():
                training_run_heartbeat(run_id=self.run_id, line=line.strip())
                if self.echo is not None:
                    self.echo.write(line.strip() + "\n")

    def flush(self) -> None:
        pass


@contextmanager
def training_run_heartbeats(*, run_id: int):
    """Refresh the run's heartbeat every TRAINING_HEARTBEAT_SECONDS while the block runs. A failed beat (a database
    hiccup) is logged and the next one tried: a silent thread would let a live run go stale."""
    stop = threading.Event()

    def beat():
        while not stop.wait(settings.TRAINING_HEARTBEAT_SECONDS):
            try:
                training_run_heartbeat(run_id=run_id)
            except Exception:
                logger.exception("heartbeat of run %s failed", run_id)
                close_old_connections()
        connection.close()  # the thread ends: nothing can reuse its connection, which would stay open otherwise

    thread = threading.Thread(target=beat, name=f"heartbeat-{run_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
