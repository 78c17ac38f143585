"""recpipe_deadline: alert when a night has not published its lists in time.

Runs once a day at midnight UTC plus RECPIPE_PUBLISH_DEADLINE (default 6h) and checks
the recpipe database for lists of that day's night; when there are none it records a
`deadline_missed` alert and sends it through the same notifiers as every alert (once
per night: a rerun does not alert again).

A DAG of its own rather than a DeadlineAlert on recpipe_nightly: the deadline must
also fire when the nightly never started (it waits for the day's ingest), which a
deadline measured from a nightly run cannot see.
"""
from __future__ import annotations

from _recpipe_dag_utils import SETTINGS, default_args, settings
from airflow.sdk import CronDataIntervalTimetable, dag, get_current_context, task

_minutes = int(SETTINGS.publish_deadline.total_seconds() // 60)


@dag(
    dag_id="recpipe_deadline",
    schedule=CronDataIntervalTimetable(f"{_minutes % 60} {_minutes // 60} * * *", timezone="UTC"),
    start_date=SETTINGS.nightly_start,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["recpipe"],
    doc_md=__doc__,
)
def recpipe_deadline():
    @task
    def check_published() -> dict:
        from recpipe import pipeline

        context = get_current_context()
        # The run at day D + deadline checks the night of day D.
        day = context["data_interval_end"] - SETTINGS.publish_deadline
        return pipeline.check_deadline(settings(), day, context)

    check_published()


recpipe_deadline()
