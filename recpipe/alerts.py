"""Alerts: a row in `alerts` and a WARNING log line, always.

Sending them (SMTP, Slack through Airflow's notifiers) is recpipe.airflow_bridge.notify.
When the recpipe database cannot take the row, the alert is sent first and kept in
RECPIPE_HOME/alerts_pending.jsonl; the next alert that reaches the database records
the pending ones (with their original time and the channels they went to).
"""
from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

log = logging.getLogger("recpipe.alerts")

GATE_REJECTED = "gate_rejected"
METRIC_REGRESSION = "metric_regression"
TASK_FAILED = "task_failed"
ALL_REJECTED = "all_rejected"
DEADLINE_MISSED = "deadline_missed"
PENDING_FILE = "alerts_pending.jsonl"
_COLUMNS = ("severity", "kind", "model", "metric", "value", "threshold", "run_id", "context", "message")
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


def run_alert_ids(engine: Engine, run_id: int, kind: str) -> list[int]:
    """The `kind` alerts raised about a run since it was (last) trained."""
    with engine.connect() as conn:
        return [int(a) for (a,) in conn.execute(sa.text(
            "SELECT a.alert_id FROM alerts a JOIN model_runs r ON r.run_id = a.run_id"
            " WHERE a.run_id = :r AND a.kind = :k AND a.created_at >= r.created_at ORDER BY a.alert_id"),
            {"r": run_id, "k": kind})]


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
    parts = [f"#{alert.get('alert_id') or 'unrecorded'} [{alert.get('severity', 'warning')}] {alert.get('kind')}"]
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
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE alerts SET notified = (SELECT coalesce(jsonb_agg(DISTINCT c), '[]'::jsonb)"
                " FROM jsonb_array_elements_text(notified || CAST(:channels AS jsonb)) AS c)"
                " WHERE alert_id = ANY(:ids)"
            ),
            {"channels": json.dumps(channels), "ids": list(alert_ids)},
        )


def hold_pending(home: Path, alert: dict, notified: list[str]) -> Path:
    """Keep an alert the database could not store (already sent to `notified`)."""
    path = Path(home) / PENDING_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    row = {key: alert.get(key) for key in _COLUMNS} | {
        "created_at": datetime.now(timezone.utc).isoformat(), "notified": list(notified)}
    with path.open("a", encoding="utf-8") as out:  # one short line per append: O_APPEND keeps lines whole
        out.write(json.dumps(row) + "\n")
    log.warning("ALERT (database unreachable, kept in %s) [%s] %s", path, alert.get("kind"), alert.get("message"))
    return path


def record_pending(engine: Engine, home: Path) -> list[int]:
    """Store the alerts kept by hold_pending; returns their new alert_ids.

    The file is renamed before it is read, so an alert held meanwhile starts a new file;
    when the insert fails the lines go back into the pending file."""
    path = Path(home) / PENDING_FILE
    if not path.is_file():
        return []
    taken = path.with_name(f"{PENDING_FILE}.{os.getpid()}")
    try:
        path.replace(taken)
    except FileNotFoundError:  # another process took them
        return []
    lines = [line for line in taken.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        with engine.begin() as conn:
            ids = [conn.execute(sa.text(
                "INSERT INTO alerts (created_at, notified, " + ", ".join(_COLUMNS) + ")"
                " VALUES (:created_at, CAST(:notified AS jsonb), " + ", ".join(f":{c}" for c in _COLUMNS) + ")"
                " RETURNING alert_id"), row | {"notified": json.dumps(row.get("notified") or [])}).scalar_one()
                for row in map(json.loads, lines)]
    except Exception:
        with path.open("a", encoding="utf-8") as out:
            out.writelines(line + "\n" for line in lines)
        taken.unlink()
        raise
    taken.unlink()
    log.info("recorded %d alert(s) held while the database was unreachable: %s", len(ids), ids)
    return ids
