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


class RollbackError(Exception):
    """Nothing to roll back to (no live lists, or no earlier lists still stored)."""


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


def rollback(engine: Engine, model: str, reason: str = "rolled back by the operator") -> dict:
    """Make `model`'s previous live lists live again, in one transaction.

    The run being replaced (and its gated run, for a refit) becomes `rejected` with the
    reason, so the gate no longer compares later nights with it and re-publishing it is
    refused; re-running its night retrains and gates it afresh. The next night's
    publication goes live as usual."""
    with engine.begin() as conn:
        take_lock(conn, f"publish.{model}")
        live_id = conn.execute(sa.text("SELECT run_id FROM published_runs WHERE model = :m FOR UPDATE"),
                               {"m": model}).scalar()
        if live_id is None:
            raise RollbackError(f"{model} has no live lists to roll back")
        live = runs.get(conn, live_id, for_update=True)
        target = conn.execute(statement("rollback_target"),
                              {"model": model, "live_as_of": live.as_of}).mappings().first()
        if target is None:
            raise RollbackError(f"{model}: no earlier night's lists are stored (run {live_id} of"
                                f" {live.as_of:%Y-%m-%d} stays live; retention keeps the lists of the last nights)")
        conn.execute(sa.text("UPDATE published_runs SET run_id = :r, published_at = now() WHERE model = :m"),
                     {"r": target["run_id"], "m": model})
        note = [{"rule": "rolled_back", "message": f"{reason}; run {target['run_id']} of"
                                                   f" {target['as_of']:%Y-%m-%d} made live again"}]
        for run_id in {live_id, live.gated_run_id} - {None}:
            runs.decide(conn, run_id, runs.REJECTED, [*runs.get(conn, run_id).gate_reasons, *note])
    result = {"model": model, "from_run_id": live_id, "from_night": live.as_of.isoformat(),
              "to_run_id": int(target["run_id"]), "to_night": target["as_of"].isoformat()}
    log.warning("rolled back %s", result)
    return result
