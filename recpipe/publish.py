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

from recpipe import runs
from recpipe.db import copy_frame, statement
from recpipe.locks import take_lock

log = logging.getLogger(__name__)


class NotPromotedError(Exception):
    """Only promoted runs reach the published lists."""


def publish_top_k(engine: Engine, run_id: int, lists: pd.DataFrame, retention: timedelta) -> dict:
    """Store `lists` (user_id, rank, movie_id, score, fallback) for a promoted run and
    make it live for its model when it is the newest night; prune old runs."""
    started = time.perf_counter()
    with engine.begin() as conn:
        run = runs.get(conn, run_id, for_update=True)
        if run.status != runs.PROMOTED or run.dry_run:
            state = "a dry run" if run.dry_run else run.status
            raise NotPromotedError(f"{run.model} run {run_id} is {state}, not promoted: not published")
        # Serialise publishers of the same model: the pointer update below reads then writes.
        take_lock(conn, f"publish.{run.model}")
        conn.execute(sa.text("DELETE FROM recommendations WHERE run_id = :r"), {"r": run_id})
        copy_frame(conn, "recommendations", lists.assign(run_id=run_id),
                   ["run_id", "user_id", "rank", "movie_id", "score", "fallback"])
        live = conn.execute(statement("switch_live"),
                            {"model": run.model, "run_id": run_id, "as_of": run.as_of}).scalar()
        pruned = conn.execute(statement("prune_published"), {"model": run.model, "keep": retention}).rowcount
    seconds = time.perf_counter() - started
    result = {"run_id": run_id, "model": run.model, "as_of": run.as_of.isoformat(), "rows": int(len(lists)),
              "users": int(lists["user_id"].nunique()), "live": live == run_id, "pruned_rows": pruned,
              "seconds": round(seconds, 3)}
    log.info("published %s", result)
    return result
