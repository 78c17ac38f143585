"""Small helpers shared by the recpipe DAG files (kept light: Airflow parses DAG files constantly).

Nothing heavy is imported here at module level: no recpipe.pipeline, pandas,
sqlalchemy or TensorFlow. The task bodies import what they need when they run.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

DEFAULT_INGEST_START = "2000-04-25"  # the day before the first MovieLens-1M rating


def env_datetime(name: str, default: str) -> datetime:
    """An ISO date/datetime from the environment, as an aware UTC datetime."""
    value = datetime.fromisoformat(os.environ.get(name) or default)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value


def gpu_queue() -> str:
    """The Celery queue the training tasks are sent to (the GPU worker listens on it)."""
    return os.environ.get("RECPIPE_GPU_QUEUE") or "gpu"


def on_failure(context) -> None:
    """Task failure callback: record a `task_failed` alert and notify (never raises)."""
    from recpipe.alerts import on_failure_callback

    on_failure_callback(context)


def default_args(**extra) -> dict:
    args = dict(
        owner="recpipe",
        retries=int(os.environ.get("RECPIPE_TASK_RETRIES", "2")),
        retry_delay=timedelta(seconds=float(os.environ.get("RECPIPE_RETRY_DELAY_S", "60"))),
        retry_exponential_backoff=2.0,
        max_retry_delay=timedelta(minutes=30),
        on_failure_callback=on_failure,
    )
    args.update(extra)
    return args


def settings():
    """recpipe Settings for this task process (RECPIPE_* env, else the `recpipe_db` connection)."""
    from recpipe.config import Settings

    return Settings.from_env()


def run_as_of(context) -> datetime:
    """The "as of" instant of a run: the `as_of` param when given, else its data interval
    end; for a manual run without one, its logical date, else its run_after."""
    override = (context.get("params") or {}).get("as_of")
    if override:
        value = datetime.fromisoformat(str(override).replace("Z", "+00:00"))
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    for key in ("data_interval_end", "logical_date"):
        value = context.get(key)
        if value is not None:
            return value
    dag_run = context.get("dag_run")
    run_after = getattr(dag_run, "run_after", None)
    if run_after is not None:
        return run_after
    return datetime.now(timezone.utc)


def airflow_context(context) -> str:
    """"dag_id=... run_id=... task_id=..." for alert rows (which Airflow run raised them)."""
    ti = context.get("ti")
    return " ".join(
        f"{key}={getattr(ti, key, None)}" for key in ("dag_id", "run_id", "task_id")
    )
