"""Popularity baseline: the most-rated positive movies in a recent window before T.

Every model is compared with it, and it is the fallback list for users with no
usable history. Ties are broken by movie_id so lists repeat exactly.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from recpipe.models.topk import flatten, group_lists, ranks_within

POSITIVE_MIN_RATING = 4


@dataclass
class Popularity:
    as_of: datetime
    window: timedelta
    movie_ids: np.ndarray  # most popular first
    counts: np.ndarray

    def to_json(self) -> str:
        return json.dumps({
            "as_of": self.as_of.isoformat(), "window_s": self.window.total_seconds(),
            "movie_ids": self.movie_ids.tolist(), "counts": self.counts.tolist(),
        })

    @classmethod
    def from_json(cls, text: str) -> "Popularity":
        data = json.loads(text)
        return cls(datetime.fromisoformat(data["as_of"]), timedelta(seconds=data["window_s"]),
                   np.asarray(data["movie_ids"], dtype=np.int64), np.asarray(data["counts"], dtype=np.int64))

    def save(self, path: Path) -> Path:
        Path(path).write_text(self.to_json())
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> "Popularity":
        return cls.from_json(Path(path).read_text())


def fit_popularity(ratings: pd.DataFrame, as_of: datetime, window: timedelta = timedelta(days=90)) -> Popularity:
    """Count positives (rating >= 4) with as_of - window <= rated_at < as_of.

    When the window holds fewer movies than a list needs, older positives rank after
    the window's (so sparse periods still give full lists).
    """
    before = ratings[ratings["rated_at"] < pd.Timestamp(as_of)]
    liked = before[before["rating"] >= POSITIVE_MIN_RATING]
    recent = liked[liked["rated_at"] >= pd.Timestamp(as_of - window)]
    recent_counts = recent.groupby("movie_id").size()
    all_counts = liked.groupby("movie_id").size()
    table = pd.DataFrame({"recent": recent_counts, "all": all_counts}).fillna(0).astype(np.int64)
    table = table.reset_index().sort_values(["recent", "all", "movie_id"], ascending=[False, False, True])
    return Popularity(as_of, window, table["movie_id"].to_numpy(np.int64), table["recent"].to_numpy(np.int64))


def score_top_k(model: Popularity, user_ids, seen: dict[int, set[int]], k: int = 10) -> pd.DataFrame:
    """The k most popular movies each user has not rated; score = window count."""
    user_ids = np.asarray(user_ids, dtype=np.int64).reshape(-1)
    n, ranked, k = len(user_ids), len(model.movie_ids), max(int(k), 0)
    # Position of each seen movie in the ranking (-1: not ranked), every user in one call.
    rows, movies = flatten(group_lists(seen, user_ids.tolist()))
    lookup = pd.Series(np.arange(ranked, dtype=np.int64), index=model.movie_ids)
    pos = lookup.reindex(movies).fillna(-1).to_numpy(np.int64)
    keys = np.sort(rows[pos >= 0] * ranked + pos[pos >= 0])  # (row, position) as one int64
    keys = keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys
    rows, pos = keys // max(ranked, 1), keys % max(ranked, 1)
    # Unseen movies before the i-th seen one (0-based, in ranking order): pos - i, which never
    # decreases. The j-th unseen position is q = j + #{seen i: pos_i - i <= j}: a search in
    # the sorted seen positions instead of a walk down the ranking per user.
    width = ranked + k + 1
    gaps = rows * width + pos - (ranks_within(rows) - 1)
    query_rows = np.repeat(np.arange(n, dtype=np.int64), k)
    j = np.tile(np.arange(k, dtype=np.int64), n)
    before = np.searchsorted(gaps, query_rows * width + j, side="right") - \
        np.searchsorted(gaps, query_rows * width, side="left")
    q = j + before
    keep = q < ranked  # fewer than k only when the ranking runs out
    q, query_rows = q[keep], query_rows[keep]
    return pd.DataFrame({"user_id": user_ids[query_rows], "rank": j[keep] + 1,
                         "movie_id": model.movie_ids[q].astype(np.int64),
                         "score": model.counts[q].astype(np.float64)})
