"""The one module of recpipe that imports Airflow: connections, notifiers, failure callback.

Airflow is imported inside the functions, and the notification functions use it only
in a process that already runs Airflow (elsewhere, e.g. `recpipe run`, the alert row
and its log line are the channel, and importing Airflow would cost seconds and read
~/airflow).
"""
from __future__ import annotations

import html
import logging
import sys

from recpipe.config import AIRFLOW_CONN_ID, Settings

log = logging.getLogger("recpipe.alerts")


def _in_airflow() -> bool:
    return "airflow" in sys.modules


def connection(conn_id: str):
    """The Airflow connection `conn_id`, or None when it is not defined.

    Only "not found" means None; any other failure (a secrets backend down, a broken
    metadata database) propagates, so a task never carries on with a wrong guess.
    """
    from airflow.sdk.exceptions import AirflowNotFoundException
    from airflow.sdk import BaseHook

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return None


def task_settings() -> Settings:
    """Settings for an Airflow task: RECPIPE_* variables, the database from the
    connection `recpipe_db` when RECPIPE_DATABASE_URL is unset. No connection and no
    URL is an error: a task never writes into a throwaway database."""
    settings = Settings.from_env()
    if settings.database_url or settings.embedded:
        return settings
    conn = connection(AIRFLOW_CONN_ID)
    if conn is None:
        raise RuntimeError(f"no recpipe database: define the Airflow connection {AIRFLOW_CONN_ID!r}"
                           " or set RECPIPE_DATABASE_URL for the workers")
    return settings.with_(database_url=conn.get_uri())


def send(alerts: list[dict], settings: Settings, context=None) -> list[str]:
    """Send alert rows to every configured channel; returns the channels that accepted."""
    from recpipe.alerts import format_alert

    alerts = [a for a in alerts if a]
    if not alerts or not _in_airflow():
        return []
    context = dict(context or {})
    lines = [format_alert(a) for a in alerts]
    subject = f"recpipe: {len(alerts)} alert(s): " + ", ".join(sorted({str(a.get('kind')) for a in alerts}))
    sent: list[str] = []

    smtp_conn = _optional_connection(settings.smtp_conn_id)
    if smtp_conn is not None:
        to = settings.alert_email or smtp_conn.extra_dejson.get("to")
        if not to:
            log.warning("connection %s exists but no recipient (RECPIPE_ALERT_EMAIL): e-mail skipped",
                        settings.smtp_conn_id)
        else:
            try:
                from airflow.providers.smtp.notifications.smtp import SmtpNotifier

                SmtpNotifier(
                    to=[t.strip() for t in str(to).split(",") if t.strip()],
                    from_email=settings.alert_email_from,
                    subject=subject,
                    html_content="<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>",
                    smtp_conn_id=settings.smtp_conn_id,
                ).notify(context)
                sent.append("smtp")
            except Exception:
                log.exception("alert e-mail through %s failed", settings.smtp_conn_id)

    if _optional_connection(settings.slack_conn_id) is not None:
        try:
            from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

            SlackWebhookNotifier(slack_webhook_conn_id=settings.slack_conn_id,
                                 text=subject + "\n" + "\n".join(f"• {line}" for line in lines)).notify(context)
            sent.append("slack")
        except Exception:
            log.exception("alert Slack message through %s failed", settings.slack_conn_id)
    return sent


def _optional_connection(conn_id: str):
    try:
        return connection(conn_id)
    except Exception:  # a notification channel problem never fails the pipeline
        log.exception("could not look up the Airflow connection %s", conn_id)
        return None


def notify(alerts: list[dict], context=None, *, engine, settings: Settings | None = None) -> list[str]:
    """Send alert rows and record the channels in `alerts.notified`."""
    from recpipe.alerts import mark_notified

    settings = settings or Settings.from_env()
    sent = send(alerts, settings, context)
    if sent:
        mark_notified(engine, [a["alert_id"] for a in alerts if a.get("alert_id") is not None], sent)
    log.info("alerts %s notified via %s", [a.get("alert_id") for a in alerts], sent or "no channel (none configured)")
    return sent


def _model_of_task(task_id: str | None) -> str | None:
    from recpipe import registry

    return next((m for m in registry.names() if task_id and task_id.endswith(m)), None)


def on_failure_callback(context) -> None:
    """Task failure callback: record a `task_failed` alert (model, task, run) and notify.

    Runs in the failed task's process; never raises (a callback error would hide the
    task's own failure). When the recpipe database is unreachable the alert is sent
    first and kept in RECPIPE_HOME's pending file, recorded by the next alert that
    reaches the database.
    """
    try:
        from recpipe.alerts import TASK_FAILED, fetch_alerts, hold_pending, record_alert, record_pending
        from recpipe.db import make_engine

        ti = context.get("ti") or context.get("task_instance")
        dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", None)
        task_id = getattr(ti, "task_id", None)
        run_id = getattr(ti, "run_id", None) or context.get("run_id")
        try_number = getattr(ti, "try_number", None)
        exception = context.get("exception")
        model = _model_of_task(task_id)
        message = (
            f"task {dag_id}.{task_id} failed in run {run_id} (try {try_number})"
            + (f" training {model}" if model else "")
            + (f": {type(exception).__name__}: {exception}" if exception is not None else "")
        )
        alert = dict(kind=TASK_FAILED, severity="error", model=model, message=message[:4000],
                     context=f"dag_id={dag_id} run_id={run_id} task_id={task_id} try={try_number}")
        settings = Settings.from_env()
        try:
            settings = task_settings()
            engine = make_engine(settings)
            record_pending(engine, settings.home)
            rows = fetch_alerts(engine, [record_alert(engine, **alert)])
        except Exception as exc:  # the recpipe database is down: the notifiers come first
            log.error("the recpipe database is unreachable (%s): sending the alert, keeping it to record later",
                      type(exc).__name__)
            hold_pending(settings.home, alert, send([alert | {"alert_id": None}], settings, context))
            return
        notify(rows, context, engine=engine, settings=settings)
    except Exception:
        log.exception("on_failure_callback could not record or send the task_failed alert")
