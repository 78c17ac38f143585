"""The production protocol: the task the product performs, judged on the future.

Global time cutoff T: models train on ratings before T; the test set is the
positives (rating >= 4) of [T, T + window) of users who rated something before T;
for each such user every movie not rated before T is ranked, and the top 10 is
compared with the positives (Recall@10, NDCG@10, HitRate@10, coverage). Every model
is scored on the same users as the baselines, whose figures each learned run carries
under "baselines" (what the gate compares with). A model's own extra figures (e.g.
AutoInt+'s AUC and log-loss on every rating of the window) come from its recommender.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from recpipe.evaluation.metrics import ranking_metrics
from recpipe.recommenders.base import History, Store
from recpipe.runs import Run
from recpipe.scoring import LoadedRun, recommend

log = logging.getLogger(__name__)

POSITIVE_MIN_RATING = 4
# Defaults of `recpipe evaluate --protocol production` on ML-1M: T = 2000-12-01 and a
# one-year window give 1,000+ test users with history (a month gives ~520: most of
# ML-1M's users rate everything in their first days, then leave).
DEFAULT_CUTOFF = datetime.fromisoformat("2000-12-01T00:00:00+00:00")
DEFAULT_WINDOW = timedelta(days=365)


class NoTestUsers(ValueError):
    """The window holds no positive of a user with history: nothing to judge on."""


def holdout(store: Store, cutoff: datetime, until: datetime) -> pd.DataFrame:
    """Ratings of [cutoff, until) by users who rated before cutoff (with `label`)."""
    window = store.ratings(before=until, since=cutoff)
    known = store.ratings(before=cutoff)["user_id"].unique()
    window = window[window["user_id"].isin(known)]
    return window.assign(label=(window["rating"] >= POSITIVE_MIN_RATING).astype(np.float32))


def evaluate_runs(store: Store, runs: list[Run], fallback: Run, cutoff: datetime, until: datetime,
                  k: int, compare_metric: str = "ndcg_at_10") -> dict[int, dict]:
    """Production-protocol metrics per run_id, the same users for all; baselines first.

    `fallback` is the baseline that serves every user. A learned model's users it cannot
    serve get the best baseline's list (by compare_metric), then the fallback's: as published.
    """
    test = holdout(store, cutoff, until)
    positives = test[test["label"] == 1][["user_id", "movie_id"]]
    users = np.sort(positives["user_id"].unique())
    if len(users) == 0:
        raise NoTestUsers(f"no test users: no positive rating in [{cutoff:%Y-%m-%d}, {until:%Y-%m-%d}) by a user"
                          " with earlier ratings; widen the evaluation window or check the ingest")
    catalogue = len(store.movies())
    history = History.load(store, cutoff)
    loaded_fallback = LoadedRun(store, fallback)
    results: dict[int, dict] = {}
    baselines: dict[str, dict] = {}
    loaded_baselines: dict[int, LoadedRun] = {}
    for run in sorted(runs, key=lambda r: (not r.is_baseline, r.run_id != fallback.run_id)):
        loaded = loaded_fallback if run.run_id == fallback.run_id else LoadedRun(store, run)
        if run.is_baseline:
            chain = [loaded_fallback]
            loaded_baselines[run.run_id] = loaded
        else:
            best = max(loaded_baselines.values(),
                       key=lambda b: results[b.run.run_id].get(compare_metric) or float("-inf"))
            chain = [best, loaded_fallback]
        lists = recommend(loaded, history, users, k, chain)
        metrics = ranking_metrics(lists, positives, catalogue, k)
        metrics["fallback_users"] = int(lists.loc[lists["fallback"], "user_id"].nunique())
        metrics.update(cutoff=cutoff.isoformat(), until=until.isoformat())
        metrics.update(loaded.extra_metrics(test))
        if run.is_baseline:
            baselines[run.model] = {key: v for key, v in metrics.items() if key.endswith(f"_at_{k}")}
        else:
            metrics["baselines"] = baselines
        results[run.run_id] = metrics
        log.info("%s run %s: %s", run.model, run.run_id, metrics)
    return results


def holdout_metric(store: Store, runs: list[Run], cutoff: datetime, until: datetime, k: int, metric: str,
                   max_users: int) -> tuple[dict[int, float], int]:
    """`metric` of each run on the positives of [cutoff, until), at most `max_users` users
    (every n-th), histories as of cutoff, no fallback lists: (run_id -> value, users)."""
    test = holdout(store, cutoff, until)
    positives = test[test["label"] == 1][["user_id", "movie_id"]]
    users = np.sort(positives["user_id"].unique())
    users = users[:: max(1, -(-len(users) // max_users))]
    if len(users) == 0:
        return {run.run_id: float("nan") for run in runs}, 0
    positives = positives[positives["user_id"].isin(users)]
    history = History.load(store, cutoff)
    catalogue = len(store.movies())
    values = {}
    for run in runs:
        lists = recommend(LoadedRun(store, run), history, users, k, [])
        values[run.run_id] = float(ranking_metrics(lists, positives, catalogue, k)[metric])
    return values, int(len(users))
