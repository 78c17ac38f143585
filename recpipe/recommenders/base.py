"""The model interface: what every registered model provides, and what they share.

A Recommender is a small object (one per model module, `RECOMMENDER`) that turns the
stored data into a model and a model into top-k lists:

    make_config(overrides, epochs) -> dict        full, validated config (unknown keys refused)
    prepare(store, plan, inputs, config, train_until) -> data   training data from the store
    fit(data, config, out_dir, verbose) -> Fitted  writes the model's files into out_dir
    load(bundle, run, store) -> model              from a verified bundle (recpipe.artifacts)
    recommend(model, store, history, user_ids, k) -> DataFrame[user_id, rank, movie_id, score]
    extra_metrics(model, store, holdout) -> dict   model-specific figures (e.g. AUC)

Models with weights to continue from (AutoInt+, GRU4Rec) also offer
    warm_start_weights(bundle, parent_run, store, data, config) -> (weights, facts)
the gated run's weights grown to tonight's vocabularies (layer name -> arrays, for
`fit(..., initial_weights=weights)`), or WarmStartUnavailable with the reason.

Models that choose settings on a validation window (EASE, item-kNN, two-stage) also offer
    refit_config(config, gated_stats) -> dict
tonight's config with the gated run's choice fixed (from its data_stats): a refit
retrains the configuration the gate judged, it never chooses again.

Users a model cannot serve (nothing to go on) are simply absent from `recommend`'s
lists; `lists_with_fallback` gives them the baseline's list, marked `fallback`.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from recpipe.config import Settings
from recpipe.models.topk import unique_sorted

LIST_COLUMNS = ["user_id", "rank", "movie_id", "score"]
PUBLISHED_COLUMNS = [*LIST_COLUMNS, "fallback"]


@dataclass
class Store:
    """Read access to the stored data for one stage, each table read at most once."""

    engine: Engine
    settings: Settings
    _cache: dict = field(default_factory=dict, repr=False)

    def _cached(self, key, load):
        if key not in self._cache:
            self._cache[key] = load()
        return self._cache[key]

    def ratings(self, before: datetime | None = None, since: datetime | None = None) -> pd.DataFrame:
        from recpipe.db import read_ratings

        return self._cached(("ratings", before, since), lambda: read_ratings(self.engine, before=before, since=since))

    def users(self) -> pd.DataFrame:
        from recpipe.db import read_users

        return self._cached("users", lambda: read_users(self.engine))

    def movies(self) -> pd.DataFrame:
        from recpipe.db import read_movies

        return self._cached("movies", lambda: read_movies(self.engine))

    def encoders(self, artifact_id: int):
        from recpipe.features import load_encodings

        return self._cached(("encoders", artifact_id), lambda: load_encodings(self.engine, self.settings, artifact_id))

    def session_build(self, build_id: int) -> tuple[dict, dict[str, pd.DataFrame]]:
        """(params, sets) of a stored session build."""
        from recpipe.sessions import load_session_build

        return self._cached(("sessions", build_id), lambda: load_session_build(self.engine, build_id))


class SeenMovies(Mapping):
    """user_id -> the movie_ids the user rated (a sorted int64 array), held as one CSR:
    users, offsets, movies. About 10 bytes a rating, against ~90 in a dict of Python
    sets (2.2 GiB at 25M ratings, in every stage that loads a History)."""

    def __init__(self, user_ids: np.ndarray, movie_ids: np.ndarray):
        user_ids, movie_ids = np.asarray(user_ids, np.int64), np.asarray(movie_ids, np.int64)
        stride = int(movie_ids.max(initial=0)) + 1  # ids are positive int32: the key fits int64
        pairs = unique_sorted(user_ids * stride + movie_ids)  # by user, then movie; each pair once
        users, self._movies = np.divmod(pairs, stride)
        starts = np.flatnonzero(np.concatenate([[True], users[1:] != users[:-1]])) if len(users) else users
        self._users = users[starts]
        self._offsets = np.append(starts, len(users))

    def _position(self, user) -> int:
        try:
            user = int(user)
        except (TypeError, ValueError):
            return -1
        i = int(np.searchsorted(self._users, user))
        return i if i < len(self._users) and self._users[i] == user else -1

    def __getitem__(self, user) -> np.ndarray:
        i = self._position(user)
        if i < 0:
            raise KeyError(user)
        return self._movies[self._offsets[i]:self._offsets[i + 1]]

    def __contains__(self, user) -> bool:
        return self._position(user) >= 0

    def __iter__(self):
        return iter(self._users.tolist())

    def __len__(self) -> int:
        return len(self._users)


@dataclass
class History:
    """What the system knew before `as_of`: the ratings, and per-user seen movies."""

    as_of: datetime
    ratings: pd.DataFrame  # user_id, movie_id, rating, ts, line_no, rated_at
    seen: Mapping[int, Iterable[int]]  # SeenMovies when loaded

    @classmethod
    def load(cls, store: Store, as_of: datetime) -> "History":
        ratings = store.ratings(before=as_of)
        return cls(as_of, ratings, SeenMovies(ratings["user_id"].to_numpy(), ratings["movie_id"].to_numpy()))

    @property
    def users(self) -> np.ndarray:
        return np.fromiter(sorted(self.seen), dtype=np.int64)


@dataclass
class Fitted:
    """What `fit` reports: facts about the data and the fit (JSON-able)."""

    data_stats: dict
    training: dict
    row_counts: dict = field(default_factory=dict)


class WarmStartUnavailable(ValueError):
    """The gated run's weights cannot seed this refit (say why): it is refitted in full."""


def grow_rows(old: np.ndarray, old_pos: np.ndarray, fresh: np.ndarray, axis: int = 0) -> np.ndarray:
    """A table for a grown vocabulary along `axis`: entry i is old's entry old_pos[i]
    (copied by id) where old_pos[i] >= 0, else fresh's entry i (a new id)."""
    old, fresh = np.moveaxis(np.asarray(old), axis, 0), np.moveaxis(np.array(fresh, copy=True), axis, 0)
    known = old_pos >= 0
    fresh[known] = old[old_pos[known]]
    return np.moveaxis(fresh, 0, axis)


class Recommender(Protocol):
    name: str

    def make_config(self, overrides: Mapping[str, Any] | None, epochs: int | None) -> dict: ...

    def prepare(self, store: Store, plan, inputs, config: dict, train_until: datetime) -> Any: ...

    def fit(self, data: Any, config: dict, out_dir: Path, verbose: int) -> Fitted: ...

    def load(self, bundle, run, store: Store) -> Any: ...

    def recommend(self, model: Any, store: Store, history: History, user_ids: np.ndarray, k: int) -> pd.DataFrame: ...

    def extra_metrics(self, model: Any, store: Store, holdout: pd.DataFrame) -> dict: ...


def merge_config(defaults: Mapping[str, Any], overrides: Mapping[str, Any] | None, epochs: int | None,
                 model: str, has_epochs: bool = True) -> dict:
    """defaults + overrides (+ epochs); unknown keys refused with the model's name."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise ValueError(f"unknown {model} config keys {unknown}; known: {sorted(defaults)}")
    config = {**defaults, **overrides}
    if epochs is not None and has_epochs:
        config["epochs"] = int(epochs)
    return config


def empty_lists() -> pd.DataFrame:
    return pd.DataFrame({"user_id": pd.Series(dtype="int64"), "rank": pd.Series(dtype="int64"),
                         "movie_id": pd.Series(dtype="int64"), "score": pd.Series(dtype="float64")})


def lists_with_fallback(lists: pd.DataFrame, user_ids, fallback) -> pd.DataFrame:
    """`lists` plus, for users it lacks, `fallback(missing_user_ids)`'s lists marked fallback."""
    user_ids = np.asarray(user_ids, dtype=np.int64)
    lists = lists.assign(fallback=False)
    missing = np.setdiff1d(user_ids, lists["user_id"].unique())
    if len(missing):
        lists = pd.concat([lists, fallback(missing).assign(fallback=True)], ignore_index=True)
    return lists.sort_values(["user_id", "rank"], kind="stable").reset_index(drop=True)[PUBLISHED_COLUMNS]


def history_summary(history: dict, seconds: float) -> dict:
    """A fit's scalar facts (epochs, best epoch, throughput) and its curves, JSON-able."""
    def number(value):
        value = float(value)
        return value if np.isfinite(value) else None  # jsonb has no NaN

    curves = {k: [number(x) for x in v] for k, v in history.items() if isinstance(v, (list, tuple))}
    facts = {k: number(v) for k, v in history.items()
             if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}
    return {"seconds": round(seconds, 2), **facts, "curves": curves}
