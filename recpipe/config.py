"""Settings, read from the environment (and the Airflow connection `recpipe_db`).

Every stage takes a `Settings` explicitly; `Settings.from_env()` is the only place
that reads environment variables.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SQL_DIR = REPO_ROOT / "sql"
AIRFLOW_CONN_ID = "recpipe_db"


@dataclass(frozen=True)
class Settings:
    # SQLAlchemy URL; None means "start the embedded PostgreSQL under `home`".
    database_url: str | None = None
    # State directory: embedded PostgreSQL data, artifacts, downloads.
    home: Path = field(default_factory=lambda: Path(".recpipe").resolve())
    # Folder holding ratings.dat, movies.dat, users.dat.
    source_dir: Path | None = None
    # Celery queue of the GPU worker that runs training.
    gpu_queue: str = "gpu"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        source = env.get("RECPIPE_SOURCE_DIR")
        return cls(
            database_url=env.get("RECPIPE_DATABASE_URL") or None,
            home=Path(env.get("RECPIPE_HOME", ".recpipe")).expanduser().resolve(),
            source_dir=Path(source).expanduser().resolve() if source else None,
            gpu_queue=env.get("RECPIPE_GPU_QUEUE", "gpu"),
        )

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    @property
    def artifacts_dir(self) -> Path:
        return self.home / "artifacts"


@dataclass(frozen=True)
class PipelineParams:
    """How a nightly run as of T trains, judges and publishes.

    Models train on ratings before T - eval_window and are judged (production
    protocol) on the positives of [T - eval_window, T); the lists they publish use
    every rating before T as the users' history. What is gated is what is shipped.
    """

    eval_window: timedelta = timedelta(days=60)
    popularity_window: timedelta = timedelta(days=90)
    k: int = 10
    retention: timedelta = timedelta(days=30)  # published runs older than this are removed

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "PipelineParams":
        env = os.environ if env is None else env
        days = env.get("RECPIPE_EVAL_WINDOW_DAYS")
        keep = env.get("RECPIPE_RETENTION_DAYS")
        return cls(
            eval_window=timedelta(days=float(days)) if days else cls.eval_window,
            retention=timedelta(days=float(keep)) if keep else cls.retention,
        )

    def training_cutoff(self, as_of: datetime) -> datetime:
        return as_of - self.eval_window


def airflow_database_url() -> str | None:
    """The URL of the Airflow connection `recpipe_db`, or None when it is not defined.

    Only looked up inside an Airflow process (where `airflow` is already imported):
    importing Airflow elsewhere costs seconds and reconfigures logging.
    """
    import sys

    if "airflow" not in sys.modules:
        return None
    try:
        from airflow.sdk import BaseHook
    except ImportError:  # pragma: no cover - an Airflow 2 process
        return None
    try:
        conn = BaseHook.get_connection(AIRFLOW_CONN_ID)
    except Exception:  # the connection is optional; RECPIPE_DATABASE_URL is the fallback
        return None
    uri = conn.get_uri()
    # Airflow writes "postgres://"; SQLAlchemy 2 only knows "postgresql://".
    if uri.startswith("postgres://"):
        uri = "postgresql://" + uri[len("postgres://"):]
    return uri
