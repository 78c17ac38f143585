"""Pipeline locks that the analysts' role cannot take.

A row of `pipeline_locks` locked FOR UPDATE until the transaction ends (advisory locks
are open to every role, so a reader session could stall the pipeline). Waiting is
bounded: after the timeout the error names the session that holds the lock.
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

LOCK_TIMEOUT_S = 300.0  # wait for a running ingest at most this long, then fail naming it


class LockTimeout(RuntimeError):
    """A pipeline lock held by another session beyond the timeout."""


def take_lock(conn: sa.Connection, name: str, timeout_s: float | None = None) -> None:
    """Lock the row `name` of pipeline_locks until the transaction ends.

    Unlike an advisory lock, this needs UPDATE on pipeline_locks, which the analysts'
    role lacks: a reader session cannot stall the pipeline. Waits at most timeout_s
    (default LOCK_TIMEOUT_S), then raises LockTimeout naming the session holding it.
    """
    timeout_ms = max(1, int(1000 * (LOCK_TIMEOUT_S if timeout_s is None else timeout_s)))
    previous = conn.exec_driver_sql("SELECT current_setting('lock_timeout')").scalar_one()
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {timeout_ms}")
    # No savepoint: the row's xmax must be the top-level transaction id, which
    # pg_stat_activity shows, so that a waiting session can name the holder.
    try:
        conn.execute(sa.text("INSERT INTO pipeline_locks (name) VALUES (:n) ON CONFLICT DO NOTHING"), {"n": name})
        conn.execute(sa.text("SELECT 1 FROM pipeline_locks WHERE name = :n FOR UPDATE"), {"n": name})
    except sa.exc.OperationalError as exc:
        if getattr(exc.orig, "pgcode", None) != "55P03":  # lock_not_available
            raise
        raise LockTimeout(
            f"pipeline lock {name!r} not free after {timeout_ms / 1000:g}s: held by {lock_holder(conn.engine, name)}"
        ) from None
    conn.execute(sa.text("SELECT set_config('lock_timeout', :v, true)"), {"v": previous})


def lock_holder(engine: Engine, name: str) -> str:
    # The locked row's xmax is the holder's transaction id. Asked from another session:
    # the caller's transaction is aborted by the timeout.
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT a.pid, a.usename, a.application_name, a.client_addr, a.state, a.xact_start,"
                " left(a.query, 200) AS query"
                " FROM pipeline_locks l JOIN pg_stat_activity a ON a.backend_xid = l.xmax"
                " WHERE l.name = :n LIMIT 1"
            ),
            {"n": name},
        ).first()
    if row is None:
        return "a session that has since let go (try again)"
    return (f"pid {row.pid} (user {row.usename}, application {row.application_name!r}, client {row.client_addr},"
            f" {row.state}, transaction since {row.xact_start}, last query {row.query!r})")
