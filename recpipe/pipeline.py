"""The nightly sequence, stage by stage. `recpipe run` and the Airflow DAGs call these.

Every stage takes the settings and explicit times, and returns a small JSON-able dict
(ids and paths, never data), which is what Airflow passes between tasks.
"""
from __future__ import annotations

import logging
from datetime import datetime

from recpipe.config import Settings

log = logging.getLogger(__name__)


def _engine(settings: Settings):
    from recpipe import db

    engine = db.make_engine(settings)
    db.upgrade(engine)  # cheap when up to date; makes every entry point self-sufficient
    return engine


def ingest_interval(settings: Settings, start: datetime | None, end: datetime | None) -> dict:
    """Load the ratings with start <= rated_at < end (None: unbounded) from settings.source_dir."""
    from recpipe.ingest import ingest

    report = ingest(_engine(settings), settings.source_dir, start, end)
    return {**report.to_dict(), "summary": report.summary()}


def rebuild_encodings(settings: Settings, as_of: datetime) -> dict:
    from recpipe.features import build_encodings

    artifact = build_encodings(_engine(settings), settings, as_of)
    return {
        "artifact_id": artifact.artifact_id,
        "path": str(artifact.path),
        "sha256": artifact.sha256,
        "field_dims": artifact.details["field_dims"],
        "rows": artifact.row_counts["ratings"],
    }


def rebuild_sessions(settings: Settings, as_of: datetime, params=None, purpose: str = "production") -> dict:
    from recpipe.sessions import SessionParams, build_sessions

    return build_sessions(_engine(settings), as_of, params or SessionParams(), purpose)
