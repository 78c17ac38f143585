"""Two-stage lists behind the model interface: candidates from the cheap models, order
from AutoInt+.

Stage 1: for each user, the union of the top-N unseen movies of the night's GRU4Rec,
EASE and popularity runs (of the same phase: the gated runs for the gated run, the
refits for the refit). Stage 2: AutoInt+ (the night's run) scores only those
candidates, O(users x candidates) instead of O(users x catalogue). The list is the
candidates ordered by reciprocal-rank fusion of AutoInt+'s rank with each source's
rank: sum of w / (60 + rank) over AutoInt+ (w = 1) and the sources (w chosen; all
sources at 0 is AutoInt+'s own order). Nothing is trained: `fit` only chooses N and
the source weights on a validation window before the training end and records them
with the component runs' ids and artifact checksums; a refit keeps its gated run's N
and weights (over its components' refits).

The components were trained on the validation window too (they are the night's runs,
never retrained), so the choice of N is made on data they saw; it never sees the
evaluation window.
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from recpipe.models.topk import ranks_within, unique_sorted
from recpipe.plan import LIST_LENGTH
from recpipe.recommenders.base import Fitted, History, Store, empty_lists, merge_config

MODEL_FILE = "twostage.json"
SOURCES = ("gru4rec", "ease", "popularity")  # stage 1: candidate generators
RANKER = "autoint"  # stage 2
FUSION_K = 60  # reciprocal-rank fusion's constant (Cormack et al. 2009): damps the head's weight
DEFAULTS = {
    "candidate_sizes": [20, 50, 100],  # N per source, chosen on validation
    "source_weights": [0.0, 0.5, 1.0, 2.0],  # each source's fusion weight, chosen on validation
    "validation_days": 30,
    "validation_users": 2000,  # at most this many users (every n-th) judge the choice: it stays cheap
    "min_rating": 4,  # validation positives
}


@dataclass
class TwoStage:
    n: int
    sources: dict  # name -> recpipe.scoring.LoadedRun
    ranker: object  # LoadedRun of AutoInt+
    weights: dict  # source name -> fusion weight (all 0: AutoInt+'s order)


def _positive_int(name: str, key: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} {key} must be an integer >= {low}, got {value!r}")
    return value


class TwoStageRecommender:
    name = "twostage"

    def make_config(self, overrides, epochs) -> dict:
        config = merge_config(DEFAULTS, overrides, epochs, self.name, has_epochs=False)
        sizes = config["candidate_sizes"]
        if not isinstance(sizes, list) or not sizes:
            raise ValueError(f"twostage candidate_sizes must be a non-empty list, got {sizes!r}")
        for size in sizes:
            _positive_int(self.name, "candidate_sizes entry", size, LIST_LENGTH)
        weights = config["source_weights"]
        if (not isinstance(weights, list) or not weights
                or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights)):
            raise ValueError(f"twostage source_weights must be a non-empty list of numbers >= 0, got {weights!r}")
        for key in ("validation_days", "validation_users", "min_rating"):
            _positive_int(self.name, key, config[key])
        return config

    def prepare(self, store: Store, plan, inputs, config: dict, train_until):
        from recpipe import registry, runs
        from recpipe.scoring import LoadedRun

        needed = registry.spec(self.name).needs
        missing = [m for m in needed if m not in inputs.component_runs]
        if missing:
            raise ValueError(f"twostage needs the night's runs of {', '.join(missing)} (NightInputs.component_runs)")
        components = {m: runs.get(store.engine, inputs.component_runs[m]) for m in needed}
        for model, run in components.items():
            if run.model != model or run.as_of != plan.night:
                raise ValueError(f"twostage component {model}: run {run.run_id} is a {run.model} run of"
                                 f" {run.as_of:%Y-%m-%d}, not of the night {plan.night:%Y-%m-%d}")
        loaded = {m: LoadedRun(store, run) for m, run in components.items()}
        split = train_until - timedelta(days=config["validation_days"])
        if config.get("gated_choice"):  # a refit keeps the gated run's choice: no validation to build
            history, users = None, np.zeros(0, np.int64)
            positives = pd.DataFrame({"user_id": users, "movie_id": users})
        else:
            history = History.load(store, split)
            window = store.ratings(before=train_until, since=split)
            positives = window[(window["rating"] >= config["min_rating"]) & window["user_id"].isin(list(history.seen))]
            users = np.sort(positives["user_id"].unique())
            users = users[:: max(1, -(-len(users) // config["validation_users"]))]
            positives = positives[positives["user_id"].isin(users)][["user_id", "movie_id"]]
        stats = {"train_until": train_until.isoformat(), "validation_from": split.isoformat(),
                 "validation_users": int(len(users)), "validation_positives": int(len(positives)),
                 "components": {m: {"run_id": r.run_id, "phase": r.phase, "artifact_sha256": r.artifact_sha256}
                                for m, r in components.items()}}
        return TwoStage(max(config["candidate_sizes"]), {m: loaded[m] for m in SOURCES}, loaded[RANKER],
                        dict.fromkeys(SOURCES, 0.0)), history, users, positives, store, stats

    def fit(self, data, config: dict, out_dir: Path, verbose: int | None = None) -> Fitted:
        from recpipe.evaluation.metrics import ranking_metrics

        model, history, users, positives, store, stats = data
        started = time.perf_counter()
        sizes = sorted(set(config["candidate_sizes"]))
        grid = [dict(zip(SOURCES, combo))
                for combo in itertools.product(sorted(set(map(float, config["source_weights"]))), repeat=len(SOURCES))]
        tried = []
        if config.get("gated_choice"):  # a refit keeps the gated run's N and weights
            chosen, weights = int(config["gated_choice"]["n"]), dict(config["gated_choice"]["weights"])
            reason = "the gated run's choice (a refit never chooses again)"
        elif len(users) and (len(sizes) > 1 or len(grid) > 1):
            # One pass at the largest N: a smaller N's candidates are a prefix of each source's list.
            pool = candidates(model.sources, history, users, max(sizes))
            pool = pool.assign(score=ranker_scores(model.ranker, store, history, pool))
            catalogue = len(store.movies())
            for n in sizes:
                subset = _top_n(pool, n)
                for weights in grid:
                    metrics = ranking_metrics(rerank(subset, LIST_LENGTH, weights), positives, catalogue, LIST_LENGTH)
                    tried.append({"n": n, "weights": weights,
                                  **{key: metrics[key] for key in (f"ndcg_at_{LIST_LENGTH}", f"recall_at_{LIST_LENGTH}")},
                                  "candidates_per_user": float(subset.groupby("user_id").size().mean()),
                                  "candidate_recall": _candidate_recall(subset, positives)})
            # best NDCG; a tie goes to the smaller N (cheaper to score), then to smaller weights
            best = max(tried, key=lambda row: (row[f"ndcg_at_{LIST_LENGTH}"], -row["n"], -sum(row["weights"].values())))
            chosen, weights = best["n"], best["weights"]
            reason = f"best NDCG@{LIST_LENGTH} on the {config['validation_days']}-day validation window"
        else:
            chosen = sizes[-1] if len(users) == 0 else sizes[0]
            weights = dict.fromkeys(SOURCES, 0.0)
            reason = "a single candidate size and weight" if len(users) else \
                "no validation users: the largest candidate size, AutoInt+'s order"
        # The log keeps, per N, AutoInt+'s own order and the best fusion (the whole grid is long).
        choice_log = []
        for n in sizes:
            rows = [row for row in tried if row["n"] == n]
            if rows:
                plain = next(row for row in rows if not any(row["weights"].values()))
                choice_log += [plain, max(rows, key=lambda row: row[f"ndcg_at_{LIST_LENGTH}"])]
        Path(out_dir, MODEL_FILE).write_text(json.dumps({"n": chosen, "weights": weights, "fusion_k": FUSION_K,
                                                         "sources": list(SOURCES), "ranker": RANKER,
                                                         "components": stats["components"]}, indent=2))
        stats = {**stats, "n": chosen, "weights": weights, "chosen_because": reason, "choice_log": choice_log,
                 "combinations_tried": len(tried)}
        return Fitted(stats, {"seconds": round(time.perf_counter() - started, 2)}, {"validation_users": len(users)})

    def refit_config(self, config: dict, gated_stats: dict) -> dict:
        return {**config, "gated_choice": {"n": gated_stats["n"], "weights": gated_stats["weights"]}}

    def load(self, bundle, run, store: Store) -> TwoStage:
        from recpipe import runs
        from recpipe.artifacts import ArtifactIntegrityError
        from recpipe.scoring import LoadedRun

        spec = json.loads(bundle.read_text(MODEL_FILE))
        loaded = {}
        for model, recorded in spec["components"].items():
            component = runs.get(store.engine, int(recorded["run_id"]))
            # A component retrained since (same run id, new artifact) is not what was chosen on.
            if component.model != model or component.artifact_sha256 != recorded["artifact_sha256"]:
                raise ArtifactIntegrityError(
                    f"twostage run {run.run_id}: its {model} component (run {recorded['run_id']}) changed since"
                    f" it was built (artifact {component.artifact_sha256}, recorded {recorded['artifact_sha256']});"
                    " refusing to serve it: retrain twostage for the night")
            loaded[model] = LoadedRun(store, component)
        # Bundles written before fusion hold no weights: AutoInt+'s order, as they were built.
        weights = {m: float(w) for m, w in spec.get("weights", dict.fromkeys(spec["sources"], 0.0)).items()}
        return TwoStage(int(spec["n"]), {m: loaded[m] for m in spec["sources"]}, loaded[spec["ranker"]], weights)

    def recommend(self, model: TwoStage, store: Store, history: History, user_ids, k: int) -> pd.DataFrame:
        pool = candidates(model.sources, history, user_ids, model.n)
        if pool.empty:
            return empty_lists()
        pool = pool.assign(score=ranker_scores(model.ranker, store, history, pool))
        return rerank(pool, k, model.weights)

    def extra_metrics(self, model, store: Store, holdout) -> dict:
        return {}


def candidates(sources: dict, history: History, user_ids, n: int) -> pd.DataFrame:
    """DataFrame[user_id, movie_id, source_rank, rank_<source>...]: the union of each
    source's top-n unseen movies per user; source_rank is the movie's best rank among the
    sources, rank_<source> its rank in that source's list (NaN when not in it)."""
    user_ids = np.asarray(user_ids, dtype=np.int64)
    lists = {name: loaded.lists(history, user_ids, n) for name, loaded in sources.items()}
    seen = history.ratings
    # (user, movie) pairs as one int64 key each: the union and the seen filter are array
    # operations on one column, not merges on two.
    width = 1 + max([int(seen["movie_id"].max()) if len(seen) else 0]
                    + [int(frame["movie_id"].max()) for frame in lists.values() if len(frame)])
    keys = {name: frame["user_id"].to_numpy(np.int64) * width + frame["movie_id"].to_numpy(np.int64)
            for name, frame in lists.items()}
    pool = unique_sorted(np.concatenate([np.zeros(0, np.int64), *keys.values()]))  # sorted: user, then movie
    # The sources exclude seen movies already; the union is filtered again so no source can leak one.
    # A search of the seen keys in the sorted pool: no sort of the (much longer) seen side.
    at, found = _find(pool, seen["user_id"].to_numpy(np.int64) * width + seen["movie_id"].to_numpy(np.int64))
    unseen = np.ones(len(pool), bool)
    unseen[at[found]] = False
    pool = pool[unseen]
    columns = {"user_id": pool // width, "movie_id": pool % width}
    for name, frame in lists.items():
        rank = np.full(len(pool), np.nan)
        at, found = _find(pool, keys[name])
        rank[at[found]] = frame["rank"].to_numpy(np.float64)[found]
        columns[f"rank_{name}"] = rank
    ranks = np.column_stack([columns[f"rank_{name}"] for name in lists]) if lists else np.zeros((len(pool), 0))
    columns["source_rank"] = np.nanmin(ranks, axis=1).astype(np.int64) if len(pool) else np.zeros(0, np.int64)
    return pd.DataFrame(columns)


def _find(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in sorted_keys, whether it is there) of each key."""
    at = np.searchsorted(sorted_keys, keys)
    found = at < len(sorted_keys)
    found[found] = sorted_keys[at[found]] == keys[found]
    return at, found


def ranker_scores(ranker, store: Store, history: History, pairs: pd.DataFrame) -> np.ndarray:
    """AutoInt+'s score of each candidate pair as of the history's time."""
    from recpipe.recommenders.autoint import score_pairs

    return score_pairs(ranker.model.network, ranker.model.encoders, store.users(), store.movies(), pairs,
                       history.as_of)


def rerank(pool: pd.DataFrame, k: int, weights: dict | None = None) -> pd.DataFrame:
    """Each user's k best candidates, as lists: by AutoInt+'s score, or with source weights
    by the fused score sum(w / (FUSION_K + rank)) over AutoInt+'s rank (w = 1) and each
    source's rank (ties: AutoInt+'s score, then movie_id ascending). The list's score is
    the one it is ordered by."""
    pool = pool[np.isfinite(pool["score"].to_numpy(np.float64))]
    user, movie = pool["user_id"].to_numpy(np.int64), pool["movie_id"].to_numpy(np.int64)
    score = pool["score"].to_numpy(np.float64)
    # np.lexsort is stable, as sort_values(kind="stable") was, and needs no frame copies.
    if weights and any(weights.values()):
        # AutoInt+'s rank within the user: score desc, ties in pool order (rank "first")
        by_score = np.lexsort((-score, user))
        ranker_rank = np.empty(len(pool), np.float64)
        ranker_rank[by_score] = ranks_within(user[by_score])
        fused = 1.0 / (FUSION_K + ranker_rank)
        for name, weight in weights.items():
            if weight:
                fused += weight * np.nan_to_num(1.0 / (FUSION_K + pool[f"rank_{name}"].to_numpy(np.float64)))
        order = np.lexsort((movie, -score, -fused, user))
        score = fused
    else:
        order = np.lexsort((movie, -score, user))
    rank = ranks_within(user[order])
    top = order[rank <= k]
    return pd.DataFrame({"user_id": user[top], "rank": rank[rank <= k], "movie_id": movie[top],
                         "score": score[top]})


def _top_n(pool: pd.DataFrame, n: int) -> pd.DataFrame:
    """The candidates of a pool built at a larger N that the sources' top-n give, as
    candidates(..., n) would: a source rank beyond n is no rank at all."""
    subset = pool[pool["source_rank"] <= n]
    ranks = [c for c in subset.columns if c.startswith("rank_")]
    return subset.assign(**{c: subset[c].where(subset[c] <= n) for c in ranks})


def _candidate_recall(pool: pd.DataFrame, positives: pd.DataFrame) -> float:
    """Share of the validation positives that are among the user's candidates."""
    if positives.empty:
        return float("nan")
    hit = positives.merge(pool[["user_id", "movie_id"]], on=["user_id", "movie_id"], how="inner")
    return float(len(hit) / len(positives))


RECOMMENDER = TwoStageRecommender()
