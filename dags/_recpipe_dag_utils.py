"""Small helpers shared by the recpipe DAG files (kept light: Airflow parses DAG files constantly).

Nothing heavy is imported here at module level: recpipe.config and recpipe.registry
use the standard library only. The task bodies import what they need when they run.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from recpipe.config import Settings

SETTINGS = Settings.from_env()  # read once per parse: queues, retries, start dates


def on_failure(context) -> None:
    """Task failure callback: record a `task_failed` alert and notify (never raises)."""
    from recpipe.airflow_bridge import on_failure_callback

    on_failure_callback(context)


def default_args(**extra) -> dict:
    args = dict(
        owner="recpipe",
        retries=SETTINGS.task_retries,
        retry_delay=SETTINGS.retry_delay,
        retry_exponential_backoff=2.0,
        max_retry_delay=timedelta(minutes=30),
        on_failure_callback=on_failure,
    )
    args.update(extra)
    return args


def settings():
    """recpipe Settings for this task process (RECPIPE_* env, the `recpipe_db` connection)."""
    from recpipe.airflow_bridge import task_settings

    return task_settings()


def night_of(context) -> datetime:
    """The night of a run: the `as_of` param when given, else its data interval end; for a
    manual run without one, its logical date, else its run_after."""
    override = (context.get("params") or {}).get("as_of")
    if override:
        value = datetime.fromisoformat(str(override).replace("Z", "+00:00"))
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    for key in ("data_interval_end", "logical_date"):
        value = context.get(key)
        if value is not None:
            return value
    run_after = getattr(context.get("dag_run"), "run_after", None)
    if run_after is not None:
        return run_after
    raise ValueError("the run has no data interval, logical date or run_after: give the `as_of` param")


def airflow_context(context) -> str:
    """"dag_id=... run_id=... task_id=..." for alert rows (which Airflow run raised them)."""
    ti = context.get("ti")
    return " ".join(f"{key}={getattr(ti, key, None)}" for key in ("dag_id", "run_id", "task_id"))
