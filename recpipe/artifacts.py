"""Versioned artifact bundles under RECPIPE_HOME/artifacts, and the one verified loader.

An artifact is a folder of files plus MANIFEST.json (each file's SHA-256); the
artifacts row (and a model run) records the manifest's SHA-256. Loading goes through
`open_verified` only: the folder must lie under RECPIPE_HOME/artifacts, the manifest
and every file are read once, hashed, and the verified bytes are written to a private
temporary folder that the deserialisers (joblib, Keras, json) then read. So a file
swapped after the check is never what gets loaded, and a pickle is only ever loaded
from bytes recpipe wrote.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from recpipe.config import Settings

MANIFEST = "MANIFEST.json"


class ArtifactIntegrityError(Exception):
    """An artifact that does not match its record, or lies outside the artifacts folder."""


@dataclass(frozen=True)
class Artifact:
    artifact_id: int
    kind: str
    as_of: datetime
    path: Path  # the bundle folder, absolute
    sha256: str  # of its MANIFEST.json
    row_counts: dict
    details: dict

    def relative_path(self, settings: Settings) -> str:
        return str(self.path.relative_to(settings.home.resolve()))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def new_dir(settings: Settings, kind: str, as_of: datetime) -> Path:
    """A fresh, empty bundle folder: artifacts/<kind>/<as_of>_<now>/."""
    folder = settings.artifacts_dir / kind
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S%f")
    path = folder / f"{as_of:%Y%m%dT%H%M%SZ}_{stamp}"
    path.mkdir()
    return path


def write_manifest(folder: Path) -> str:
    """Hash every file of `folder` into MANIFEST.json; returns the manifest's SHA-256."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    data = json.dumps({"files": files}, indent=1, sort_keys=True).encode()
    (folder / MANIFEST).write_bytes(data)
    return sha256_bytes(data)


def register(engine: Engine, settings: Settings, kind: str, as_of: datetime, folder: Path,
             row_counts: dict | None = None, details: dict | None = None) -> Artifact:
    """Write the bundle's manifest and record it."""
    folder = Path(folder).resolve()
    _inside_artifacts(settings, folder)
    digest = write_manifest(folder)
    relative = str(folder.relative_to(settings.home.resolve()))
    with engine.begin() as conn:
        artifact_id = conn.execute(
            sa.text(
                "INSERT INTO artifacts (kind, as_of, path, sha256, row_counts, details)"
                " VALUES (:kind, :as_of, :path, :sha, CAST(:rows AS jsonb), CAST(:details AS jsonb))"
                " RETURNING artifact_id"
            ),
            {"kind": kind, "as_of": as_of, "path": relative, "sha": digest,
             "rows": json.dumps(row_counts or {}), "details": json.dumps(details or {}, default=str)},
        ).scalar_one()
    return Artifact(artifact_id, kind, as_of, folder, digest, row_counts or {}, details or {})


def get(engine: Engine, settings: Settings, artifact_id: int) -> Artifact:
    """The record of an artifact (not yet verified: open it with `open_verified`)."""
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM artifacts WHERE artifact_id = :id"),
                           {"id": artifact_id}).mappings().first()
    if row is None:
        raise LookupError(f"no artifact {artifact_id}")
    return Artifact(row["artifact_id"], row["kind"], row["as_of"], settings.home / row["path"],
                    row["sha256"], row["row_counts"], row["details"])


def _inside_artifacts(settings: Settings, folder: Path) -> Path:
    root = settings.artifacts_dir.resolve()
    resolved = Path(folder).resolve()
    if not resolved.is_relative_to(root):
        raise ArtifactIntegrityError(f"{folder} is outside {root}: recpipe loads artifacts from there only")
    return resolved


class VerifiedBundle:
    """Private copies of a bundle's verified files; remove with close() (or `with`)."""

    def __init__(self, label: str, folder: Path, expected_sha256: str):
        self.label = label
        self._tmp = Path(tempfile.mkdtemp(prefix="recpipe-verified-"))  # mode 0700
        try:
            self.files = self._verify_and_copy(folder, expected_sha256)
        except BaseException:
            self.close()
            raise

    def _verify_and_copy(self, folder: Path, expected: str) -> dict[str, Path]:
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise ArtifactIntegrityError(f"{self.label}: {manifest_path} is missing; refusing to load it")
        data = manifest_path.read_bytes()
        if sha256_bytes(data) != expected:
            raise ArtifactIntegrityError(f"{self.label}: {manifest_path} does not match its recorded sha256;"
                                         " refusing to load a bundle recpipe did not write")
        files: dict[str, Path] = {}
        for name, digest in json.loads(data)["files"].items():
            source = (folder / name).resolve()
            if not source.is_relative_to(folder.resolve()) or not source.is_file():
                raise ArtifactIntegrityError(f"{self.label}: {name} is missing; refusing to load the bundle")
            content = source.read_bytes()
            if sha256_bytes(content) != digest:
                raise ArtifactIntegrityError(f"{self.label}: {name} has changed since it was written"
                                             f" (sha256 mismatch); refusing to load it")
            private = self._tmp / name
            private.parent.mkdir(parents=True, exist_ok=True)
            private.write_bytes(content)
            files[name] = private
        return files

    def path(self, name: str) -> Path:
        try:
            return self.files[name]
        except KeyError:
            raise ArtifactIntegrityError(f"{self.label}: the bundle has no file {name!r}") from None

    def read_text(self, name: str) -> str:
        return self.path(name).read_text()

    def close(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> "VerifiedBundle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_verified(settings: Settings, relative_path: str, sha256: str, label: str) -> VerifiedBundle:
    """The verified files of the bundle at RECPIPE_HOME/relative_path (see the module doc)."""
    folder = _inside_artifacts(settings, settings.home / relative_path)
    return VerifiedBundle(label, folder, sha256)


def open_artifact(settings: Settings, artifact: Artifact) -> VerifiedBundle:
    return VerifiedBundle(f"artifact {artifact.artifact_id} ({artifact.kind})",
                          _inside_artifacts(settings, artifact.path), artifact.sha256)


def unreferenced(engine: Engine, settings: Settings) -> list[Path]:
    """Bundle folders no artifacts row refers to (left by failed or interrupted stages)."""
    with engine.connect() as conn:
        known = {str((settings.home / p).resolve()) for (p,) in conn.execute(sa.text("SELECT path FROM artifacts"))}
    root = settings.artifacts_dir
    if not root.is_dir():
        return []
    return sorted(p for kind in root.iterdir() if kind.is_dir() for p in kind.iterdir()
                  if p.is_dir() and str(p.resolve()) not in known)


def prune(engine: Engine, settings: Settings, dry_run: bool = False) -> list[Path]:
    """Remove what no model run uses: bundle folders without a row (left by an interrupted
    stage) and model bundles whose run was replaced by a rerun. Encoders (runs name them in
    their data) and night reports are kept. Returns the folders removed (or, dry_run, that would be)."""
    with engine.connect() as conn:
        orphans = conn.execute(sa.text(
            "SELECT artifact_id, path FROM artifacts a WHERE kind NOT IN ('encodings', 'report')"
            " AND NOT EXISTS (SELECT 1 FROM model_runs r WHERE r.artifact_id = a.artifact_id)")).all()
    doomed = sorted({*unreferenced(engine, settings), *(settings.home / p for _, p in orphans)})
    if not dry_run:
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM artifacts WHERE artifact_id = ANY(:ids)"),
                         {"ids": [int(a) for a, _ in orphans]})
        for folder in doomed:
            shutil.rmtree(_inside_artifacts(settings, folder), ignore_errors=True)
    return doomed
