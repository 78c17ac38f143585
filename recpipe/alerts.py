"""Alerts: a row in `alerts` and a WARNING log line, always; notifications where configured."""
from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.engine import Engine

log = logging.getLogger("recpipe.alerts")

GATE_REJECTED = "gate_rejected"
METRIC_REGRESSION = "metric_regression"
TASK_FAILED = "task_failed"


def record_alert(
    engine: Engine,
    *,
    kind: str,
    message: str,
    model: str | None = None,
    metric: str | None = None,
    value: float | None = None,
    threshold: float | None = None,
    run_id: int | None = None,
    context: str | None = None,
    severity: str = "warning",
) -> int:
    """Store one alert and log it; returns its alert_id."""
    with engine.begin() as conn:
        alert_id = conn.execute(
            sa.text(
                "INSERT INTO alerts (severity, kind, model, metric, value, threshold, run_id, context, message)"
                " VALUES (:severity, :kind, :model, :metric, :value, :threshold, :run_id, :context, :message)"
                " RETURNING alert_id"
            ),
            dict(
                severity=severity, kind=kind, model=model, metric=metric, value=value,
                threshold=threshold, run_id=run_id, context=context, message=message,
            ),
        ).scalar_one()
    log.warning("ALERT %s [%s] %s", alert_id, kind, message)
    return alert_id


def fetch_alerts(engine: Engine, alert_ids: list[int]) -> list[dict]:
    if not alert_ids:
        return []
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT * FROM alerts WHERE alert_id = ANY(:ids) ORDER BY alert_id"), {"ids": list(alert_ids)}
        ).mappings()
        return [dict(r) for r in rows]


# --- Notifications (Airflow notifiers) -------------------------------------------------
#
# Channels are used only where configured:
#   smtp  - the Airflow connection RECPIPE_SMTP_CONN_ID (default `smtp_default`) exists and
#           there is a recipient: RECPIPE_ALERT_EMAIL (comma-separated), else the
#           connection's extra "to". Sender: RECPIPE_ALERT_EMAIL_FROM, else the connection's
#           extra "from_email".
#   slack - the Airflow connection RECPIPE_SLACK_CONN_ID (default `slack_webhook_default`).
# Each channel an alert reached is appended to its `notified` column. A channel that fails
# is logged and skipped: a notification problem never fails the pipeline.

SMTP_CONN_ENV, SMTP_CONN_DEFAULT = "RECPIPE_SMTP_CONN_ID", "smtp_default"
SLACK_CONN_ENV, SLACK_CONN_DEFAULT = "RECPIPE_SLACK_CONN_ID", "slack_webhook_default"


def _airflow_connection(conn_id: str):
    """The Airflow connection `conn_id`, or None when Airflow or the connection is missing.

    Only looked up inside an Airflow process: elsewhere (`recpipe run`) importing Airflow
    costs seconds and reads ~/airflow; there the alert row and log line are the channel.
    """
    import sys

    if "airflow" not in sys.modules:
        return None
    try:
        from airflow.sdk import BaseHook
    except ImportError:  # pragma: no cover - outside Airflow
        return None
    try:
        return BaseHook.get_connection(conn_id)
    except Exception:  # AirflowNotFoundException, or no secrets backend reachable
        return None


def format_alert(alert: dict) -> str:
    """One line: kind, model, metric, value vs threshold, model run, Airflow context, message."""
    parts = [f"#{alert.get('alert_id')} [{alert.get('severity', 'warning')}] {alert.get('kind')}"]
    if alert.get("model"):
        parts.append(f"model={alert['model']}")
    if alert.get("metric"):
        parts.append(f"metric={alert['metric']}")
    if alert.get("value") is not None:
        parts.append(f"value={alert['value']:.6g}")
    if alert.get("threshold") is not None:
        parts.append(f"threshold={alert['threshold']:.6g}")
    if alert.get("run_id") is not None:
        parts.append(f"model_run={alert['run_id']}")
    if alert.get("context"):
        parts.append(f"airflow={alert['context']}")
    return " ".join(parts) + f": {alert.get('message', '')}"


def _mark_notified(engine: Engine, alert_ids: list[int], channels: list[str]) -> None:
    import json

    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE alerts SET notified = (SELECT coalesce(jsonb_agg(DISTINCT c), '[]'::jsonb)"
                " FROM jsonb_array_elements_text(notified || CAST(:channels AS jsonb)) AS c)"
                " WHERE alert_id = ANY(:ids)"
            ),
            {"channels": json.dumps(channels), "ids": list(alert_ids)},
        )


def notify(alerts: list[dict], context=None, *, engine: Engine | None = None) -> list[str]:
    """Send `alerts` (rows from fetch_alerts) to every configured channel.

    Returns the channels that accepted the message ("smtp", "slack"), and records them
    in `alerts.notified` (engine: the alerts' database; default from Settings.from_env()).
    """
    import os

    alerts = [a for a in alerts if a]
    if not alerts:
        return []
    context = dict(context or {})
    lines = [format_alert(a) for a in alerts]
    subject = f"recpipe: {len(alerts)} alert(s): " + ", ".join(sorted({str(a.get('kind')) for a in alerts}))
    sent: list[str] = []

    smtp_conn_id = os.environ.get(SMTP_CONN_ENV) or SMTP_CONN_DEFAULT
    smtp_conn = _airflow_connection(smtp_conn_id)
    if smtp_conn is not None:
        to = os.environ.get("RECPIPE_ALERT_EMAIL") or smtp_conn.extra_dejson.get("to")
        if not to:
            log.warning("connection %s exists but no recipient (RECPIPE_ALERT_EMAIL): e-mail skipped", smtp_conn_id)
        else:
            try:
                from airflow.providers.smtp.notifications.smtp import SmtpNotifier

                import html

                body = "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"
                SmtpNotifier(
                    to=[t.strip() for t in str(to).split(",") if t.strip()],
                    from_email=os.environ.get("RECPIPE_ALERT_EMAIL_FROM") or None,
                    subject=subject,
                    html_content=body,
                    smtp_conn_id=smtp_conn_id,
                ).notify(context)
                sent.append("smtp")
            except Exception:
                log.exception("alert e-mail through %s failed", smtp_conn_id)

    slack_conn_id = os.environ.get(SLACK_CONN_ENV) or SLACK_CONN_DEFAULT
    if _airflow_connection(slack_conn_id) is not None:
        try:
            from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

            SlackWebhookNotifier(
                slack_webhook_conn_id=slack_conn_id, text=subject + "\n" + "\n".join(f"• {line}" for line in lines)
            ).notify(context)
            sent.append("slack")
        except Exception:
            log.exception("alert Slack message through %s failed", slack_conn_id)

    if sent:
        if engine is None:
            from recpipe.config import Settings
            from recpipe.db import make_engine

            engine = make_engine(Settings.from_env())
        _mark_notified(engine, [a["alert_id"] for a in alerts if a.get("alert_id") is not None], sent)
    log.info("alerts %s notified via %s", [a.get("alert_id") for a in alerts], sent or "no channel (none configured)")
    return sent


def _model_of_task(task_id: str | None) -> str | None:
    for model in ("autoint", "gru4rec", "popularity"):
        if task_id and model in task_id:
            return model
    return None


def on_failure_callback(context) -> None:
    """Airflow task failure callback: record a `task_failed` alert (model, task, run) and notify.

    Runs in the failed task's process; never raises (a callback error would hide the
    task's own failure).
    """
    try:
        ti = context.get("ti") or context.get("task_instance")
        dag_id = getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", None)
        task_id = getattr(ti, "task_id", None)
        run_id = getattr(ti, "run_id", None) or context.get("run_id")
        try_number = getattr(ti, "try_number", None)
        airflow_ctx = f"dag_id={dag_id} run_id={run_id} task_id={task_id} try={try_number}"
        exception = context.get("exception")
        model = _model_of_task(task_id)
        message = (
            f"task {dag_id}.{task_id} failed in run {run_id} (try {try_number})"
            + (f" training {model}" if model else "")
            + (f": {type(exception).__name__}: {exception}" if exception is not None else "")
        )
        from recpipe.config import Settings
        from recpipe.db import make_engine

        engine = make_engine(Settings.from_env())
        alert_id = record_alert(
            engine, kind=TASK_FAILED, severity="error", model=model, context=airflow_ctx, message=message[:4000]
        )
        notify(fetch_alerts(engine, [alert_id]), context, engine=engine)
    except Exception:
        log.exception("on_failure_callback could not record or send the task_failed alert")
