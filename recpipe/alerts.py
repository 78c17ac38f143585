"""Alerts: a row in `alerts` and a WARNING log line, always.

Sending them (SMTP, Slack through Airflow's notifiers) is recpipe.airflow_bridge.notify.
"""
from __future__ import annotations

import logging

import sqlalchemy as sa
from sqlalchemy.engine import Engine

log = logging.getLogger("recpipe.alerts")

GATE_REJECTED = "gate_rejected"
METRIC_REGRESSION = "metric_regression"
TASK_FAILED = "task_failed"
DATA_GATE = "data_gate"  # the data-quality gate stopped a night before training


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


def mark_notified(engine: Engine, alert_ids: list[int], channels: list[str]) -> None:
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
