"""Versioned artifacts under RECPIPE_HOME/artifacts, each with a row in `artifacts`.

A file is recorded with its SHA-256 and verified before it is loaded: a joblib
pickle is code, so recpipe never loads one it did not write.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recpipe.config import Settings


class ArtifactIntegrityError(Exception):
    """An artifact file whose checksum does not match its record."""


@dataclass(frozen=True)
class Artifact:
    artifact_id: int
    kind: str
    as_of: datetime
    path: Path  # absolute
    sha256: str
    row_counts: dict
    details: dict


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def new_path(settings: Settings, kind: str, as_of: datetime, suffix: str) -> Path:
    """A fresh path for an artifact: artifacts/<kind>/<as_of>_<now><suffix>."""
    folder = settings.artifacts_dir / kind
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S%f")
    return folder / f"{as_of:%Y%m%dT%H%M%SZ}_{stamp}{suffix}"


def register(
    engine: Engine, settings: Settings, kind: str, as_of: datetime, path: Path,
    row_counts: dict | None = None, details: dict | None = None,
) -> Artifact:
    """Record a written file (or folder's main file) with its checksum."""
    path = Path(path).resolve()
    digest = sha256_file(path)
    relative = path.relative_to(settings.home.resolve())
    with engine.begin() as conn:
        artifact_id = conn.execute(
            sa.text(
                "INSERT INTO artifacts (kind, as_of, path, sha256, row_counts, details)"
                " VALUES (:kind, :as_of, :path, :sha, CAST(:rows AS jsonb), CAST(:details AS jsonb))"
                " RETURNING artifact_id"
            ),
            {"kind": kind, "as_of": as_of, "path": str(relative), "sha": digest,
             "rows": json.dumps(row_counts or {}), "details": json.dumps(details or {}, default=str)},
        ).scalar_one()
    return Artifact(artifact_id, kind, as_of, path, digest, row_counts or {}, details or {})


def get(engine: Engine, settings: Settings, artifact_id: int | None = None, *, kind: str | None = None,
        as_of: datetime | None = None) -> Artifact:
    """An artifact by id, or the newest of `kind` with as_of <= the given time; verified."""
    where, params = ("artifact_id = :id", {"id": artifact_id}) if artifact_id is not None else (
        "kind = :kind AND (CAST(:as_of AS timestamptz) IS NULL OR as_of <= :as_of)", {"kind": kind, "as_of": as_of}
    )
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(f"SELECT * FROM artifacts WHERE {where} ORDER BY as_of DESC, artifact_id DESC LIMIT 1"), params
        ).mappings().first()
    if row is None:
        raise LookupError(f"no artifact for id={artifact_id} kind={kind} as_of<={as_of}")
    artifact = Artifact(row["artifact_id"], row["kind"], row["as_of"], settings.home / row["path"],
                        row["sha256"], row["row_counts"], row["details"])
    verify(artifact)
    return artifact


def verify(artifact: Artifact) -> None:
    if not artifact.path.is_file():
        raise ArtifactIntegrityError(f"artifact {artifact.artifact_id}: {artifact.path} is missing")
    actual = sha256_file(artifact.path)
    if actual != artifact.sha256:
        raise ArtifactIntegrityError(
            f"artifact {artifact.artifact_id} ({artifact.kind}): {artifact.path} has sha256 {actual}, "
            f"recorded {artifact.sha256}; refusing to load a file recpipe did not write"
        )
