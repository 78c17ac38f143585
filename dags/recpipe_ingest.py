"""recpipe_ingest: load the MovieLens ratings of each day into PostgreSQL.

One run per UTC day with a real data interval [start, end) (CronDataIntervalTimetable;
in Airflow 3 a plain "@daily" would give zero-length intervals). Runs are
idempotent: a rerun or a backfill of an interval leaves the same ratings table.

    airflow backfill create --dag-id recpipe_ingest --from-date 2000-04-25 --to-date 2000-05-01

A manual run without a data interval ingests everything (like `recpipe ingest --all`).
A successful run updates the `recpipe_ratings` Asset; the event's extra names the
interval loaded, and recpipe_nightly plans the night that interval ends. A failed run
emits no event, so no night runs on a day whose ratings did not arrive.
"""
from __future__ import annotations

import logging

from _recpipe_dag_utils import RATINGS_ASSET, SETTINGS, default_args, ingest_event_extra, interval_text, settings
from airflow.sdk import CronDataIntervalTimetable, dag, get_current_context, task

log = logging.getLogger("recpipe.ingest")


@dag(
    dag_id="recpipe_ingest",
    schedule=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
    start_date=SETTINGS.ingest_start,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["recpipe"],
    doc_md=__doc__,
)
def recpipe_ingest():
    @task(outlets=[RATINGS_ASSET])
    def ingest() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from recpipe import pipeline
        from recpipe.source import SourceError

        context = get_current_context()
        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        if start is not None and end is not None and start == end:
            raise AirflowFailException(f"zero-length data interval {start}: use a data-interval timetable")
        log.info("recpipe_ingest run %s loads %s", context["dag_run"].run_id, interval_text(start, end))
        try:
            report = pipeline.ingest_interval(settings(), start, end)
        except SourceError as exc:
            raise AirflowFailException(str(exc)) from exc  # a missing or refused file: retrying cannot help
        # The nightly plans the night this interval ends (only a successful run emits the event).
        context["outlet_events"][RATINGS_ASSET].extra = ingest_event_extra(start, end, report)
        return report

    ingest()


recpipe_ingest()
