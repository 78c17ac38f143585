"""Two-stage lists behind the model interface: candidates from the cheap models, order
from AutoInt+.

Stage 1: for each user, the union of the top-N unseen movies of the night's GRU4Rec,
EASE and popularity runs (of the same phase: the gated runs for the gated run, the
refits for the refit). Stage 2: AutoInt+ (the night's run) scores only those
candidates, O(users x candidates) instead of O(users x catalogue), and its order is
the list. Nothing is trained: `fit` only chooses N on a validation window before the
training end and records it with the component runs' ids and artifact checksums.

The components were trained on the validation window too (they are the night's runs,
never retrained), so the choice of N is made on data they saw; it never sees the
evaluation window.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from recpipe.plan import LIST_LENGTH
from recpipe.recommenders.base import Fitted, History, Store, empty_lists, merge_config

MODEL_FILE = "twostage.json"
SOURCES = ("gru4rec", "ease", "popularity")  # stage 1: candidate generators
RANKER = "autoint"  # stage 2
DEFAULTS = {
    "candidate_sizes": [20, 50, 100],  # N per source, chosen on validation
    "validation_days": 30,
    "validation_users": 2000,  # at most this many users (every n-th) judge the choice: it stays cheap
    "min_rating": 4,  # validation positives
}


@dataclass
class TwoStage:
    n: int
    sources: dict  # name -> recpipe.scoring.LoadedRun
    ranker: object  # LoadedRun of AutoInt+


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
        return TwoStage(max(config["candidate_sizes"]), {m: loaded[m] for m in SOURCES}, loaded[RANKER]), \
            history, users, positives, store, stats

    def fit(self, data, config: dict, out_dir: Path, verbose: int | None = None) -> Fitted:
        from recpipe.evaluation.metrics import ranking_metrics

        model, history, users, positives, store, stats = data
        started = time.perf_counter()
        sizes = sorted(set(config["candidate_sizes"]))
        choice_log = []
        if len(users) and len(sizes) > 1:
            # One pass at the largest N: a smaller N's candidates are a prefix of each source's list.
            pool = candidates(model.sources, history, users, max(sizes))
            pool = pool.assign(score=ranker_scores(model.ranker, store, history, pool))
            catalogue = len(store.movies())
            for n in sizes:
                top = rerank(pool[pool["source_rank"] <= n], LIST_LENGTH)
                metrics = ranking_metrics(top, positives, catalogue, LIST_LENGTH)
                recall = _candidate_recall(pool[pool["source_rank"] <= n], positives)
                choice_log.append({"n": n, **{k: metrics[k] for k in (f"ndcg_at_{LIST_LENGTH}",
                                                                     f"recall_at_{LIST_LENGTH}")},
                                   "candidates_per_user": float(pool[pool["source_rank"] <= n]
                                                                .groupby("user_id").size().mean()),
                                   "candidate_recall": recall})
            # best NDCG; a tie goes to the smaller N (cheaper to score)
            chosen = max(choice_log, key=lambda row: (row[f"ndcg_at_{LIST_LENGTH}"], -row["n"]))["n"]
            reason = f"best NDCG@{LIST_LENGTH} on the {config['validation_days']}-day validation window"
        else:
            chosen = sizes[-1] if len(users) == 0 else sizes[0]
            reason = "a single candidate size" if len(users) else "no validation users: the largest candidate size"
        Path(out_dir, MODEL_FILE).write_text(json.dumps({"n": chosen, "sources": list(SOURCES), "ranker": RANKER,
                                                         "components": stats["components"]}, indent=2))
        stats = {**stats, "n": chosen, "chosen_because": reason, "choice_log": choice_log}
        return Fitted(stats, {"seconds": round(time.perf_counter() - started, 2)}, {"validation_users": len(users)})

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
        return TwoStage(int(spec["n"]), {m: loaded[m] for m in spec["sources"]}, loaded[spec["ranker"]])

    def recommend(self, model: TwoStage, store: Store, history: History, user_ids, k: int) -> pd.DataFrame:
        pool = candidates(model.sources, history, user_ids, model.n)
        if pool.empty:
            return empty_lists()
        pool = pool.assign(score=ranker_scores(model.ranker, store, history, pool))
        return rerank(pool, k)

    def extra_metrics(self, model, store: Store, holdout) -> dict:
        return {}


def candidates(sources: dict, history: History, user_ids, n: int) -> pd.DataFrame:
    """DataFrame[user_id, movie_id, source_rank]: the union of each source's top-n unseen
    movies per user; source_rank is the movie's best rank among the sources."""
    user_ids = np.asarray(user_ids, dtype=np.int64)
    frames = [loaded.lists(history, user_ids, n)[["user_id", "movie_id", "rank"]] for loaded in sources.values()]
    pool = pd.concat(frames, ignore_index=True).astype(np.int64)
    pool = pool.groupby(["user_id", "movie_id"], as_index=False, sort=False)["rank"].min()
    # The sources exclude seen movies already; the union is filtered again so no source can leak one.
    seen = history.ratings[["user_id", "movie_id"]].drop_duplicates().assign(_seen=True)
    pool = pool.merge(seen, on=["user_id", "movie_id"], how="left")
    pool = pool[pool["_seen"].isna()].drop(columns="_seen")
    return pool.rename(columns={"rank": "source_rank"}).reset_index(drop=True)


def ranker_scores(ranker, store: Store, history: History, pairs: pd.DataFrame) -> np.ndarray:
    """AutoInt+'s score of each candidate pair as of the history's time."""
    from recpipe.recommenders.autoint import score_pairs

    network, encoders = ranker.model
    return score_pairs(network, encoders, store.users(), store.movies(), pairs, history.as_of)


def rerank(pool: pd.DataFrame, k: int) -> pd.DataFrame:
    """Each user's k best candidates by score (ties: movie_id ascending), as lists."""
    pool = pool[np.isfinite(pool["score"].to_numpy(np.float64))]
    ordered = pool.sort_values(["user_id", "score", "movie_id"], ascending=[True, False, True], kind="stable")
    ranks = ordered.groupby("user_id", sort=False).cumcount() + 1
    top = ordered[ranks.to_numpy() <= k].assign(rank=ranks[ranks <= k].to_numpy())
    return pd.DataFrame({"user_id": top["user_id"].to_numpy(np.int64), "rank": top["rank"].to_numpy(np.int64),
                         "movie_id": top["movie_id"].to_numpy(np.int64),
                         "score": top["score"].to_numpy(np.float64)})


def _candidate_recall(pool: pd.DataFrame, positives: pd.DataFrame) -> float:
    """Share of the validation positives that are among the user's candidates."""
    if positives.empty:
        return float("nan")
    hit = positives.merge(pool[["user_id", "movie_id"]], on=["user_id", "movie_id"], how="inner")
    return float(len(hit) / len(positives))


RECOMMENDER = TwoStageRecommender()
