"""AutoInt+ behind the model interface: training rows from the store (each rating plus
sampled unrated movies as negatives), catalogue scoring, and its CTR metrics.

Config: AutoIntConfig's fields plus the data option `negatives_per_rating`.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from recpipe.features import POSITIVE_MIN_RATING, context_codes, encode_events, movie_codes, user_codes
from recpipe.models.autoint.config import DEFAULT_CONFIG, AutoIntConfig
from recpipe.models.topk import unique_sorted
from recpipe.recommenders.base import Fitted, History, Store, WarmStartUnavailable, empty_lists, history_summary, \
    merge_config

log = logging.getLogger(__name__)
MODEL_FILE = "autoint.keras"
# The product ranks every unseen movie, not only the ones a user chose to rate: training
# on ratings alone (the seed's CTR task) never shows the model a movie nobody picks.
# Each rating brings this many movies the user had not rated, sampled uniformly, as
# label-0 examples at the same time; popular movies are then learnt as likelier.
# Publication ranks at most `catalogue_limit` movies per user, the most rated before the
# night: the whole catalogue costs users x movies predictions (ML-25M: 10^10), the pool
# users x limit. ML-1M's 3.7k movies are all ranked. The two-stage model is the one that
# scales further (AutoInt+ there scores only candidates).
DATA_DEFAULTS = {"negatives_per_rating": 1, "catalogue_limit": 5000}


@dataclass(frozen=True)
class LoadedAutoInt:
    network: object
    encoders: object
    catalogue_limit: int


def _verbosity() -> int:
    import sys

    return 1 if sys.stderr.isatty() else 2


class AutoIntRecommender:
    name = "autoint"

    def make_config(self, overrides, epochs) -> dict:
        config = merge_config({**DEFAULT_CONFIG.to_dict(), **DATA_DEFAULTS}, overrides, epochs, self.name)
        for key, least in (("negatives_per_rating", 0), ("catalogue_limit", 1)):
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"autoint {key} must be an integer >= {least}, got {value!r}")
        model_config(config)  # the dataclass checks the rest
        return config

    def prepare(self, store: Store, plan, inputs, config: dict, train_until):
        if inputs.encodings_id is None:
            raise ValueError("autoint needs the night's encodings (NightInputs.encodings_id)")
        encoders = store.encoders(inputs.encodings_id)
        ratings = store.ratings(before=train_until)
        if ratings.empty:
            raise ValueError(f"no ratings before {train_until}: nothing to train AutoInt+ on")
        movies = store.movies()
        examples = with_sampled_negatives(ratings, movies["movie_id"].to_numpy(), config["negatives_per_rating"],
                                          config["seed"])
        X = encode_events(encoders, examples, movies, store.users())
        y = (examples["rating"].to_numpy() >= POSITIVE_MIN_RATING).astype(np.float32)
        del examples
        stats = {"train_until": train_until.isoformat(), "rows": int(len(y)), "positives": float(y.mean()),
                 "ratings": int(len(ratings)), "negatives_per_rating": config["negatives_per_rating"],
                 "users": int(ratings["user_id"].nunique()), "movies": int(ratings["movie_id"].nunique()),
                 "encodings_artifact_id": int(inputs.encodings_id), "field_dims": encoders.field_dims,
                 "fields": list(encoders.fields), "unused_fields": encoders.unused_fields}
        log.info("autoint trains on %d fields: %s%s", len(encoders.fields), ", ".join(encoders.fields),
                 f" (unused, no values in the source: {', '.join(encoders.unused_fields)})"
                 if encoders.unused_fields else "")
        return X, y, encoders.field_dims, stats

    def fit(self, data, config: dict, out_dir: Path, verbose: int | None = None,
            initial_weights: Mapping | None = None) -> Fitted:
        from recpipe.models.autoint.fit import fit_autoint
        from recpipe.models.autoint.network import save_model

        X, y, field_dims, stats = data
        started = time.perf_counter()
        model, history = fit_autoint(X, y, field_dims, model_config(config), out_dir=out_dir,
                                     verbose=_verbosity() if verbose is None else verbose,
                                     initial_weights=initial_weights)
        seconds = time.perf_counter() - started
        save_model(model, Path(out_dir) / MODEL_FILE)
        return Fitted(stats, history_summary(history, seconds), {"train_rows": int(len(y))})

    def warm_start_weights(self, bundle, parent, store: Store, data, config: dict) -> tuple[dict, dict]:
        """The gated run's weights for tonight's encoders: each field's embedding rows are
        copied by value (user id, movie id, zip, ...); a value the gated encoders did not
        know starts from that field's unknown row, i.e. as the gated model served it.
        Every other layer is copied as is (same fields, same architecture)."""
        from recpipe.models.autoint.network import load_model

        _, _, field_dims, stats = data
        network = {k: v for k, v in config.items() if k not in ("epochs", "patience", *DATA_DEFAULTS)}
        theirs = {k: v for k, v in (parent.config or {}).items() if k in network}
        if theirs != network:
            raise WarmStartUnavailable(f"gated run {parent.run_id}'s config differs from tonight's"
                                       f" ({sorted(k for k in network if theirs.get(k) != network[k])})")
        old_enc = store.encoders(parent.data_stats["encodings_artifact_id"])
        new_enc = store.encoders(stats["encodings_artifact_id"])
        if tuple(old_enc.fields) != tuple(new_enc.fields):
            raise WarmStartUnavailable(f"the fields differ: gated {list(old_enc.fields)}, tonight {list(new_enc.fields)}")
        old_model = load_model(bundle.path(MODEL_FILE))
        old_table = old_model.get_layer("embedding").get_weights()[0]
        old_vocab, new_vocab = old_enc.vocabularies, new_enc.vocabularies
        old_dims = old_enc.field_dims
        old_off = np.concatenate([[0], np.cumsum(old_dims)[:-1]])
        rows, known = [], {}
        for f, name in enumerate(new_enc.fields):
            old_code = pd.Index(old_vocab[name]).get_indexer(new_vocab[name]) + 1  # 0: unknown to the gated run
            codes = np.concatenate([[0], old_code])  # new code c -> old code (code 0 stays unknown)
            rows.append(old_off[f] + codes)
            known[name] = {"known": int((old_code > 0).sum()), "new": int((old_code == 0).sum())}
        table = old_table[np.concatenate(rows)]
        if table.shape[0] != int(sum(field_dims)):
            raise WarmStartUnavailable(f"grown table has {table.shape[0]} rows, tonight's model {sum(field_dims)}")
        weights = {layer.name: layer.get_weights() for layer in old_model.layers
                   if layer.weights and layer.name != "embedding"}
        weights["embedding"] = [table]
        return weights, {"grown_fields": known, "embedding_rows": {"gated": int(old_table.shape[0]),
                                                                    "refit": int(table.shape[0])}}

    def load(self, bundle, run, store: Store):
        from recpipe.models.autoint.network import load_model

        limit = (run.config or {}).get("catalogue_limit", DATA_DEFAULTS["catalogue_limit"])
        return LoadedAutoInt(load_model(bundle.path(MODEL_FILE)),
                             store.encoders(run.data_stats["encodings_artifact_id"]), int(limit))

    def recommend(self, model: LoadedAutoInt, store: Store, history: History, user_ids, k: int) -> pd.DataFrame:
        users = store.users()
        users = users[users["user_id"].isin(np.asarray(user_ids))]
        return score_catalogue(model.network, model.encoders, users,
                               ranked_movies(store.movies(), history.ratings, model.catalogue_limit),
                               history.seen, history.as_of, k=k)

    def extra_metrics(self, model, store: Store, holdout: pd.DataFrame) -> dict:
        """AUC and log-loss on every rating of the window (its CTR task)."""
        from sklearn.metrics import log_loss, roc_auc_score

        from recpipe.models.autoint.fit import predict_proba

        y = holdout["label"].to_numpy()
        if len(holdout) == 0 or len(np.unique(y)) < 2:
            return {}
        p = predict_proba(model.network, encode_events(model.encoders, holdout, store.movies(), store.users()))
        return {"auc": float(roc_auc_score(y, p)), "log_loss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7))),
                "ctr_rows": int(len(y))}


def ranked_movies(movies: pd.DataFrame, ratings: pd.DataFrame, limit: int) -> pd.DataFrame:
    """The catalogue, or when it is larger than `limit` its `limit` most rated movies in
    `ratings` (ties: lower movie_id)."""
    if len(movies) <= limit:
        return movies
    counts = ratings["movie_id"].value_counts().sort_index()
    top = counts.sort_values(ascending=False, kind="stable").index[:limit]
    return movies[movies["movie_id"].isin(top)]


def model_config(config: Mapping) -> AutoIntConfig:
    return AutoIntConfig.from_dict({k: v for k, v in config.items() if k not in DATA_DEFAULTS})


def with_sampled_negatives(ratings, movie_ids: np.ndarray, per_rating: int, seed: int) -> pd.DataFrame:
    """ratings (user_id, movie_id, rating, rated_at, ts, line_no) in time order, each
    followed by `per_rating` movies its user had not rated, sampled uniformly, as rating-0
    rows at the same time (so validation, the last rows, stays the latest). Columns:
    user_id, movie_id, rating, rated_at, ts: only what training reads (50M rows at 25M),
    each gathered once from `ratings` (no sorted copy of the whole frame)."""
    by_time = np.lexsort((ratings["line_no"].to_numpy(), ratings["ts"].to_numpy()))
    users = ratings["user_id"].to_numpy(np.int64)
    movies = ratings["movie_id"].to_numpy(np.int64)
    source = by_time  # row of `ratings` behind each output row
    picks = np.zeros(0, dtype=np.int64)
    if per_rating > 0:
        rng = np.random.default_rng(seed)
        stride = int(max(movie_ids.max(), movies.max(initial=0))) + 1
        seen = unique_sorted(users * stride + movies)
        neg_source = np.repeat(np.arange(len(users)), per_rating)  # drawn in the frame's order
        picks = rng.choice(movie_ids, size=len(neg_source)).astype(np.int64)
        for _ in range(10):  # re-draw the few samples that hit a rated movie
            clash = np.isin(users[neg_source] * stride + picks, seen)
            if not clash.any():
                break
            picks[clash] = rng.choice(movie_ids, size=int(clash.sum()))
        keep = ~np.isin(users[neg_source] * stride + picks, seen)
        del seen
        neg_source, picks = neg_source[keep], picks[keep]
        # each rating (in time order), then its negatives
        time_rank = np.empty(len(by_time), dtype=np.int64)
        time_rank[by_time] = np.arange(len(by_time))
        is_negative = np.repeat([False, True], [len(by_time), len(neg_source)])
        order = np.lexsort((is_negative, np.concatenate([np.arange(len(by_time)), time_rank[neg_source]])))
        source = np.concatenate([by_time, neg_source])[order]
        movie = np.concatenate([movies[by_time], picks])[order]
        rating = np.where(is_negative[order], 0, ratings["rating"].to_numpy()[source]).astype(np.int16)
    else:
        movie, rating = movies[source], ratings["rating"].to_numpy()[source].astype(np.int16)
    return pd.DataFrame({
        "user_id": users[source], "movie_id": movie, "rating": rating,
        "rated_at": ratings["rated_at"].array.take(source), "ts": ratings["ts"].to_numpy()[source],
    })


# ---------------------------------------------------------------------------------------
# Top-k scoring of the catalogue
# ---------------------------------------------------------------------------------------
def _side_codes(encoders, users_frame: pd.DataFrame, movies_frame: pd.DataFrame, as_of):
    """(user_ids, user codes, movie_ids in id order, movie + context codes as of `as_of`):
    a pair's codes are the sum of its user's row and its movie's row."""
    movie_ids = np.unique(movies_frame["movie_id"].to_numpy(np.int64))
    user_ids = users_frame["user_id"].drop_duplicates().to_numpy(np.int64)
    context = context_codes(encoders, pd.Series([pd.Timestamp(as_of)]))
    return (user_ids, user_codes(encoders, user_ids, users_frame), movie_ids,
            movie_codes(encoders, movie_ids, movies_frame) + context)


def score_pairs(model, encoders, users_frame: pd.DataFrame, movies_frame: pd.DataFrame, pairs: pd.DataFrame,
                as_of, batch_size: int = 65536, chunk: int = 1 << 18) -> np.ndarray:
    """AutoInt+'s probability for each (user_id, movie_id) row of `pairs` as of `as_of`,
    the same fields and codes as score_catalogue but only for the given pairs (a second
    stage scores users x candidates, not the catalogue). NaN where the user or the movie
    is not in the frames."""
    from recpipe.models.autoint.fit import predict_proba

    user_ids, user_codes, movie_ids, movie_codes = _side_codes(encoders, users_frame, movies_frame, as_of)
    u = pd.Index(user_ids).get_indexer(pairs["user_id"].to_numpy(np.int64))
    m = pd.Index(movie_ids).get_indexer(pairs["movie_id"].to_numpy(np.int64))
    known = np.flatnonzero((u >= 0) & (m >= 0))
    scores = np.full(len(pairs), np.nan, dtype=np.float32)
    for start in range(0, len(known), chunk):  # bounded memory: chunk x 14 codes at a time
        rows = known[start:start + chunk]
        scores[rows] = predict_proba(model, user_codes[u[rows]] + movie_codes[m[rows]], batch_size=batch_size)
    return scores


def score_catalogue(
    model,
    encoders,
    users_frame: pd.DataFrame,
    movies_frame: pd.DataFrame,
    seen: Mapping[int, Iterable[int]] | None,
    as_of,
    k: int = 10,
    chunk_users: int = 256,
    batch_size: int = 65536,
) -> pd.DataFrame:
    """Top-k unseen movies for every user, as DataFrame[user_id, rank, movie_id, score].

    users_frame: users.dat-like rows (user_id, gender, age, occupation, zip); movies_frame:
    movies.dat-like rows (movie_id, title, year, genres). `seen` maps user_id -> the
    movie_ids that user rated before `as_of` (any iterable; users absent = nothing
    seen); those pairs are never recommended. The rating-time fields come from `as_of`
    (the scoring date). User fields are encoded once per user, movie fields once per
    movie, and pair codes are their broadcast sum, scored `chunk_users` users at a time
    (memory ~ chunk_users x n_movies x 14 x 4 bytes). rank is 1-based; ties broken by
    score desc then movie_id asc. Users with fewer than k unseen movies get fewer rows.
    """
    from recpipe.models.autoint.fit import predict_proba
    from recpipe.models.topk import chunked_top_k, exclusions, group_lists

    user_ids, user_codes, movie_ids, movie_codes = _side_codes(encoders, users_frame, movies_frame, as_of)

    def chunk_scores(lo: int, hi: int) -> np.ndarray:
        codes = (user_codes[lo:hi, None, :] + movie_codes[None, :, :]).reshape(-1, movie_codes.shape[1])
        return predict_proba(model, codes, batch_size=batch_size).reshape(hi - lo, len(movie_ids))

    # movie_ids are sorted, so top-k's ties by item index are ties by movie_id
    excluded = exclusions(pd.Index(movie_ids).get_indexer, group_lists(seen, user_ids.tolist()), len(movie_ids))
    rows, rank, items, scores = chunked_top_k(chunk_scores, len(user_ids), k, excluded, chunk_users)
    if not len(rows):
        return empty_lists()
    return pd.DataFrame({"user_id": user_ids[rows], "rank": rank, "movie_id": movie_ids[items],
                         "score": scores.astype(np.float32)})


RECOMMENDER = AutoIntRecommender()
