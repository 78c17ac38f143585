"""The production protocol: the task the product performs, judged on the future.

Global time cutoff T: models train on ratings before T; the test set is the
positives (rating >= 4) of [T, T + window) of users who rated something before T;
for each such user every movie not rated before T is ranked, and the top 10 is
compared with the positives (Recall@10, NDCG@10, HitRate@10, coverage). Every model
is scored on the same users as the popularity baseline. AutoInt+ additionally gets
AUC and log-loss on all of the window's ratings (its CTR task).
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
from sqlalchemy.engine import Engine

from recpipe.config import Settings
from recpipe.evaluation.metrics import ranking_metrics
from recpipe.scoring import History, recommend

log = logging.getLogger(__name__)

POSITIVE_MIN_RATING = 4
# Defaults of `recpipe evaluate --protocol production` on ML-1M: T = 2000-12-01 and a
# one-year window give 1,000+ test users with history (a month gives ~520: most of
# ML-1M's users rate everything in their first days, then leave).
DEFAULT_CUTOFF = datetime.fromisoformat("2000-12-01T00:00:00+00:00")
DEFAULT_WINDOW = timedelta(days=365)


def holdout(engine: Engine, cutoff: datetime, until: datetime) -> pd.DataFrame:
    """Ratings of [cutoff, until) by users who rated before cutoff (with `label`)."""
    from recpipe.db import read_ratings

    window = read_ratings(engine, before=until, since=cutoff)
    with engine.connect() as conn:
        known = {u for (u,) in conn.exec_driver_sql(
            "SELECT DISTINCT user_id FROM ratings WHERE rated_at < %(t)s", {"t": cutoff})}
    window = window[window["user_id"].isin(known)]
    return window.assign(label=(window["rating"] >= POSITIVE_MIN_RATING).astype(np.float32))


def evaluate_runs(engine: Engine, settings: Settings, runs: list[dict], popularity_run: dict,
                  cutoff: datetime, until: datetime, k: int = 10) -> dict[int, dict]:
    """Production-protocol metrics per run_id (popularity's included), same users for all."""
    from recpipe.db import read_movies

    test = holdout(engine, cutoff, until)
    positives = test[test["label"] == 1][["user_id", "movie_id"]]
    users = np.sort(positives["user_id"].unique())
    catalogue = len(read_movies(engine))
    history = History.load(engine, cutoff)
    results: dict[int, dict] = {}
    baseline = None
    for run in [popularity_run, *[r for r in runs if r["run_id"] != popularity_run["run_id"]]]:
        lists = recommend(engine, settings, run, history, users, k, popularity_run)
        metrics = ranking_metrics(lists, positives, catalogue, k)
        metrics["fallback_users"] = int(lists.loc[lists["fallback"], "user_id"].nunique())
        metrics.update(cutoff=cutoff.isoformat(), until=until.isoformat())
        if run["model"] == "autoint" and len(test):
            metrics.update(_ctr_metrics(engine, settings, run, test))
        if run["run_id"] == popularity_run["run_id"]:
            baseline = {key: v for key, v in metrics.items() if key.endswith(f"_at_{k}")}
        else:
            metrics["popularity"] = baseline
        results[run["run_id"]] = metrics
        log.info("%s run %s: %s", run["model"], run["run_id"], metrics)
    return results


def _ctr_metrics(engine: Engine, settings: Settings, run: dict, test: pd.DataFrame) -> dict:
    """AUC and log-loss of AutoInt+ on every rating of the window."""
    from sklearn.metrics import log_loss, roc_auc_score

    from recpipe.db import read_movies, read_users
    from recpipe.features import derive_fields, load_encodings
    from recpipe.models.autoint import load_model, predict_proba
    from recpipe.train import artifact_path

    encoders = load_encodings(engine, settings, run["data_stats"]["encodings_artifact_id"])
    X = encoders.transform(derive_fields(test, read_movies(engine), read_users(engine)))
    p = predict_proba(load_model(artifact_path(settings, run)), X)
    y = test["label"].to_numpy()
    if len(np.unique(y)) < 2:
        return {}
    return {"auc": float(roc_auc_score(y, p)), "log_loss": float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7))),
            "ctr_rows": int(len(y))}
