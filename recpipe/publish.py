"""Atomic publication of top-k lists.

A run's lists are written and made live in one transaction: readers of
`recommendations_current` see the old complete lists or the new complete lists,
never a mix. Publishing the same run again (the same model and night) replaces its
lists. A backfilled older night is stored but does not replace newer live lists.
"""
from __future__ import annotations

import logging
import time
from datetime import timedelta

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recpipe.db import copy_frame

log = logging.getLogger(__name__)


class NotPromotedError(Exception):
    """Only promoted runs reach the published lists."""


def publish_top_k(engine: Engine, run_id: int, lists: pd.DataFrame, retention: timedelta) -> dict:
    """Store `lists` (user_id, rank, movie_id, score, fallback) for a promoted run and
    make it live for its model when it is the newest night; prune old runs."""
    started = time.perf_counter()
    with engine.begin() as conn:
        run = conn.execute(sa.text("SELECT run_id, model, as_of, status FROM model_runs WHERE run_id = :r FOR UPDATE"),
                           {"r": run_id}).mappings().one()
        if run["status"] != "promoted":
            raise NotPromotedError(f"{run['model']} run {run_id} is {run['status']}, not promoted: not published")
        # Serialise publishers of the same model: the pointer update below reads then writes.
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('recpipe.publish.' || :m))"),
                     {"m": run["model"]})
        conn.execute(sa.text("DELETE FROM recommendations WHERE run_id = :r"), {"r": run_id})
        copy_frame(conn, "recommendations", lists.assign(run_id=run_id),
                   ["run_id", "user_id", "rank", "movie_id", "score", "fallback"])
        live = conn.execute(
            sa.text(
                "INSERT INTO published_runs AS p (model, run_id) VALUES (:m, :r)"
                " ON CONFLICT (model) DO UPDATE SET run_id = EXCLUDED.run_id, published_at = now()"
                " WHERE (SELECT as_of FROM model_runs WHERE run_id = p.run_id) <= :as_of"
                " RETURNING run_id"
            ),
            {"m": run["model"], "r": run_id, "as_of": run["as_of"]},
        ).scalar()
        pruned = conn.execute(
            sa.text(
                "DELETE FROM recommendations rec USING model_runs r"
                " WHERE rec.run_id = r.run_id AND r.model = :m"
                " AND r.as_of < (SELECT max(r2.as_of) FROM model_runs r2 JOIN published_runs p ON p.run_id = r2.run_id"
                "                WHERE p.model = :m) - :keep"
                " AND rec.run_id NOT IN (SELECT run_id FROM published_runs)"
            ),
            {"m": run["model"], "keep": retention},
        ).rowcount
    seconds = time.perf_counter() - started
    result = {"run_id": run_id, "model": run["model"], "as_of": run["as_of"].isoformat(), "rows": int(len(lists)),
              "users": int(lists["user_id"].nunique()), "live": live == run_id, "pruned_rows": pruned,
              "seconds": round(seconds, 3)}
    log.info("published %s", result)
    return result
