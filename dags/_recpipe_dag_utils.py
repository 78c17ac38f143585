"""Small helpers shared by the recpipe DAG files (kept light: Airflow parses DAG files constantly).

Nothing heavy is imported here at module level: recpipe.config and recpipe.registry
use the standard library only. The task bodies import what they need when they run.
"""
from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

from airflow.sdk import Asset

from recpipe.config import Settings

SETTINGS = Settings.from_env()  # read once per parse: queues, retries, start dates
log = logging.getLogger("recpipe.schedule")
# The docker-compose deployment's recpipe database (service `postgres`, database `recpipe`).
COMPOSE_DATABASE = "postgres:5432/recpipe"


def ratings_asset_uri(database_url: str | None = None, connection_uri: str | None = None) -> str:
    """postgres://host:port/database/public/ratings of the recpipe database: the host and
    database of RECPIPE_DATABASE_URL, else of the `recpipe_db` connection when it is given as
    an AIRFLOW_CONN_RECPIPE_DB URI, else the compose file's. Only host, port and database:
    never the credentials."""
    for url in (database_url, connection_uri):
        if url and "://" in url and not url.lstrip().startswith("{"):
            parts = urlsplit(url)
            database = parts.path.lstrip("/")
            if parts.hostname and database:
                return f"postgres://{parts.hostname}:{parts.port or 5432}/{database}/public/ratings"
    return f"postgres://{COMPOSE_DATABASE}/public/ratings"


# Every process must see the same URI (a changed URI under the same name makes Airflow
# refuse the task): RECPIPE_RATINGS_ASSET_URI pins it where they reach the database differently.
# Updated by every successful recpipe_ingest run; its event's extra carries the interval
# loaded (interval_start, interval_end), which is the night a triggered recpipe_nightly plans.
RATINGS_ASSET = Asset(
    name="recpipe_ratings", group="recpipe",
    uri=SETTINGS.ratings_asset_uri or ratings_asset_uri(SETTINGS.database_url, os.environ.get("AIRFLOW_CONN_RECPIPE_DB")))


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


def interval_text(start: datetime | None, end: datetime | None) -> str:
    if start is None and end is None:
        return "all ratings"
    return f"[{start.isoformat() if start else '-inf'}, {end.isoformat() if end else '+inf'})"


def ingest_event_extra(start: datetime | None, end: datetime | None, report: dict) -> dict:
    """The ratings Asset event's extra: the interval this ingest loaded, and its batch."""
    return {"interval_start": start.isoformat() if start else None,
            "interval_end": end.isoformat() if end else None,
            "batch_id": report.get("batch_id"), "inserted": report.get("inserted")}


def _utc(text) -> datetime:
    value = text if isinstance(text, datetime) else datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _run_type(context) -> str:
    run_type = getattr(context.get("dag_run"), "run_type", None)
    return str(getattr(run_type, "value", run_type) or "")


def resolve_night(context) -> tuple[datetime, str, tuple[datetime, datetime] | None]:
    """(the night, where it came from, the ingest interval it ends) of a nightly run:
    - the `as_of` param when given (any run type; no interval);
    - asset-triggered: the newest interval end among the triggering ratings events
      (several when events queued while a night ran);
    - backfill / manual / scheduled: the data interval end ([T - 1 day, T) on the nightly's
      midnight timetable, the same interval as the ingest run that loads that day);
    - a manual run without a data interval: its logical date, else its run_after."""
    override = (context.get("params") or {}).get("as_of")
    if override:
        return _utc(override), "the as_of param", None
    run_type = _run_type(context)
    if run_type == "asset_triggered":
        loaded = []
        for events in (context.get("triggering_asset_events") or {}).values():
            for event in events:
                extra = event.extra or {}
                if extra.get("interval_end"):
                    start = extra.get("interval_start")
                    loaded.append((_utc(extra["interval_end"]), _utc(start) if start else None, event))
        if not loaded:
            raise ValueError("no triggering ratings event names the interval it loaded (a manual asset event, or"
                             " an ingest of all ratings): trigger recpipe_nightly with the `as_of` param")
        end, start, event = max(loaded, key=lambda item: item[0])
        source = f"the ratings event of {event.source_dag_id}/{event.source_run_id}"
        if len(loaded) > 1:
            source += f" (newest of {len(loaded)} queued events)"
        return end, source, (start, end)
    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if end is not None:
        return end, f"the {run_type or 'run'}'s data interval", (start, end) if start is not None else None
    if context.get("logical_date") is not None:
        return context["logical_date"], "the logical date", None
    run_after = getattr(context.get("dag_run"), "run_after", None)
    if run_after is not None:
        return run_after, "the run's run_after", None
    raise ValueError("the run has no data interval, logical date or run_after: give the `as_of` param")


def night_of(context) -> datetime:
    """The night a nightly run plans (resolve_night), said in one log line. A backfilled night
    whose ingest interval was never loaded successfully is skipped: there is nothing to plan
    (an asset-triggered night exists only because its ingest succeeded; a manual run is the
    operator's choice and only warned about)."""
    night, source, interval = resolve_night(context)
    run_id = getattr(context.get("dag_run"), "run_id", None)
    loads = f"ratings before {night.isoformat()}"
    if interval is not None:
        loads += f", the last ingest interval {interval_text(*interval)}"
    log.info("recpipe_nightly run %s plans the night %s (from %s): %s", run_id, night.isoformat(), source, loads)
    run_type = _run_type(context)
    if interval is not None and interval[0] is not None and run_type != "asset_triggered":
        from recpipe import pipeline

        if not pipeline.interval_ingested(settings(), *interval):
            message = (f"the ingest interval {interval_text(*interval)} of the night {night.isoformat()} was"
                       " never loaded successfully")
            if run_type in ("manual", "operator_triggered"):
                log.warning("%s; planning it anyway (a %s run)", message, run_type)
            else:
                from airflow.sdk.exceptions import AirflowSkipException

                raise AirflowSkipException(f"{message}: skipping the night (ingest it, then backfill it again)")
    return night


def airflow_context(context) -> str:
    """"dag_id=... run_id=... task_id=..." for alert rows (which Airflow run raised them)."""
    ti = context.get("ti")
    return " ".join(f"{key}={getattr(ti, key, None)}" for key in ("dag_id", "run_id", "task_id"))
