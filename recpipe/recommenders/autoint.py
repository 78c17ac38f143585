"""AutoInt+ behind the model interface: training rows from the store (each rating plus
sampled unrated movies as negatives), catalogue scoring, and its CTR metrics.

Config: AutoIntConfig's fields plus the data option `negatives_per_rating`.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from recpipe.features import CONTEXT_FIELDS, FIELDS, ITEM_FIELDS, USER_FIELDS, derive_fields, movie_fields, \
    time_fields, user_fields
from recpipe.models.autoint.config import DEFAULT_CONFIG, AutoIntConfig
from recpipe.recommenders.base import Fitted, History, Store, WarmStartUnavailable, empty_lists, history_summary, \
    merge_config

log = logging.getLogger(__name__)
MODEL_FILE = "autoint.keras"
# The product ranks every unseen movie, not only the ones a user chose to rate: training
# on ratings alone (the seed's CTR task) never shows the model a movie nobody picks.
# Each rating brings this many movies the user had not rated, sampled uniformly, as
# label-0 examples at the same time; popular movies are then learnt as likelier.
DATA_DEFAULTS = {"negatives_per_rating": 1}


def _verbosity() -> int:
    import sys

    return 1 if sys.stderr.isatty() else 2


class AutoIntRecommender:
    name = "autoint"

    def make_config(self, overrides, epochs) -> dict:
        config = merge_config({**DEFAULT_CONFIG.to_dict(), **DATA_DEFAULTS}, overrides, epochs, self.name)
        negatives = config["negatives_per_rating"]
        if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 0:
            raise ValueError(f"autoint negatives_per_rating must be an integer >= 0, got {negatives!r}")
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
        frame = derive_fields(examples, movies, store.users())
        X, y = encoders.transform(frame), frame["label"].to_numpy(np.float32)
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

        return load_model(bundle.path(MODEL_FILE)), store.encoders(run.data_stats["encodings_artifact_id"])

    def recommend(self, model, store: Store, history: History, user_ids, k: int) -> pd.DataFrame:
        network, encoders = model
        users = store.users()
        users = users[users["user_id"].isin(np.asarray(user_ids))]
        return score_catalogue(network, encoders, users, store.movies(), history.seen, history.as_of, k=k)

    def extra_metrics(self, model, store: Store, holdout: pd.DataFrame) -> dict:
        """AUC and log-loss on every rating of the window (its CTR task)."""
        from sklearn.metrics import log_loss, roc_auc_score

        from recpipe.models.autoint.fit import predict_proba

        network, encoders = model
        y = holdout["label"].to_numpy()
        if len(holdout) == 0 or len(np.unique(y)) < 2:
            return {}
        p = predict_proba(network, encoders.transform(derive_fields(holdout, store.movies(), store.users())))
        return {"auc": float(roc_auc_score(y, p)), "log_loss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7))),
                "ctr_rows": int(len(y))}


def model_config(config: Mapping) -> AutoIntConfig:
    return AutoIntConfig.from_dict({k: v for k, v in config.items() if k not in DATA_DEFAULTS})


def with_sampled_negatives(ratings, movie_ids: np.ndarray, per_rating: int, seed: int):
    """ratings (user_id, movie_id, rating, rated_at, ts, line_no) plus `per_rating` unrated
    movies per row as rating-0 rows; all in time order (so validation stays the latest)."""
    if per_rating <= 0:
        return ratings.sort_values(["ts", "line_no"], kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    stride = int(movie_ids.max()) + 1
    seen = np.unique(ratings["user_id"].to_numpy(np.int64) * stride + ratings["movie_id"].to_numpy(np.int64))
    users = np.repeat(ratings["user_id"].to_numpy(np.int64), per_rating)
    picks = rng.choice(movie_ids, size=len(users))
    for _ in range(10):  # re-draw the few samples that hit a rated movie
        clash = np.isin(users * stride + picks, seen)
        if not clash.any():
            break
        picks[clash] = rng.choice(movie_ids, size=int(clash.sum()))
    keep = ~np.isin(users * stride + picks, seen)
    source = ratings.iloc[np.repeat(np.arange(len(ratings)), per_rating)[keep]]
    negatives = pd.DataFrame({
        "user_id": users[keep], "movie_id": picks[keep], "rating": np.zeros(int(keep.sum()), dtype=np.int16),
        "ts": source["ts"].to_numpy(), "line_no": source["line_no"].to_numpy(),
        "rated_at": source["rated_at"].to_numpy(),
    })
    both = pd.concat([ratings, negatives], ignore_index=True)
    return both.sort_values(["ts", "line_no"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------
# Top-k scoring of the catalogue
# ---------------------------------------------------------------------------------------
def _field_codes(encoders, partial: pd.DataFrame, owned: list[str]) -> np.ndarray:
    """Codes of the `owned` fields of `partial` (other fields 0), in the encoders' field order."""
    frame = pd.DataFrame({name: partial[name] if name in owned else None for name in FIELDS}, index=partial.index)
    codes = encoders.transform(frame)
    mask = np.array([name in owned for name in encoders.fields])
    codes[:, ~mask] = 0
    return codes


def _side_codes(encoders, users_frame: pd.DataFrame, movies_frame: pd.DataFrame, as_of):
    """(user_ids, user codes, movie_ids in id order, movie + context codes as of `as_of`):
    a pair's codes are the sum of its user's row and its movie's row."""
    movies_frame = movies_frame.drop_duplicates("movie_id").sort_values("movie_id", kind="stable")
    users_frame = users_frame.drop_duplicates("user_id")
    mf = movie_fields(movies_frame).reset_index(drop=True)
    mf["movie_id"] = mf["movie_id"].astype(str).astype(object)
    tf_ = time_fields(pd.Series([pd.Timestamp(as_of)] * len(mf), index=mf.index))
    mf = pd.concat([mf, tf_], axis=1)
    movie_codes = _field_codes(encoders, mf, ITEM_FIELDS + CONTEXT_FIELDS)
    uf = user_fields(users_frame).reset_index(drop=True)
    uf["user_id"] = uf["user_id"].astype(str).astype(object)
    user_codes = _field_codes(encoders, uf, USER_FIELDS)
    return (users_frame["user_id"].to_numpy(np.int64), user_codes, movies_frame["movie_id"].to_numpy(np.int64),
            movie_codes)


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
    user_ids, user_codes, movie_ids, movie_codes = _side_codes(encoders, users_frame, movies_frame, as_of)

    from recpipe.models.autoint.fit import predict_proba

    movie_pos = pd.Index(movie_ids)
    n_movies = len(movie_ids)
    k_eff = min(k, n_movies)
    out_users, out_ranks, out_movies, out_scores = [], [], [], []
    seen = seen or {}
    for start in range(0, len(user_ids), chunk_users):
        stop = min(start + chunk_users, len(user_ids))
        n_u = stop - start
        codes = (user_codes[start:stop, None, :] + movie_codes[None, :, :]).reshape(-1, movie_codes.shape[1])
        scores = predict_proba(model, codes, batch_size=batch_size).reshape(n_u, n_movies)
        excluded = np.zeros((n_u, n_movies), dtype=bool)
        for row, uid in enumerate(user_ids[start:stop]):
            items = seen.get(int(uid))
            if items is None:
                continue
            pos = movie_pos.get_indexer(np.fromiter((int(m) for m in items), dtype=np.int64))
            excluded[row, pos[pos >= 0]] = True
        key = np.where(excluded, np.inf, -scores.astype(np.float64))
        # movies are in movie_id order, so a stable sort breaks score ties by movie_id asc
        order = np.argsort(key, axis=1, kind="stable")[:, :k_eff]
        top_scores = np.take_along_axis(scores, order, axis=1)
        valid = ~np.take_along_axis(excluded, order, axis=1)
        rows, cols = np.nonzero(valid)
        out_users.append(user_ids[start:stop][rows])
        out_ranks.append(cols + 1)
        out_movies.append(movie_ids[order[rows, cols]])
        out_scores.append(top_scores[rows, cols])
    if not out_users:
        return empty_lists()
    return pd.DataFrame(
        {
            "user_id": np.concatenate(out_users).astype(np.int64),
            "rank": np.concatenate(out_ranks).astype(np.int64),
            "movie_id": np.concatenate(out_movies).astype(np.int64),
            "score": np.concatenate(out_scores).astype(np.float32),
        }
    )



RECOMMENDER = AutoIntRecommender()
