"""Settings, read from the environment: the only module that reads RECPIPE_* variables.

Every stage takes a `Settings` (where things are) and a `NightPlan` (what tonight
does, recpipe.plan) explicitly. Nothing here imports more than the standard library:
the DAG files read these settings while Airflow parses them.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SQL_DIR = REPO_ROOT / "sql"
DEFAULT_GATE_FILE = Path(__file__).with_name("gate.yaml")
AIRFLOW_CONN_ID = "recpipe_db"
# RECPIPE_DATABASE_URL=embedded asks for the embedded PostgreSQL under RECPIPE_HOME.
EMBEDDED = "embedded"


def _utc(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _days(text: str | None, default: timedelta) -> timedelta:
    return timedelta(days=float(text)) if text else default


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|min|h|d)\s*$")
_UNITS = {"s": "seconds", "min": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str, name: str) -> timedelta:
    """"6h", "90min", "45s", "1d": a duration always carries its unit."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{name}={text!r}: give a number with its unit: s, min, h or d (e.g. 6h, 90min)")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def _deadline(text: str | None, default: timedelta) -> timedelta:
    value = parse_duration(text, "RECPIPE_PUBLISH_DEADLINE") if text else default
    if not timedelta(0) < value < timedelta(days=1):
        raise ValueError(f"RECPIPE_PUBLISH_DEADLINE={text!r}: between 0 and 24 hours after the night's midnight")
    return value


def _chunk_users(text: str | None, default: int) -> int:
    if not text:
        return default
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"RECPIPE_CHUNK_USERS={text!r}: a whole number of users >= 1")
    return int(text)


SOURCE_FORMATS = ("auto", "ml-1m", "ml-25m", "ml-32m", "generic")  # recpipe.formats.FORMATS


def _source_format(text: str) -> str:
    if text not in SOURCE_FORMATS:
        raise ValueError(f"RECPIPE_SOURCE_FORMAT={text!r}: one of {', '.join(SOURCE_FORMATS)}")
    return text


@dataclass(frozen=True)
class Settings:
    """Where things are and how the deployment is wired (not what a night does)."""

    # SQLAlchemy URL, or None: inside Airflow the connection `recpipe_db` is used.
    database_url: str | None = None
    # Use the embedded PostgreSQL under `home` (only when asked: RECPIPE_DATABASE_URL=embedded).
    embedded: bool = False
    # State directory: embedded PostgreSQL data, artifacts, downloads.
    home: Path = field(default_factory=lambda: Path(".recpipe").resolve())
    # Folder holding the source files (ratings.dat, movies.dat, users.dat for ML-1M).
    source_dir: Path | None = None
    # Its layout (recpipe.formats): auto (detected from the files), ml-1m, ml-25m, ml-32m, generic.
    source_format: str = "auto"
    # Celery queue of the accelerator worker that trains the Keras models.
    gpu_queue: str = "gpu"
    gate_file: Path = DEFAULT_GATE_FILE
    task_retries: int = 2
    retry_delay: timedelta = timedelta(minutes=1)
    ingest_start: datetime = datetime(2000, 4, 25, tzinfo=timezone.utc)  # the day before ML-1M's first rating
    nightly_start: datetime = datetime(2000, 4, 25, tzinfo=timezone.utc)
    # Notification channels (Airflow connections) and recipients.
    smtp_conn_id: str = "smtp_default"
    slack_conn_id: str = "slack_webhook_default"
    alert_email: str | None = None
    alert_email_from: str | None = None
    # `make run` only: both models' epochs (quick smoke runs).
    epochs: int | None = None
    # The ratings Asset's URI when set (else derived from the database: dags/_recpipe_dag_utils.py);
    # for deployments whose processes reach the database under different names.
    ratings_asset_uri: str | None = None
    # A night's lists must be published by its UTC midnight plus this (recpipe_deadline alerts otherwise).
    publish_deadline: timedelta = timedelta(hours=6)
    # Users scored at once by EASE, item-kNN and GRU4Rec: their memory is this x catalogue
    # (recpipe.models.topk.DEFAULT_CHUNK_USERS, which models use when called directly).
    chunk_users: int = 512

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        source = env.get("RECPIPE_SOURCE_DIR")
        url = env.get("RECPIPE_DATABASE_URL") or None
        defaults = cls()
        return cls(
            database_url=None if url == EMBEDDED else url,
            embedded=url == EMBEDDED,
            home=Path(env.get("RECPIPE_HOME", ".recpipe")).expanduser().resolve(),
            source_dir=Path(source).expanduser().resolve() if source else None,
            source_format=_source_format(env.get("RECPIPE_SOURCE_FORMAT") or defaults.source_format),
            gpu_queue=env.get("RECPIPE_GPU_QUEUE") or defaults.gpu_queue,
            gate_file=Path(env["RECPIPE_GATE_FILE"]) if env.get("RECPIPE_GATE_FILE") else DEFAULT_GATE_FILE,
            task_retries=int(env.get("RECPIPE_TASK_RETRIES") or defaults.task_retries),
            retry_delay=timedelta(seconds=float(env["RECPIPE_RETRY_DELAY_S"])) if env.get("RECPIPE_RETRY_DELAY_S")
            else defaults.retry_delay,
            ingest_start=_utc(env["RECPIPE_INGEST_START"]) if env.get("RECPIPE_INGEST_START") else defaults.ingest_start,
            nightly_start=_utc(env["RECPIPE_NIGHTLY_START"]) if env.get("RECPIPE_NIGHTLY_START")
            else defaults.nightly_start,
            smtp_conn_id=env.get("RECPIPE_SMTP_CONN_ID") or defaults.smtp_conn_id,
            slack_conn_id=env.get("RECPIPE_SLACK_CONN_ID") or defaults.slack_conn_id,
            alert_email=env.get("RECPIPE_ALERT_EMAIL") or None,
            alert_email_from=env.get("RECPIPE_ALERT_EMAIL_FROM") or None,
            epochs=int(env["RECPIPE_EPOCHS"]) if env.get("RECPIPE_EPOCHS") else None,
            ratings_asset_uri=env.get("RECPIPE_RATINGS_ASSET_URI") or None,
            publish_deadline=_deadline(env.get("RECPIPE_PUBLISH_DEADLINE"), defaults.publish_deadline),
            chunk_users=_chunk_users(env.get("RECPIPE_CHUNK_USERS"), defaults.chunk_users),
        )

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"

    def child_env(self, database_url: str) -> dict[str, str]:
        """The environment of a child process (training) that must see the same database
        and home as this one. The URL travels in the environment, never on disk or argv."""
        return {**os.environ, "RECPIPE_DATABASE_URL": database_url, "RECPIPE_HOME": str(self.home)}


@dataclass(frozen=True)
class PipelineParams:
    """The deployment's defaults for a night; recpipe.plan.NightPlan freezes them per night."""

    eval_window: timedelta = timedelta(days=60)
    retention: timedelta = timedelta(days=30)  # published runs older than this are removed
    # What is published: "refit" (the gated configuration refitted on every rating before
    # the night, after a sanity check against the gated run) or "gated" (the cautious:
    # exactly the run the gate judged).
    ship: str = "refit"
    # How the refit trains: "full" (from scratch, the configured epochs) or "warm_start"
    # (from the gated run's weights, embedding tables grown to the night's encoders, for
    # `warm_start_epochs` epochs); models without weights to start from always refit in full.
    refit: str = "full"
    warm_start_epochs: int = 2
    scoring_shards: int = 1  # user shards of the publication (Airflow: one mapped task each)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "PipelineParams":
        env = os.environ if env is None else env
        return cls(
            eval_window=_days(env.get("RECPIPE_EVAL_WINDOW_DAYS"), cls.eval_window),
            retention=_days(env.get("RECPIPE_RETENTION_DAYS"), cls.retention),
            ship=env.get("RECPIPE_SHIP") or cls.ship,
            refit=env.get("RECPIPE_REFIT") or cls.refit,
            warm_start_epochs=int(env.get("RECPIPE_WARM_START_EPOCHS") or cls.warm_start_epochs),
            scoring_shards=int(env.get("RECPIPE_SCORING_SHARDS") or cls.scoring_shards),
        )
