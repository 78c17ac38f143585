"""The run registry: the only module that reads and writes `model_runs`.

A run is one model trained for one night. Re-training the same model for the same
night replaces that run (same run_id) — except dry runs, which are rows of their own
and never touch a real run. Status: candidate -> promoted | rejected by the gate;
failed when its night failed before the gate.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from recpipe.artifacts import Artifact, VerifiedBundle, open_verified
from recpipe.config import Settings

CANDIDATE, PROMOTED, REJECTED, FAILED = "candidate", "promoted", "rejected", "failed"


@dataclass(frozen=True)
class Run:
    run_id: int
    model: str
    as_of: datetime  # the night
    status: str
    config: dict
    data_stats: dict
    metrics: dict
    artifact_path: str | None
    artifact_sha256: str | None
    artifact_id: int | None
    is_baseline: bool
    dry_run: bool
    gate_reasons: list = field(default_factory=list)
    plan: dict = field(default_factory=dict)
    phase: str = "gated"
    gated_run_id: int | None = None

    @classmethod
    def from_row(cls, row) -> "Run":
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    @property
    def production_metrics(self) -> dict:
        return (self.metrics or {}).get("production") or {}

    def open_artifact(self, settings: Settings) -> VerifiedBundle:
        """The run's bundle, verified (see recpipe.artifacts)."""
        if not self.artifact_path or not self.artifact_sha256:
            raise LookupError(f"{self.model} run {self.run_id} has no artifact")
        return open_verified(settings, self.artifact_path, self.artifact_sha256,
                             f"{self.model} run {self.run_id}")


def _json(value) -> str:
    return json.dumps(value, default=str)


def save_trained(engine: Engine, settings: Settings, *, model: str, night: datetime, config: dict,
                 data_stats: dict, metrics: dict, artifact: Artifact, is_baseline: bool, dry_run: bool,
                 plan: dict, phase: str = "gated", gated_run_id: int | None = None) -> int:
    """Record a freshly trained run as a candidate; returns its run_id."""
    values = {
        "model": model, "as_of": night, "config": _json(config), "stats": _json(data_stats),
        "metrics": _json(metrics), "path": artifact.relative_path(settings), "sha": artifact.sha256,
        "artifact_id": artifact.artifact_id, "baseline": is_baseline, "dry": dry_run, "plan": _json(plan),
        "phase": phase, "gated": gated_run_id,
    }
    columns = ("INSERT INTO model_runs (model, as_of, config, data_stats, metrics, artifact_path, artifact_sha256,"
               " artifact_id, is_baseline, dry_run, plan, phase, gated_run_id)"
               " VALUES (:model, :as_of, CAST(:config AS jsonb), CAST(:stats AS jsonb), CAST(:metrics AS jsonb),"
               " :path, :sha, :artifact_id, :baseline, :dry, CAST(:plan AS jsonb), :phase, :gated)")
    if dry_run:
        statement = columns + " RETURNING run_id"
    else:
        statement = columns + (
            " ON CONFLICT (model, as_of, phase) WHERE NOT dry_run DO UPDATE SET config = EXCLUDED.config,"
            "   data_stats = EXCLUDED.data_stats, metrics = EXCLUDED.metrics,"
            "   artifact_path = EXCLUDED.artifact_path, artifact_sha256 = EXCLUDED.artifact_sha256,"
            "   artifact_id = EXCLUDED.artifact_id, is_baseline = EXCLUDED.is_baseline, plan = EXCLUDED.plan,"
            "   gated_run_id = EXCLUDED.gated_run_id,"
            "   status = 'candidate', gate_reasons = '[]', created_at = now(), decided_at = NULL"
            " RETURNING run_id")
    with engine.begin() as conn:
        return int(conn.execute(sa.text(statement), values).scalar_one())


def get(engine_or_conn: Engine | Connection, run_id: int, *, for_update: bool = False) -> Run:
    query = "SELECT * FROM model_runs WHERE run_id = :r" + (" FOR UPDATE" if for_update else "")
    if isinstance(engine_or_conn, Engine):
        with engine_or_conn.connect() as conn:
            row = conn.execute(sa.text(query), {"r": run_id}).mappings().first()
    else:
        row = engine_or_conn.execute(sa.text(query), {"r": run_id}).mappings().first()
    if row is None:
        raise LookupError(f"no model run {run_id}")
    return Run.from_row(row)


def get_many(engine: Engine, run_ids) -> list[Run]:
    return [get(engine, int(r)) for r in run_ids]


def add_metrics(engine: Engine, run_id: int, key: str, metrics: dict) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE model_runs SET metrics = metrics || jsonb_build_object(CAST(:k AS text),"
                             " CAST(:m AS jsonb)) WHERE run_id = :r"),
                     {"k": key, "m": _json(metrics), "r": run_id})


def decide(conn: Connection, run_id: int, status: str, reasons: list[dict]) -> None:
    conn.execute(sa.text("UPDATE model_runs SET status = :s, gate_reasons = CAST(:g AS jsonb), decided_at = now()"
                         " WHERE run_id = :r"), {"s": status, "g": _json(reasons), "r": run_id})


def last_promoted(conn: Connection, model: str, before: datetime) -> Run | None:
    """The model's newest promoted real run of an earlier night (what a candidate is compared with)."""
    row = conn.execute(sa.text(
        "SELECT * FROM model_runs WHERE model = :m AND status = 'promoted' AND NOT dry_run AND phase = 'gated'"
        " AND as_of < :t ORDER BY as_of DESC LIMIT 1"), {"m": model, "t": before}).mappings().first()
    return Run.from_row(row) if row else None


def mark_failed(engine: Engine, run_ids, reason: str) -> int:
    """Candidates of a failed night become 'failed' (promoted/rejected runs are left alone)."""
    if not run_ids:
        return 0
    with engine.begin() as conn:
        return conn.execute(sa.text(
            "UPDATE model_runs SET status = 'failed', gate_reasons = CAST(:g AS jsonb), decided_at = now()"
            " WHERE run_id = ANY(:ids) AND status = 'candidate'"),
            {"ids": [int(r) for r in run_ids], "g": _json([{"rule": "night_failed", "message": reason}])}).rowcount


def of_night(engine: Engine, night: datetime, *, dry_run: bool = False, phase: str | None = "gated") -> list[Run]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT * FROM model_runs WHERE as_of = :t AND dry_run = :d"
            " AND (CAST(:p AS text) IS NULL OR phase = :p) ORDER BY model, phase"),
            {"t": night, "d": dry_run, "p": phase}).mappings().all()
    return [Run.from_row(r) for r in rows]


def listing(engine: Engine, model: str | None = None, limit: int = 20) -> list[Run]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT * FROM model_runs WHERE (CAST(:m AS text) IS NULL OR model = :m)"
            " ORDER BY as_of DESC, run_id DESC LIMIT :n"), {"m": model, "n": limit}).mappings().all()
    return [Run.from_row(r) for r in rows]


def referenced_artifact_ids(engine: Engine) -> set[int]:
    with engine.connect() as conn:
        return {int(a) for (a,) in conn.execute(sa.text(
            "SELECT artifact_id FROM model_runs WHERE artifact_id IS NOT NULL"))}
