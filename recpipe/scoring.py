"""Top-k lists of a trained run for a set of users, as of a time.

Shared by evaluation (as of the training cutoff, for the test users) and publication
(as of the night, for every known user). A user's history and the movies never to
recommend are the user's ratings before `as_of`. Where a model has nothing to go
on for a user, the popularity list stands in, marked `fallback`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from recpipe.config import Settings
from recpipe.train import artifact_path

log = logging.getLogger(__name__)
COLUMNS = ["user_id", "rank", "movie_id", "score", "fallback"]


@dataclass
class History:
    """What the system knew before `as_of`: the ratings, and per-user seen movies."""

    as_of: datetime
    ratings: pd.DataFrame  # user_id, movie_id, rating, ts, line_no, rated_at
    seen: dict[int, set[int]]

    @classmethod
    def load(cls, engine: Engine, as_of: datetime) -> "History":
        from recpipe.db import read_ratings

        ratings = read_ratings(engine, before=as_of)
        seen = {int(u): set(m.tolist()) for u, m in ratings.groupby("user_id")["movie_id"]}
        return cls(as_of, ratings, seen)

    @property
    def users(self) -> np.ndarray:
        return np.fromiter(sorted(self.seen), dtype=np.int64)


def _popularity(settings: Settings, run: dict):
    from recpipe.models.popularity import Popularity

    return Popularity.load(artifact_path(settings, run))


def recommend(engine: Engine, settings: Settings, run: dict, history: History, user_ids, k: int,
              fallback_run: dict) -> pd.DataFrame:
    """DataFrame[user_id, rank, movie_id, score, fallback] for `user_ids`."""
    from recpipe.models import popularity

    fallback_model = _popularity(settings, fallback_run)
    user_ids = np.asarray(list(user_ids), dtype=np.int64)
    model = run["model"]
    if model == "popularity":
        lists = popularity.score_top_k(fallback_model if run["run_id"] == fallback_run["run_id"]
                                       else _popularity(settings, run), user_ids, history.seen, k)
        return lists.assign(fallback=False)[COLUMNS]
    if model == "autoint":
        lists = _autoint_lists(engine, settings, run, history, user_ids, k)
    elif model == "gru4rec":
        lists = _gru4rec_lists(settings, run, history, user_ids, k)
    else:
        raise ValueError(f"cannot score model {model!r}")
    lists = lists.assign(fallback=False)
    missing = np.setdiff1d(user_ids, lists["user_id"].unique())
    if len(missing):
        backup = popularity.score_top_k(fallback_model, missing, history.seen, k).assign(fallback=True)
        lists = pd.concat([lists, backup], ignore_index=True)
    return lists.sort_values(["user_id", "rank"], kind="stable").reset_index(drop=True)[COLUMNS]


def _autoint_lists(engine, settings, run, history: History, user_ids, k) -> pd.DataFrame:
    from recpipe.db import read_movies, read_users
    from recpipe.features import load_encodings
    from recpipe.models.autoint import load_model, score_top_k

    model = load_model(artifact_path(settings, run))
    encoders = load_encodings(engine, settings, run["data_stats"]["encodings_artifact_id"])
    users = read_users(engine)
    users = users[users["user_id"].isin(user_ids)]
    return score_top_k(model, encoders, users, read_movies(engine), history.seen, history.as_of, k=k)


def latest_histories(history: History, session_params: dict, user_ids) -> dict[int, list[int]]:
    """Each user's most recent session before as_of, as the model saw sessions in training."""
    from recpipe.sessions import SessionParams, latest_sessions, sessionize

    params = SessionParams.from_dict(session_params)
    ratings = history.ratings[history.ratings["user_id"].isin(user_ids)]
    sessions = sessionize(ratings, params.mode, params.session_gap, params.bucket)
    latest = latest_sessions(sessions, params.min_rating)
    return {int(u): m.tolist() for u, m in latest.groupby("user_id", sort=True)["movie_id"]}


def _gru4rec_lists(settings, run, history: History, user_ids, k) -> pd.DataFrame:
    from recpipe.models.gru4rec import GRU4RecBundle, score_top_k

    bundle = GRU4RecBundle.load(artifact_path(settings, run).parent)
    histories = latest_histories(history, run["data_stats"].get("session_params", {}), user_ids)
    # A history with no movie the model knows gives it nothing to go on: fallback.
    usable = {u: items for u, items in histories.items() if (bundle.index.encode(items) >= 0).any()}
    return score_top_k(bundle, usable, history.seen, k=k)
