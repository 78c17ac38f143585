"""A registered run's top-k lists for a set of users as of a time, with the baseline's
lists for the users it cannot serve. Shared by evaluation (as of the training cutoff,
for the test users) and publication (as of the night, for every known user).

A user's history, and the movies never to recommend, are the user's ratings before
`as_of`; a list never holds a movie its user rated before.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from recpipe import registry
from recpipe.recommenders.base import History, Store, lists_with_fallback
from recpipe.runs import Run


class LoadedRun:
    """A run's model, loaded through its recommender from its verified bundle."""

    def __init__(self, store: Store, run: Run):
        self.run = run
        self.recommender = registry.recommender(run.model)
        with run.open_artifact(store.settings) as bundle:
            self.model = self.recommender.load(bundle, run, store)
        self.store = store

    def lists(self, history: History, user_ids, k: int) -> pd.DataFrame:
        return self.recommender.recommend(self.model, self.store, history, np.asarray(user_ids, dtype=np.int64), k)

    def extra_metrics(self, holdout: pd.DataFrame) -> dict:
        return self.recommender.extra_metrics(self.model, self.store, holdout)


def recommend(loaded: LoadedRun, history: History, user_ids, k: int, fallbacks: list[LoadedRun]) -> pd.DataFrame:
    """DataFrame[user_id, rank, movie_id, score, fallback] for `user_ids`: the run's lists,
    and for the users it cannot serve the first fallback's, then the next's (the last is
    the baseline that serves everyone)."""
    user_ids = np.asarray(list(user_ids), dtype=np.int64)
    chain = [f for f in fallbacks if f.run.run_id != loaded.run.run_id]

    def backup(missing):
        if not chain:
            return pd.DataFrame(columns=["user_id", "rank", "movie_id", "score"])
        return recommend(chain[0], history, missing, k, chain[1:]).drop(columns="fallback")

    return lists_with_fallback(loaded.lists(history, user_ids, k), user_ids, backup)
