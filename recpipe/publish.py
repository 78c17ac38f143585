"""Atomic publication of top-k lists, one partition of `recommendations` per run.

A run's lists are first written into its staging table (recpipe_lists.stage_<run_id>):
by one process, or by parallel user shards, each replacing only its own users' rows
(a retried shard changes nothing else). `go_live` then attaches the staged tables as
the runs' partitions and points each model at its run, all in one transaction: readers
of `recommendations_current` see the old complete lists or the new complete lists,
never a mix, and a shard killed mid-write leaves only a staging table nobody reads.
Publishing the same run again replaces its partition. A backfilled older night is
stored but does not replace newer live lists. Retention drops whole partitions.
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

COLUMNS = ["run_id", "user_id", "rank", "movie_id", "score", "fallback"]


class NotPromotedError(Exception):
    """Only promoted runs reach the published lists."""


class IncompleteListsError(Exception):
    """A run's staged lists miss users (a shard did not finish): nothing goes live."""


class RollbackError(Exception):
    """Nothing to roll back to (no live lists, or no earlier lists still stored)."""


def _stage(run_id: int) -> str:
    return f"recpipe_lists.stage_{int(run_id)}"


def _partition(run_id: int) -> str:
    return f"recpipe_lists.run_{int(run_id)}"


def _promoted(conn: sa.Connection, run_id: int, for_update: bool = False) -> runs.Run:
    run = runs.get(conn, run_id, for_update=for_update)
    if run.status != runs.PROMOTED or run.dry_run:
        state = "a dry run" if run.dry_run else run.status
        raise NotPromotedError(f"{run.model} run {run_id} is {state}, not promoted: not published")
    return run


def prepare_stage(engine: Engine, run_ids: list[int]) -> None:
    """An empty staging table for each run (the leftover of a killed attempt is replaced)."""
    with engine.begin() as conn:
        for run_id in run_ids:
            _promoted(conn, run_id)
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {_stage(run_id)}"))
            # The CHECK lets ATTACH PARTITION skip its validation scan.
            conn.execute(sa.text(f"CREATE TABLE {_stage(run_id)} (LIKE recommendations INCLUDING DEFAULTS"
                                 f" INCLUDING CONSTRAINTS INCLUDING INDEXES, CHECK (run_id = {int(run_id)}))"))


def stage_lists(engine: Engine, run_id: int, lists: pd.DataFrame, users=None) -> int:
    """Write `lists` (user_id, rank, movie_id, score, fallback) of a run into its staging
    table, replacing the rows of `users` (a shard's), or every row when users is None."""
    with engine.begin() as conn:
        if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": _stage(run_id)}).scalar() is None:
            raise IncompleteListsError(f"run {run_id} has no staging table: prepare the publication first")
        if users is None:
            conn.execute(sa.text(f"TRUNCATE {_stage(run_id)}"))
        else:
            conn.execute(sa.text(f"DELETE FROM {_stage(run_id)} WHERE user_id = ANY(:users)"),
                         {"users": [int(u) for u in users]})
        copy_frame(conn, _stage(run_id), lists.assign(run_id=run_id), COLUMNS)
    return len(lists)


def go_live(engine: Engine, run_ids: list[int], retention: timedelta, expected_users: int | None = None) -> list[dict]:
    """Attach each run's staged lists as its partition and make it live for its model
    (unless a newer night of the model is live), then drop the partitions retention
    removes; all in one transaction. With `expected_users`, a run whose staged lists
    miss a user is refused and nothing changes."""
    started = time.perf_counter()
    results = []
    with engine.begin() as conn:
        night_runs = [_promoted(conn, r, for_update=True) for r in run_ids]
        for model in sorted({r.model for r in night_runs}):  # one order: no deadlock between publishers
            take_lock(conn, f"publish.{model}")
        staged = {}
        for run in night_runs:
            if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": _stage(run.run_id)}).scalar() is None:
                raise IncompleteListsError(f"{run.model} run {run.run_id} has no staged lists")
            staged[run.run_id] = conn.execute(sa.text(
                f"SELECT count(*) AS rows, count(DISTINCT user_id) AS users FROM {_stage(run.run_id)}")).one()
            if expected_users is not None and staged[run.run_id].users != expected_users:
                raise IncompleteListsError(
                    f"{run.model} run {run.run_id}: lists of {staged[run.run_id].users} users staged,"
                    f" {expected_users} expected (a scoring shard did not finish): nothing published")
        # Catalogue changes last: dropping a partition locks the parent table until commit.
        for run in night_runs:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {_partition(run.run_id)}"))  # a republished run
            conn.execute(sa.text(f"ALTER TABLE {_stage(run.run_id)} RENAME TO run_{int(run.run_id)}"))
            conn.execute(sa.text(f"ALTER TABLE recommendations ATTACH PARTITION {_partition(run.run_id)}"
                                 f" FOR VALUES IN ({int(run.run_id)})"))
            live = conn.execute(statement("switch_live"),
                                {"model": run.model, "run_id": run.run_id, "as_of": run.as_of}).scalar()
            results.append({"run_id": run.run_id, "model": run.model, "as_of": run.as_of.isoformat(),
                            "rows": int(staged[run.run_id].rows), "users": int(staged[run.run_id].users),
                            "live": live == run.run_id})
        for result in results:
            result["pruned_rows"] = _prune(conn, result["model"], retention)
    seconds = round(time.perf_counter() - started, 3)
    for result in results:
        result["seconds"] = seconds  # the switch's, shared by the runs it made live together
        log.info("published %s", result)
    return results


def _prune(conn: sa.Connection, model: str, retention: timedelta) -> int:
    """Drop the partitions (and leftover staging tables) of `model`'s runs beyond
    retention; returns the published rows they held."""
    rows = 0
    for run_id in conn.execute(statement("prune_published"), {"model": model, "keep": retention}).scalars().all():
        if conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": _partition(run_id)}).scalar() is not None:
            rows += conn.execute(sa.text(f"SELECT count(*) FROM {_partition(run_id)}")).scalar()
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {_partition(run_id)}, {_stage(run_id)}"))
    return rows


def publish_top_k(engine: Engine, run_id: int, lists: pd.DataFrame, retention: timedelta) -> dict:
    """Store `lists` (user_id, rank, movie_id, score, fallback) for a promoted run and
    make it live for its model when it is the newest night; prune old runs. One process,
    one shard: stage then go live."""
    started = time.perf_counter()
    prepare_stage(engine, [run_id])
    stage_lists(engine, run_id, lists)
    (result,) = go_live(engine, [run_id], retention)
    return result | {"seconds": round(time.perf_counter() - started, 3)}


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
