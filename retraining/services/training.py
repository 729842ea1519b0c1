"""The training pipeline: point-in-time dataset, candidates, LightGBM ranker and rating model, evaluation
against the baselines on the fixed protocol, and the model directory.

Splits (all per user, by (time, id)):
- outer: the last 20% of each user's events (users with >= 5) is the holdout; the rest is the training
  portion. Nothing of the holdout feeds a model, a feature or a popularity count.
- inner: inside the training portion, each user's last 20% is the ranker's label window; the collaborative
  model and the features for ranker training come only from the training portion minus the label windows
  (the "fit" portion), at the start of each user's label window. Evaluation mirrors this one level up:
  EASE refitted on the whole training portion, features at the start of each user's holdout.
A refit on all data (after a gate has passed) has no outer split: every event is in the training portion.
"""

from __future__ import annotations

import json
import math
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import lightgbm as lgb
import numpy as np

from recommendations import features, ranking
from retraining.services import artifacts
from retraining.services.candidates import collaborative_fit
from retraining.services.dataset import EventLog, StateReplay, event_log_load
from retraining.services.evaluation import (
    baseline_lists,
    holdout_split,
    metric_keys,
    ranking_metrics,
    rating_metrics,
)

CF_NAME = "ease"
METRICS_FROM_OWN_HOLDOUT = "this model, on the holdout"
METRICS_FROM_GATED_MODEL = "the gated model before the refit, on the holdout (this model was trained on it)"
CANDIDATE_BATCH = 1000
SCORING_BATCH = 500


@dataclass(frozen=True)
class TrainingParams:
    k: int = 10
    holdout_fraction: float = 0.2
    min_user_events: int = 5
    ease_items: int = 3000
    ease_l2: float = 250.0
    # Candidates per user: the top EASE items and the most popular ones. 100 + 30 scored as well as 200 + 50
    # offline (NDCG@10 on ml-latest-small 0.132/0.131 vs 0.128/0.126 over two seeds; synthetic 300k events
    # 0.162 vs 0.163) with half the rows for serving to build and score.
    n_collaborative: int = 100
    n_popular: int = 30
    num_threads: int = 2
    seed: int = 42
    learning_rate: float = 0.05
    num_leaves: int = 31
    min_data_in_leaf: int = 50
    max_rounds: int = 400
    min_rounds: int = 50
    early_stopping_rounds: int = 50
    validation_fraction: float = 0.2
    max_ranker_users: int = 5_000
    max_regressor_examples: int = 300_000
    shuffle_labels: bool = False  # a leakage guard: a ranker trained on shuffled labels must not beat popularity


@dataclass
class Stages:
    """Per-stage wall time and the process's peak RSS after each stage, reported on `stream`."""

    stream: TextIO | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str):
        started = time.perf_counter()
        if self.stream:
            print(f"[train] {name} ...", file=self.stream, flush=True)
        yield
        self.timings_s[name] = round(time.perf_counter() - started, 3)
        self.peak_memory_mb[name] = round(peak_memory_mb(), 1)
        if self.stream:
            print(
                f"[train] {name} done in {self.timings_s[name]:.2f} s (peak {self.peak_memory_mb[name]:.0f} MB)",
                file=self.stream,
                flush=True,
            )


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class Split:
    train: np.ndarray  # bool per event: the training portion
    holdout: np.ndarray
    cutoff: np.ndarray  # per user: start of the holdout
    fit: np.ndarray  # training portion minus the label windows
    label: np.ndarray  # the label windows
    label_start: np.ndarray  # per user


def split_compute(log: EventLog, params: TrainingParams, *, holdout: bool = True) -> Split:
    """`holdout=False` (a refit on all data): nothing is held out, every event is in the training portion."""
    n_users = len(log.user_pks)
    everything = np.ones(len(log), dtype=bool)
    options = dict(user=log.user, ts=log.ts, n_users=n_users, fraction=params.holdout_fraction,
                   min_events=params.min_user_events)
    outer = holdout_split(mask=everything if holdout else ~everything, **options)
    train = ~outer.holdout
    inner = holdout_split(mask=train, **options)
    return Split(train, outer.holdout, outer.cutoff, train & ~inner.holdout, inner.holdout, inner.cutoff)


def histories_by_user(log: EventLog, mask: np.ndarray) -> list[np.ndarray]:
    """Per user code, the sorted distinct catalogue codes of the user's events in `mask`."""
    users, items = log.user[mask], log.item[mask]
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    bounds = np.searchsorted(users, np.arange(len(log.user_pks) + 1))
    return [np.unique(items[bounds[u] : bounds[u + 1]]).astype(np.int64) for u in range(len(log.user_pks))]


def candidates_for(model, histories: list[np.ndarray], users: np.ndarray, params: TrainingParams):
    result = []
    for start in range(0, len(users), CANDIDATE_BATCH):
        batch = users[start : start + CANDIDATE_BATCH]
        result += ranking.candidates_generate(
            model,
            histories=[histories[u] for u in batch],
            n_collaborative=params.n_collaborative,
            n_popular=params.n_popular,
        )
    return result


def grades(log: EventLog) -> np.ndarray:
    """Graded relevance per event: rating 5 -> 2; other positives (rating >= 4, like, purchase) -> 1; else 0."""
    top = log.is_rating() & (log.value >= 5.0)
    return np.where(top, 2, np.where(log.positive(), 1, 0)).astype(np.int8)


# --- Ranker training ----------------------------------------------------------------------------


@dataclass
class RankerExamples:
    matrix: np.ndarray
    labels: np.ndarray
    groups: np.ndarray  # rows per user, in order


def ranker_examples_build(
    log: EventLog, split: Split, params: TrainingParams, category_share: dict, model: ranking.CollaborativeModel
) -> RankerExamples:
    """Candidates and features at the start of each user's label window, from the fit portion only."""
    grade = grades(log)
    labelled = split.label & (grade > 0)
    users = np.unique(log.user[labelled])
    if len(users) > params.max_ranker_users:
        users = np.sort(np.random.default_rng(params.seed).choice(users, params.max_ranker_users, replace=False))
    wanted: dict[tuple[int, int], int] = {}
    for u, it, g in zip(log.user[split.label].tolist(), log.item[split.label].tolist(), grade[split.label].tolist()):
        wanted[(u, it)] = max(g, wanted.get((u, it), 0))
    candidates = candidates_for(model, histories_by_user(log, split.fit), users, params)
    blocks: list[np.ndarray | None] = [None] * len(users)
    labels: list[np.ndarray | None] = [None] * len(users)
    replay = StateReplay(log.subset(split.fit), users=users)

    def on_query(index: int) -> None:
        u, found = int(users[index]), candidates[index]
        labels[index] = np.array([wanted.get((u, c), 0) for c in found.codes.tolist()], dtype=np.int8)
        blocks[index] = ranking.ranker_feature_matrix(
            model,
            candidates=found,
            user=replay.user_states.get(u, features.UserState()),
            items=replay.candidate_items(found.codes),
            at=float(split.label_start[u]),
            category_share=category_share,
        )

    replay.run(split.label_start[users], on_query)
    keep = [i for i in range(len(users)) if labels[i].any()]
    return RankerExamples(
        matrix=np.concatenate([blocks[i] for i in keep]) if keep else np.empty((0, len(ranking.RANKER_FEATURES))),
        labels=np.concatenate([labels[i] for i in keep]) if keep else np.empty(0, dtype=np.int8),
        groups=np.array([len(labels[i]) for i in keep], dtype=np.int64),
    )


def _lgb_params(params: TrainingParams, **overrides) -> dict:
    return {
        "learning_rate": params.learning_rate,
        "num_leaves": params.num_leaves,
        "min_data_in_leaf": params.min_data_in_leaf,
        "feature_fraction": 0.9,
        "lambda_l2": 1.0,
        "num_threads": params.num_threads,
        "seed": params.seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
        **overrides,
    }


def early_stopping_after(*, min_rounds: int, patience: int):
    """Early stopping on the first validation metric that only considers models of at least `min_rounds`
    trees: on a few hundred validation users NDCG is noisy enough that its peak can fall on the 2nd tree."""
    best = {"score": -math.inf, "iteration": min_rounds}

    def callback(env) -> None:
        trees = env.iteration + 1
        if trees < min_rounds or not env.evaluation_result_list:
            return
        _, _, score, higher_is_better = env.evaluation_result_list[0][:4]
        score = score if higher_is_better else -score
        if score > best["score"]:
            best.update(score=score, iteration=trees)
        elif trees - best["iteration"] >= patience:
            raise lgb.callback.EarlyStopException(best["iteration"] - 1, env.evaluation_result_list)

    callback.order = 30
    callback.best = best
    return callback


def _train(options: dict, train: lgb.Dataset, valid: lgb.Dataset, params: TrainingParams) -> lgb.Booster:
    stopping = early_stopping_after(min_rounds=params.min_rounds, patience=params.early_stopping_rounds)
    booster = lgb.train(options, train, num_boost_round=params.max_rounds, valid_sets=[valid], callbacks=[stopping])
    booster.best_iteration = stopping.best["iteration"]
    return booster


def ranker_fit(examples: RankerExamples, params: TrainingParams) -> lgb.Booster:
    """LightGBM lambdarank; early stopping on NDCG@k of a held-aside share of the users."""
    labels = examples.labels
    if params.shuffle_labels:
        labels = np.random.default_rng(params.seed).permutation(labels)
    n_groups = len(examples.groups)
    rng = np.random.default_rng(params.seed)
    validation = rng.random(n_groups) < params.validation_fraction if n_groups >= 20 else np.zeros(n_groups, bool)
    row_group = np.repeat(np.arange(n_groups), examples.groups)
    rows_valid = validation[row_group]
    options = _lgb_params(params, objective="lambdarank", metric="ndcg", eval_at=[params.k])

    def dataset(rows, groups, reference=None):
        return lgb.Dataset(
            examples.matrix[rows], labels[rows], group=groups, feature_name=ranking.RANKER_FEATURES,
            reference=reference, free_raw_data=True,
        )

    train = dataset(~rows_valid, examples.groups[~validation])
    if not validation.any():
        return lgb.train(options, train, num_boost_round=params.min_rounds)
    return _train(options, train, dataset(rows_valid, examples.groups[validation], reference=train), params)


# --- Evaluation (and the regressor's examples, from the same replay) ----------------------------


@dataclass
class Evaluation:
    users: np.ndarray  # the evaluated users (codes): those with a positive held-out event on an unseen item
    ranked: dict[str, list[np.ndarray]]  # "ranker", "popularity", "ease" -> top-k per evaluated user
    positives: list[np.ndarray]
    regressor_train: np.ndarray
    regressor_train_target: np.ndarray
    regressor_holdout: np.ndarray
    regressor_holdout_target: np.ndarray


def evaluation_run(
    log: EventLog,
    split: Split,
    params: TrainingParams,
    category_share: dict,
    model: ranking.CollaborativeModel,
    ranker: lgb.Booster | None,
    with_regressor: bool,
) -> Evaluation:
    """One replay of the training portion answers three kinds of query, each strictly before its time:
    every evaluated user at the start of their holdout (ranking and held-out ratings), and every training
    rating event at its own time (the regressor's training rows)."""
    histories = histories_by_user(log, split.train)
    positive_holdout = split.holdout & log.positive() & log.item_active[log.item]
    held_users = np.flatnonzero(~np.isnan(split.cutoff))
    positives = _positives_by_user(log, positive_holdout, histories)
    ranked_users = np.array([u for u in held_users.tolist() if len(positives[u])], dtype=np.int64)
    candidates = dict(zip(ranked_users.tolist(), candidates_for(model, histories, ranked_users, params)))
    rated = log.is_rating()
    train_ratings = np.flatnonzero(split.train & rated) if with_regressor else np.empty(0, dtype=np.int64)
    if len(train_ratings) > params.max_regressor_examples:
        rng = np.random.default_rng(params.seed)
        train_ratings = np.sort(rng.choice(train_ratings, params.max_regressor_examples, replace=False))
    holdout_ratings = _events_by_user(log, split.holdout & rated) if with_regressor else {}
    n_holdout_rows = sum(len(v) for v in holdout_ratings.values())
    width = len(ranking.REGRESSOR_FEATURES)
    regressor_train = np.empty((len(train_ratings), width), dtype=np.float32)
    regressor_holdout = np.empty((n_holdout_rows, width), dtype=np.float32)
    holdout_target = np.empty(n_holdout_rows, dtype=np.float32)
    ranked: dict[str, dict[int, np.ndarray]] = {"ranker": {}, "popularity": {}, CF_NAME: {}}
    replay = StateReplay(log.subset(split.train))
    categories = dict(enumerate(log.item_categories))
    empty_user = features.UserState()
    pending: list[tuple[int, np.ndarray]] = []
    filled = 0

    def on_user(u: int) -> None:
        nonlocal filled
        at = float(split.cutoff[u])
        user = replay.user_states.get(u, empty_user)
        for event in holdout_ratings.get(u, ()):
            item = int(log.item[event])
            regressor_holdout[filled] = ranking.regressor_feature_row(
                user=user, item=replay.item_states.get(item, features.ItemState()), categories=categories[item],
                at=at, category_share=category_share,
            )
            holdout_target[filled] = log.value[event]
            filled += 1
        if u not in candidates:
            return
        found = candidates[u]
        for name, codes in baseline_lists(found, popularity_rank=model.popularity_rank, k=params.k).items():
            ranked[name][u] = codes
        if ranker is not None:
            pending.append((u, ranking.ranker_feature_matrix(
                model, candidates=found, user=user, items=replay.candidate_items(found.codes), at=at,
                category_share=category_share,
            )))
            if len(pending) == SCORING_BATCH:
                score_pending()

    def score_pending() -> None:
        """One predict call for many users: LightGBM's per-call overhead would dominate 250-row calls."""
        if not pending:
            return
        scores = ranking.ranker_scores(ranker, np.concatenate([matrix for _, matrix in pending]))
        start = 0
        for u, matrix in pending:
            codes = candidates[u].codes
            ranked["ranker"][u] = ranking.top_k(codes, scores[start : start + len(codes)], params.k)
            start += len(codes)
        pending.clear()

    def on_rating(row: int) -> None:
        event = train_ratings[row]
        u, item, at = int(log.user[event]), int(log.item[event]), float(log.ts[event])
        regressor_train[row] = ranking.regressor_feature_row(
            user=replay.user_states.get(u, empty_user), item=replay.item_states.get(item, features.ItemState()),
            categories=categories[item], at=at, category_share=category_share,
        )

    n_users = len(held_users)
    times = np.concatenate([split.cutoff[held_users], log.ts[train_ratings]])
    replay.run(times, lambda q: on_user(int(held_users[q])) if q < n_users else on_rating(q - n_users))
    score_pending()
    order = ranked_users.tolist()
    return Evaluation(
        users=ranked_users,
        ranked={name: [lists[u] for u in order] for name, lists in ranked.items() if lists},
        positives=[positives[u] for u in ranked_users.tolist()],
        regressor_train=regressor_train,
        regressor_train_target=log.value[train_ratings].astype(np.float32),
        regressor_holdout=regressor_holdout,
        regressor_holdout_target=holdout_target,
    )


def _events_by_user(log: EventLog, mask: np.ndarray) -> dict[int, list[int]]:
    result: dict[int, list[int]] = {}
    for event, u in zip(np.flatnonzero(mask).tolist(), log.user[mask].tolist()):
        result.setdefault(u, []).append(event)
    return result


def _positives_by_user(log: EventLog, mask: np.ndarray, histories: list[np.ndarray]) -> list[np.ndarray]:
    """Per user, the distinct items with a positive held-out event that the user had not seen in training
    (only those can be recommended: the protocol ranks unseen items)."""
    result = [np.empty(0, dtype=np.int64) for _ in range(len(log.user_pks))]
    for u, events in _events_by_user(log, mask).items():
        items = np.unique(log.item[events]).astype(np.int64)
        result[u] = items[~np.isin(items, histories[u])]
    return result


def regressor_fit(matrix: np.ndarray, target: np.ndarray, params: TrainingParams) -> lgb.Booster:
    options = _lgb_params(params, objective="regression", metric="rmse")
    validation = np.random.default_rng(params.seed).random(len(target)) < params.validation_fraction
    train = lgb.Dataset(matrix[~validation], target[~validation], feature_name=ranking.REGRESSOR_FEATURES)
    return _train(options, train, lgb.Dataset(matrix[validation], target[validation], reference=train), params)


def rating_predict(regressor: lgb.Booster, matrix: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip(regressor.predict(matrix, num_threads=1), low, high) if len(matrix) else np.empty(0)


# --- The run ------------------------------------------------------------------------------------


@dataclass
class TrainingResult:
    metrics: dict
    baselines: dict
    dataset: dict
    timings_s: dict
    peak_memory_mb: float
    stage_peak_memory_mb: dict
    output_dir: Path | None
    manifest: dict

    def summary(self) -> dict:
        """The `train --json` contract."""
        return {
            "metrics": self.metrics,
            "baselines": self.baselines,
            "dataset": self.dataset,
            "timings_s": self.timings_s,
            "peak_memory_mb": self.peak_memory_mb,
            "stage_peak_memory_mb": self.stage_peak_memory_mb,
            "output_dir": str(self.output_dir) if self.output_dir else None,
        }


def dataset_statistics(log: EventLog, split: Split) -> dict[str, int]:
    return {
        "users": int(len(np.unique(log.user))),
        "items": int(log.item_active.sum()),
        "events": int(len(log)),
        "train_events": int(split.train.sum()),
        "holdout_events": int(split.holdout.sum()),
    }


def training_run_execute(
    *,
    until: datetime | None = None,
    output_dir: Path | None,
    params: TrainingParams = TrainingParams(),
    progress: TextIO | None = sys.stderr,
    log: EventLog | None = None,
    refit_of: TrainingResult | None = None,
) -> TrainingResult:
    """Build the dataset, train the ranker and the rating model, evaluate them and both baselines on the
    holdout, and write the model directory to `output_dir` (nothing is written if it is None).

    With `refit_of` (a gated result) nothing is held out, and the metrics are the gated model's on its
    holdout: a model trained on the holdout cannot be scored on it."""
    holdout = refit_of is None
    stages = Stages(progress)
    with stages.stage("load_events"):
        log = log if log is not None else event_log_load(until=until)
        split = split_compute(log, params, holdout=holdout)
        category_share = log.category_share()
    if not split.label.any() or (holdout and not split.holdout.any()):
        raise ValueError("too few events to train: no user has enough events for a holdout")
    with stages.stage("candidates_label_window"):
        inner_model = collaborative_fit(log=log, mask=split.fit, n_modelled=params.ease_items, l2=params.ease_l2)
    with stages.stage("ranker_examples"):
        examples = ranker_examples_build(log, split, params, category_share, inner_model)
        del inner_model
    if not len(examples.groups):
        raise ValueError("too few events to train: no label window has a positive event among its candidates")
    with stages.stage("ranker_fit"):
        ranker = ranker_fit(examples, params)
    with stages.stage("candidates_training_portion"):
        model = collaborative_fit(log=log, mask=split.train, n_modelled=params.ease_items, l2=params.ease_l2)
    with stages.stage("evaluation_replay"):
        evaluation = evaluation_run(log, split, params, category_share, model, ranker, with_regressor=True)
    with stages.stage("regressor_fit"):
        regressor = None
        if len(evaluation.regressor_train_target) >= 2 * params.min_data_in_leaf:
            regressor = regressor_fit(evaluation.regressor_train, evaluation.regressor_train_target, params)
    with stages.stage("metrics"):
        metrics, baselines = (
            _scores(evaluation, log, params, regressor) if holdout else (refit_of.metrics, refit_of.baselines)
        )
    dataset = dataset_statistics(log, split)
    manifest = _manifest(log, split, params, category_share, examples, ranker, regressor, model, metrics,
                         baselines, dataset, stages, refit=not holdout)
    if output_dir is not None:
        with stages.stage("artifacts"):
            artifacts.model_directory_write(
                directory=Path(output_dir), ranker=ranker, regressor=regressor, collaborative=model,
                item_external_ids=log.item_external_ids, manifest=manifest,
            )
    return TrainingResult(
        metrics=metrics, baselines=baselines, dataset=dataset, timings_s=dict(stages.timings_s),
        peak_memory_mb=round(peak_memory_mb(), 1), stage_peak_memory_mb=dict(stages.peak_memory_mb),
        output_dir=Path(output_dir) if output_dir is not None else None, manifest=manifest,
    )


def training_run_refit(*, gated: TrainingResult, until: datetime | None, output_dir: Path | None,
                       progress: TextIO | None = sys.stderr) -> TrainingResult:
    """The gated model's configuration trained again on every event up to `until`, holdout included."""
    params = TrainingParams(**gated.manifest["params"]["training"])
    return training_run_execute(until=until, output_dir=output_dir, params=params, progress=progress, refit_of=gated)


def baselines_evaluate(
    *, until: datetime | None = None, params: TrainingParams = TrainingParams(), progress: TextIO | None = sys.stderr,
    log: EventLog | None = None,
) -> dict:
    """Most-popular and EASE alone, on the same split and protocol as training_run_execute."""
    stages = Stages(progress)
    with stages.stage("load_events"):
        log = log if log is not None else event_log_load(until=until)
        split = split_compute(log, params)
    with stages.stage("candidates_training_portion"):
        model = collaborative_fit(log=log, mask=split.train, n_modelled=params.ease_items, l2=params.ease_l2)
    with stages.stage("evaluation"):
        evaluation = evaluation_run(log, split, params, {}, model, None, with_regressor=False)
        n_active = int(log.item_active.sum())
        baselines = {
            name: metric_keys(
                ranking_metrics(recommended=lists, positives=evaluation.positives, k=params.k, n_active_items=n_active),
                params.k,
            )
            for name, lists in evaluation.ranked.items()
            if name != "ranker"
        }
    return {"baselines": baselines, "dataset": dataset_statistics(log, split), "timings_s": stages.timings_s}


def _scores(evaluation: Evaluation, log: EventLog, params: TrainingParams, regressor) -> tuple[dict, dict]:
    n_active = int(log.item_active.sum())

    def scored(name: str) -> dict:
        return metric_keys(
            ranking_metrics(
                recommended=evaluation.ranked[name], positives=evaluation.positives, k=params.k,
                n_active_items=n_active,
            ),
            params.k,
        )

    metrics = scored("ranker")
    rated = log.value[log.is_rating()]
    low, high = (float(rated.min()), float(rated.max())) if len(rated) else (0.0, 0.0)
    predicted = (
        rating_predict(regressor, evaluation.regressor_holdout, low, high)
        if regressor is not None
        else np.empty(0)
    )
    actual = evaluation.regressor_holdout_target if regressor is not None else np.empty(0)
    rating = rating_metrics(actual=actual, predicted=predicted)
    metrics.update(rmse=rating["rmse"], mae=rating["mae"], r2=rating["r2"])
    return metrics, {"popularity": scored("popularity"), CF_NAME: scored(CF_NAME)}


def _iso(ts: float | None) -> str | None:
    return None if ts is None or not math.isfinite(ts) else datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


def json_safe(value):
    """NaN and infinities become null: the manifest and `--json` output are strict JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _manifest(log, split, params, category_share, examples, ranker, regressor, model, metrics, baselines,
              dataset, stages, refit: bool) -> dict:
    return json_safe(
        {
            "format": 1,
            "created_at": datetime.now(timezone.utc).isoformat(),
            "features": {"ranker": ranking.RANKER_FEATURES, "regressor": ranking.REGRESSOR_FEATURES},
            "params": {
                "training": asdict(params),
                "ranker": json.loads(json.dumps(ranker.params, default=str)),
                "ranker_best_iteration": ranker.best_iteration or ranker.current_iteration(),
                "regressor": json.loads(json.dumps(regressor.params, default=str)) if regressor else None,
                "collaborative": {"name": CF_NAME, "l2": params.ease_l2, "modelled_items": int(len(model.modelled))},
                "refit_on_full_data": refit,
                "metrics_from": METRICS_FROM_GATED_MODEL if refit else METRICS_FROM_OWN_HOLDOUT,
            },
            "training_window": {
                "min_event_time": _iso(float(log.ts[0])) if len(log) else None,
                "max_event_time": _iso(float(log.ts[-1])) if len(log) else None,
                "until": _iso(log.until),
                "train_max_event_time": _iso(float(log.ts[split.train].max())) if split.train.any() else None,
            },
            "dataset": dataset | {"ranker_examples": int(len(examples.labels)), "ranker_groups": int(len(examples.groups))},
            "category_share": category_share,
            "reference_distributions": {
                "ranker": artifacts.reference_distributions(examples.matrix, ranking.RANKER_FEATURES),
            },
            "metrics": metrics,
            "baselines": baselines,
            "timings_s": dict(stages.timings_s),
        }
    )
