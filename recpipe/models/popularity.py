"""Popularity baseline: the most-rated positive movies in a recent window before T.

Every model is compared with it, and it is the fallback list for users with no
usable history. Ties are broken by movie_id so lists repeat exactly.
"""
from __future__ import annotations

import json
from itertools import islice
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

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
    rows = []
    ranked = list(zip(model.movie_ids.tolist(), model.counts.tolist()))
    for user in user_ids:
        taken = seen.get(int(user), set())
        # Walk down the ranking until k unseen movies: usually a few dozen steps.
        picked = list(islice((mc for mc in ranked if mc[0] not in taken), k))
        rows.extend((int(user), rank, int(m), float(c)) for rank, (m, c) in enumerate(picked, start=1))
    return pd.DataFrame(rows, columns=["user_id", "rank", "movie_id", "score"])
