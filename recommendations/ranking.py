"""Inference for the two-stage recommender: load a trained model directory, generate candidates for a
user, assemble the feature matrix with the shared definitions (recommendations.features), score with the
LightGBM boosters and explain with `pred_contrib`.

Training (retraining/) writes the files and evaluates through these same functions, so the offline metrics
score exactly what serving computes. This module never imports training code.

Files of a model directory: `ranker.txt`, `regressor.txt` (LightGBM text format), `collaborative.npz`
(numeric arrays only, read with allow_pickle=False), `id_maps.json` (catalogue codes to item ids) and
`manifest.json` (feature names and order, parameters, category shares, metrics).

Collaborative model: EASE (Steck 2019) fitted on the M most active items of the training window
(M = `ease_items`, default 3000), whatever the catalogue size N. The rest of the catalogue reaches users
through the popularity candidates. Memory: fitting needs about 3 x 8 x M^2 bytes (M=3000: ~220 MB; the
Gram matrix, its inverse and B), serving keeps B as float32, 4 x M^2 bytes (M=3000: 36 MB), plus O(N)
arrays (ids, popularity, activity: ~30 bytes per catalogue item, 3 MB for N=100,000).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# LightGBM's OpenMP threads otherwise spin while waiting; on a machine shared with web workers and other
# jobs that made 2-thread training up to 10x slower than 1 thread. Read when libgomp loads, so set it first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import lightgbm as lgb
import numpy as np
import scipy.sparse as sp

from recommendations import features

logger = logging.getLogger(__name__)

CANDIDATE_FEATURES = [
    "cf_score",
    "cf_score_ratio",
    "cf_rank",
    "pop_rank",
    "sim_last_item",
    "sim_recent_max",
    "sim_recent_mean",
]
RANKER_FEATURES = CANDIDATE_FEATURES + features.ITEM_FEATURES + features.USER_FEATURES + features.PAIR_FEATURES
REGRESSOR_FEATURES = features.ITEM_FEATURES + features.USER_FEATURES + features.PAIR_FEATURES
RECENT_ITEMS_FOR_SIMILARITY = 5
SOURCE_COLLABORATIVE, SOURCE_POPULAR = 1, 2


@dataclass
class CollaborativeModel:
    """EASE over the modelled items, and popularity over the whole catalogue (indexed by catalogue code)."""

    item_pks: np.ndarray  # int64 [N]: catalogue code -> Item primary key
    active: np.ndarray  # bool [N]
    modelled: np.ndarray  # int32 [M]: EASE position -> catalogue code
    weights: np.ndarray  # float32 [M, M]: B, score_i = sum_j x_j B[j, i]
    popularity: np.ndarray  # float64 [N]: users with a positive, ties broken by users, in the fitting window

    def __post_init__(self) -> None:
        self.position = np.full(len(self.item_pks), -1, dtype=np.int64)
        self.position[self.modelled] = np.arange(len(self.modelled))
        self.popularity_order = np.lexsort((np.arange(len(self.popularity)), -self.popularity))
        self.popularity_rank = np.empty(len(self.popularity), dtype=np.float32)
        self.popularity_rank[self.popularity_order] = np.arange(1, len(self.popularity) + 1)
        self.active_popularity_order = self.popularity_order[self.active[self.popularity_order]]
        self.inactive_modelled = ~self.active[self.modelled]  # by EASE position
        self._code_order = np.argsort(self.item_pks, kind="stable")  # codes by ascending Item key
        self._ordered_pks = self.item_pks[self._code_order]

    def codes_of(self, item_pks: Sequence[int] | np.ndarray) -> np.ndarray:
        """Catalogue codes of the given Item primary keys, in their order; items unknown to the model are
        dropped."""
        pks = np.asarray(item_pks, dtype=np.int64).reshape(-1)
        if not len(pks) or not len(self._ordered_pks):
            return np.empty(0, dtype=np.int64)
        at = np.searchsorted(self._ordered_pks, pks).clip(max=len(self._ordered_pks) - 1)
        return self._code_order[at[self._ordered_pks[at] == pks]].astype(np.int64)

    def scores(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """EASE scores [len(histories), M] for users given by the catalogue codes they interacted with."""
        positions = [self.position[codes] for codes in histories]
        positions = [p[p >= 0] for p in positions]
        users = sp.csr_matrix(
            (
                np.ones(sum(len(p) for p in positions), dtype=np.float32),
                np.concatenate(positions) if positions else np.empty(0, dtype=np.int64),
                np.concatenate([[0], np.cumsum([len(p) for p in positions])]),
            ),
            shape=(len(histories), len(self.modelled)),
        )
        users.sum_duplicates()
        users.data[:] = 1.0
        return np.asarray(users @ self.weights)

    def similar(self, code: int, k: int) -> np.ndarray:
        """The k catalogue codes with the largest EASE weight from `code` (empty if it is not modelled)."""
        position = self.position[code]
        if position < 0:
            return np.empty(0, dtype=np.int64)
        row = self.weights[position].astype(np.float64)
        row[position] = -np.inf
        row[self.inactive_modelled] = -np.inf
        top = np.argsort(-row, kind="stable")[:k]
        return self.modelled[top[np.isfinite(row[top])]]


@dataclass
class Candidates:
    """One user's candidates (catalogue codes) and the candidate-stage features."""

    codes: np.ndarray
    cf_score: np.ndarray
    cf_rank: np.ndarray
    source: np.ndarray  # bit flags: SOURCE_COLLABORATIVE | SOURCE_POPULAR


def candidates_generate(
    model: CollaborativeModel,
    *,
    histories: Sequence[np.ndarray],
    n_collaborative: int,
    n_popular: int,
) -> list[Candidates]:
    """The union of the top EASE items and the most popular items, unseen and active, per user.

    cf_rank is the rank among all unseen active modelled items (ties: by code among the top, else the better)."""
    scores = model.scores(histories)
    result = []
    for row, seen in zip(scores, histories):
        cf = np.where(model.inactive_modelled, -np.inf, row)
        seen_positions = model.position[seen]
        cf[seen_positions[seen_positions >= 0]] = -np.inf
        n_top = min(n_collaborative, int(np.isfinite(cf).sum()))
        top = np.argpartition(-cf, n_top - 1)[:n_top] if n_top else np.empty(0, dtype=np.int64)
        top = top[np.lexsort((top, -cf[top]))]
        cf_codes = model.modelled[top]
        pop_codes = _first_unblocked(model, seen, n_popular)
        codes = _sorted_union(cf_codes, pop_codes)
        positions = model.position[codes]
        inside = positions >= 0
        cf_score = np.full(len(codes), np.nan, dtype=np.float32)
        cf_score[inside] = row[positions[inside]]
        cf_rank = np.full(len(codes), np.nan, dtype=np.float32)
        others = inside.copy()
        others[np.searchsorted(codes, cf_codes)] = False
        cf_rank[others] = 1 + _count_above(cf, cf_score[others])
        cf_rank[np.searchsorted(codes, cf_codes)] = np.arange(1, len(cf_codes) + 1)
        source = np.zeros(len(codes), dtype=np.int8)
        source[np.searchsorted(codes, cf_codes)] |= SOURCE_COLLABORATIVE
        source[np.searchsorted(codes, pop_codes)] |= SOURCE_POPULAR
        result.append(Candidates(codes, cf_score, cf_rank, source))
    return result


def _sorted_union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """np.union1d for int arrays without its generic unique (a third of candidate generation's own time)."""
    joined = np.sort(np.concatenate((a, b)))
    return joined[np.concatenate(([True], joined[1:] != joined[:-1]))] if len(joined) else joined


def _count_above(scores: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each value, how many scores exceed it: one sort and a search instead of comparing every pair, when no
    score is NaN (a NaN exceeds nothing, but sorts last)."""
    if np.isnan(scores).any():
        return (scores[None, :] > values[:, None]).sum(axis=1)
    return len(scores) - np.searchsorted(np.sort(scores), values, side="right")


def _first_unblocked(model: CollaborativeModel, seen: np.ndarray, n: int) -> np.ndarray:
    """The n most popular active items not in `seen` (they are among the first n + len(seen))."""
    head = model.active_popularity_order[: n + len(seen)]
    blocked = np.zeros(len(model.item_pks), dtype=bool)
    blocked[seen] = True
    return head[~blocked[head]][:n].astype(np.int64)


@dataclass
class CandidateItems:
    """The candidates' item states (rows of features.ITEM_STATE_COLUMNS) and categories (category_matrix)."""

    columns: np.ndarray
    categories: np.ndarray
    category_names: dict[str, int]


def candidate_items(
    codes: np.ndarray, *, item_states: Mapping[int, features.ItemState], item_categories: Mapping[int, Sequence[str]]
) -> CandidateItems:
    """CandidateItems from per-code states and categories (serving: the online ItemFeatures rows)."""
    empty = features.ItemState()
    names: dict[str, int] = {}
    return CandidateItems(
        columns=features.item_state_columns([item_states.get(code, empty) for code in codes.tolist()]),
        categories=features.category_matrix([item_categories.get(code, ()) for code in codes.tolist()], names),
        category_names=names,
    )


def ranker_feature_matrix(
    model: CollaborativeModel,
    *,
    candidates: Candidates,
    user: features.UserState,
    at: float,
    category_share: Mapping[str, float],
    items: CandidateItems | None = None,
    item_states: Mapping[int, features.ItemState] | None = None,
    item_categories: Mapping[int, Sequence[str]] | None = None,
) -> np.ndarray:
    """Rows in RANKER_FEATURES order for one user's candidates at time `at`.

    The candidates' items come as `items` (columns, as the training replay keeps them) or as per-code
    `item_states` and `item_categories` (as serving reads them). All states must hold only events before
    `at` (the online rows in serving, a replay in training); `user.recent_items` holds Item keys."""
    codes = candidates.codes
    if items is None:
        items = candidate_items(codes, item_states=item_states or {}, item_categories=item_categories or {})
    matrix = np.empty((len(codes), len(RANKER_FEATURES)), dtype=np.float32)
    scored = candidates.cf_score[~np.isnan(candidates.cf_score)]
    best = scored.max() if np.isfinite(scored).any() else np.nan  # np.nanmax's value, without its overhead
    matrix[:, 0] = candidates.cf_score
    matrix[:, 1] = candidates.cf_score / best if best and best > 0 else np.nan
    matrix[:, 2] = candidates.cf_rank
    matrix[:, 3] = model.popularity_rank[codes]
    matrix[:, 4:7] = _recent_similarity(model, codes, user)
    first_item, first_user = len(CANDIDATE_FEATURES), len(CANDIDATE_FEATURES) + len(features.ITEM_FEATURES)
    first_pair = first_user + len(features.USER_FEATURES)
    matrix[:, first_item:first_user] = features.item_features_batch(items.columns, at)
    matrix[:, first_user:first_pair] = features.user_features(user, at)
    matrix[:, first_pair:] = features.pair_features_batch(
        user, items.columns, items.categories, items.category_names, at, category_share
    )
    return matrix


def _recent_similarity(model: CollaborativeModel, codes: np.ndarray, user: features.UserState) -> np.ndarray:
    """EASE weight from the user's most recent item, and the max and mean over the last few items."""
    out = np.full((len(codes), 3), np.nan, dtype=np.float32)
    recent = model.codes_of([pk for pk, _ in user.recent_items[:RECENT_ITEMS_FOR_SIMILARITY]])
    recent_positions = model.position[recent]
    recent_positions = recent_positions[recent_positions >= 0]
    candidate_positions = model.position[codes]
    inside = candidate_positions >= 0
    if not len(recent_positions) or not inside.any():
        return out
    block = model.weights[np.ix_(recent_positions, candidate_positions[inside])]
    out[inside, 0] = block[0]
    out[inside, 1] = np.maximum.reduce(block, axis=0)
    out[inside, 2] = np.add.reduce(block, axis=0) / np.intp(len(block))  # block.mean(axis=0) without its overhead
    return out


def regressor_feature_matrix(
    *, user: features.UserState, items: CandidateItems, at: float, category_share: Mapping[str, float]
) -> np.ndarray:
    """regressor_feature_row for many items of one user at once (the vectorized twins): rows in
    REGRESSOR_FEATURES order, as float32 (the training replay's rating rows)."""
    matrix = np.empty((len(items.columns), len(REGRESSOR_FEATURES)), dtype=np.float32)
    first_user = len(features.ITEM_FEATURES)
    first_pair = first_user + len(features.USER_FEATURES)
    matrix[:, :first_user] = features.item_features_batch(items.columns, at)
    matrix[:, first_user:first_pair] = features.user_features(user, at)
    matrix[:, first_pair:] = features.pair_features_batch(
        user, items.columns, items.categories, items.category_names, at, category_share
    )
    return matrix


# --- Loading and scoring ------------------------------------------------------------------------

COLLABORATIVE_FILE, ID_MAPS_FILE, MANIFEST_FILE = "collaborative.npz", "id_maps.json", "manifest.json"
RANKER_FILE, REGRESSOR_FILE = "ranker.txt", "regressor.txt"


POP_RANK_COLUMN = RANKER_FEATURES.index("pop_rank")


@dataclass(frozen=True)
class RankerBlend:
    """The score a candidate is ranked by: `ranker_coefficient` x the ranker's score + `prior_coefficient` x the
    popularity prior (-log of its popularity rank, a column of the feature matrix). Per row, so that filtering
    the candidates (a category, exclusions) never reorders the rest. Training chooses the prior's share on a
    validation window (retraining.ml.tuning) and fits the coefficients; the defaults are the ranker alone."""

    ranker_coefficient: float = 1.0
    prior_coefficient: float = 0.0

    def scores(self, ranker_scores: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        if self == RANKER_ALONE:
            return ranker_scores
        return self.ranker_coefficient * ranker_scores + self.prior_coefficient * popularity_prior(matrix)

    @classmethod
    def of_manifest(cls, manifest: Mapping) -> RankerBlend:
        """The blend a manifest records (`params.ranker_blend`); the ranker alone for a model without one."""
        blend = manifest.get("params", {}).get("ranker_blend") or {}
        names = ("ranker_coefficient", "prior_coefficient")
        return cls(**{name: float(blend[name]) for name in names if name in blend})


RANKER_ALONE = RankerBlend()


def popularity_prior(matrix: np.ndarray) -> np.ndarray:
    """-log(popularity rank) of each row's item: most-popular's order, on a scale that flattens in the tail."""
    return -np.log(matrix[:, POP_RANK_COLUMN].astype(np.float64))


@dataclass
class TrainedModel:
    ranker: lgb.Booster
    regressor: lgb.Booster | None
    collaborative: CollaborativeModel
    manifest: dict
    item_external_ids: list[str]

    @property
    def category_share(self) -> dict[str, float]:
        return self.manifest["category_share"]

    @property
    def blend(self) -> RankerBlend:
        return RankerBlend.of_manifest(self.manifest)


def collaborative_load(directory: Path) -> CollaborativeModel:
    with np.load(Path(directory) / COLLABORATIVE_FILE, allow_pickle=False) as arrays:
        return CollaborativeModel(
            item_pks=arrays["item_pks"],
            active=arrays["active"],
            modelled=arrays["modelled"],
            weights=arrays["weights"],
            popularity=arrays["popularity"],
        )


def trained_model_load(directory: Path | str) -> TrainedModel:
    """Load a model directory written by training. Raises FileNotFoundError / ValueError on a bad one."""
    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    if manifest["features"]["ranker"] != RANKER_FEATURES:
        raise ValueError("the model's ranker features differ from this code's RANKER_FEATURES")
    id_maps = json.loads((directory / ID_MAPS_FILE).read_text())
    regressor_path = directory / REGRESSOR_FILE
    return TrainedModel(
        ranker=lgb.Booster(model_file=str(directory / RANKER_FILE)),
        regressor=lgb.Booster(model_file=str(regressor_path)) if regressor_path.exists() else None,
        collaborative=collaborative_load(directory),
        manifest=manifest,
        item_external_ids=id_maps["item_external_ids"],
    )


def ranker_scores(ranker: lgb.Booster, matrix: np.ndarray) -> np.ndarray:
    return ranker.predict(matrix, num_threads=1) if len(matrix) else np.empty(0)


def compiled_ranker_key(model_file: Path) -> str:
    """What names a compiled ranker: the sha256 of the model text, the lleaves/llvmlite versions and the host
    CPU (the object code differs for each)."""
    import llvmlite.binding as llvm  # here, not at the top: training and commands never load LLVM

    versions = f"lleaves {metadata.version('lleaves')}, llvmlite {metadata.version('llvmlite')}"
    identity = f"|{versions}|{llvm.get_host_cpu_name()}".encode()
    return hashlib.sha256(Path(model_file).read_bytes() + identity).hexdigest()


class CompiledRanker:
    """The ranker's trees compiled to native code by lleaves (LLVM): the same scores as LightGBM's own
    predictor (held equal by tests/recommendations/test_compiled_ranker.py) at a fraction of the cost —
    0.13 ms against 0.61 ms for ml-latest-small's ~220 candidates of a user, 95 trees.

    Compiling takes ~2 s (mostly outside the GIL), so the object code is kept in `cache_dir` as
    `ranker-<compiled_ranker_key>.o`, published by rename (concurrent processes compiling the same model never
    see half a file). The folder is writable, so native code from it is trusted only through `trusted_sha256`,
    the digest the registry recorded: the file's bytes are read once, checked, and loaded from a private copy.
    Without a digest, or on a mismatch (logged), the model is compiled again and the cache file replaced.
    `sha256` is the digest of the object code this instance runs."""

    def __init__(self, model_file: Path, cache_dir: Path, *, trusted_sha256: str | None = None):
        import lleaves  # here, not at the top: training and commands never load LLVM

        self.key = compiled_ranker_key(model_file)
        cache_dir.mkdir(parents=True, exist_ok=True)
        cached = cache_dir / f"ranker-{self.key}.o"
        self._model = lleaves.Model(model_file=str(model_file))
        if trusted_sha256 and cached.exists():
            code = cached.read_bytes()
            if hashlib.sha256(code).hexdigest() == trusted_sha256:
                self._load(code)
                self.sha256 = trusted_sha256
                return
            logger.error("compiled ranker %s does not match its recorded sha256: compiling it again", cached.name)
        self.sha256 = self._compile(cache_dir, cached)

    def _load(self, code: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="ranker-") as private:
            copy = Path(private) / "ranker.o"
            copy.write_bytes(code)
            self._model.compile(cache=str(copy))  # lleaves reads the object file here, once

    def _compile(self, cache_dir: Path, cached: Path) -> str:
        """Compile in a private folder (the digest is of the code this process runs, not of a shared file),
        then publish the object code to the cache by rename."""
        with tempfile.TemporaryDirectory(prefix="ranker-") as private:
            self._model.compile(cache=str(Path(private) / "ranker.o"))
            code = (Path(private) / "ranker.o").read_bytes()
        scratch = cache_dir / f".ranker-{self.key}-{os.getpid()}-{id(self)}.o"
        try:
            scratch.write_bytes(code)
            os.replace(scratch, cached)
        finally:
            scratch.unlink(missing_ok=True)
        return hashlib.sha256(code).hexdigest()

    def scores(self, matrix: np.ndarray) -> np.ndarray:
        return self._model.predict(matrix, n_jobs=1) if len(matrix) else np.empty(0)


def ranker_explain(ranker: lgb.Booster, matrix: np.ndarray, top: int = 3) -> list[list[tuple[str, float]]]:
    """Per row, the `top` features that moved the score most (LightGBM SHAP values, `pred_contrib`)."""
    contributions = ranker.predict(matrix, pred_contrib=True, num_threads=1)[:, :-1]
    names = ranker.feature_name()
    result = []
    for row in contributions:
        order = np.argsort(-np.abs(row), kind="stable")[:top]
        result.append([(names[i], float(row[i])) for i in order if not math.isclose(row[i], 0.0)])
    return result


def top_k(codes: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """The k best codes by score, ties broken by code (deterministic)."""
    order = np.lexsort((codes, -scores))
    return codes[order[:k]]
