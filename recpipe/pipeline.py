"""The nightly sequence, stage by stage. `recpipe run` and the Airflow DAGs call these.

Every stage takes the settings and explicit times, and returns a small JSON-able dict
(ids and paths, never data), which is what Airflow passes between tasks.
"""
from __future__ import annotations

import logging
from datetime import datetime

from recpipe.config import PipelineParams, Settings

log = logging.getLogger(__name__)


def _engine(settings: Settings):
    from recpipe.db import migrated_engine

    return migrated_engine(settings)


def ingest_interval(settings: Settings, start: datetime | None, end: datetime | None) -> dict:
    """Load the ratings with start <= rated_at < end (None: unbounded) from settings.source_dir."""
    from recpipe.ingest import ingest

    report = ingest(_engine(settings), settings.source_dir, start, end)
    return {**report.to_dict(), "summary": report.summary()}


def rebuild_encodings(settings: Settings, as_of: datetime, params: PipelineParams | None = None) -> dict:
    """Encoders for the night `as_of`: fitted on the ratings before its training cutoff."""
    from recpipe.features import build_encodings

    cutoff = (params or PipelineParams.from_env()).training_cutoff(as_of)
    artifact = build_encodings(_engine(settings), settings, cutoff)
    return {
        "artifact_id": artifact.artifact_id,
        "path": str(artifact.path),
        "sha256": artifact.sha256,
        "fitted_before": artifact.as_of.isoformat(),
        "field_dims": artifact.details["field_dims"],
        "rows": artifact.row_counts["ratings"],
    }


def rebuild_sessions(settings: Settings, as_of: datetime, session_params=None,
                     params: PipelineParams | None = None) -> dict:
    """Training sessions for the night `as_of`: the ratings before its training cutoff."""
    from recpipe.sessions import PRODUCTION, SessionParams, build_sessions

    cutoff = (params or PipelineParams.from_env()).training_cutoff(as_of)
    return build_sessions(_engine(settings), cutoff, session_params or SessionParams(), PRODUCTION)


def train_run(settings: Settings, model: str, as_of: datetime, *, encodings_id: int | None = None,
              sessions_build_id: int | None = None, overrides: dict | None = None, epochs: int | None = None,
              params: PipelineParams | None = None) -> dict:
    """Train one model in this process; returns {"run_id", "model", ...}."""
    from recpipe.train import get_run, train

    engine = _engine(settings)
    run_id = train(engine, settings, model, as_of, params or PipelineParams.from_env(),
                   encodings_id=encodings_id, sessions_build_id=sessions_build_id,
                   overrides=overrides, epochs=epochs)
    run = get_run(engine, run_id)
    return {"run_id": run_id, "model": model, "as_of": as_of.isoformat(), "artifact": run["artifact_path"],
            "training": {k: v for k, v in run["metrics"].get("training", {}).items() if k != "curves"}}


def train_subprocess(settings: Settings, model: str, as_of: datetime, *, encodings_id: int | None = None,
                     sessions_build_id: int | None = None, overrides: dict | None = None,
                     epochs: int | None = None) -> dict:
    """train_run in a fresh Python process (`python -m recpipe.cli train`).

    TensorFlow keeps GPU memory for the life of a process and CUDA cannot be
    re-initialised in a forked Celery worker, so training never runs in the worker.
    """
    import json
    import os
    import subprocess
    import sys

    from recpipe import db

    command = [sys.executable, "-m", "recpipe.cli", "train", "--model", model, "--as-of", as_of.isoformat(), "--json"]
    if encodings_id is not None:
        command += ["--encodings", str(encodings_id)]
    if sessions_build_id is not None:
        command += ["--sessions", str(sessions_build_id)]
    if overrides:
        command += ["--overrides", json.dumps(overrides)]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    env = {**os.environ, "RECPIPE_DATABASE_URL": db.resolve_database_url(settings), "RECPIPE_HOME": str(settings.home)}
    log.info("training in a fresh process: %s", " ".join(command))
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"training {model} failed with exit code {done.returncode} (its log is above)")
    return json.loads(done.stdout[done.stdout.index("{"):])


def evaluate(settings: Settings, as_of: datetime, run_ids: list[int], params: PipelineParams | None = None) -> dict:
    """Fit tonight's popularity baseline and score every run on [as_of - eval_window, as_of)."""
    import json

    import sqlalchemy as sa

    from recpipe.evaluation.production import evaluate_runs
    from recpipe.train import get_run, train

    params = params or PipelineParams.from_env()
    engine = _engine(settings)
    popularity_id = train(engine, settings, "popularity", as_of, params)
    runs = [get_run(engine, r) for r in run_ids if r != popularity_id]
    cutoff = params.training_cutoff(as_of)
    results = evaluate_runs(engine, settings, runs, get_run(engine, popularity_id), cutoff, as_of, params.k)
    with engine.begin() as conn:
        for run_id, metrics in results.items():
            conn.execute(
                sa.text("UPDATE model_runs SET metrics = metrics || jsonb_build_object('production', CAST(:m AS jsonb))"
                        " WHERE run_id = :r"),
                {"m": json.dumps(metrics), "r": run_id},
            )
    return {"popularity_run_id": popularity_id, "run_ids": [popularity_id, *[r["run_id"] for r in runs]],
            "metrics": {str(k): v for k, v in results.items()}}


def _with_baseline(engine, as_of: datetime, run_ids: list[int]) -> list[int]:
    """run_ids plus the night's popularity run (the safety net is always gated and published)."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        baseline = conn.execute(sa.text("SELECT run_id FROM model_runs WHERE model = 'popularity' AND as_of = :t"),
                                {"t": as_of}).scalar()
    ids = [int(r) for r in run_ids]
    return ids if baseline is None or baseline in ids else [baseline, *ids]


def gate(settings: Settings, as_of: datetime, run_ids: list[int], gate_overrides: dict | None = None,
         context: str | None = None) -> dict:
    from recpipe.gate import GateRules, gate_runs

    engine = _engine(settings)
    run_ids = _with_baseline(engine, as_of, run_ids)
    decisions = gate_runs(engine, run_ids, GateRules.load(gate_overrides), context=context)
    alert_ids = [a for d in decisions for a in d.alert_ids]
    return {
        "promoted": [d.run_id for d in decisions if d.promoted],
        "rejected": [d.run_id for d in decisions if not d.promoted],
        "decisions": [d.to_dict() for d in decisions],
        "alert_ids": alert_ids,
        "run_ids": run_ids,
    }


def publish(settings: Settings, as_of: datetime, run_ids: list[int], dry_run: bool = False,
            params: PipelineParams | None = None) -> dict:
    """Publish the promoted runs among run_ids (popularity first) for every user known at as_of."""
    from recpipe.publish import publish_top_k
    from recpipe.scoring import History, recommend
    from recpipe.train import get_run

    params = params or PipelineParams.from_env()
    engine = _engine(settings)
    runs = [get_run(engine, r) for r in _with_baseline(engine, as_of, run_ids)]
    promoted = [r for r in runs if r["status"] == "promoted"]
    baseline = next((r for r in runs if r["model"] == "popularity"), None)
    if baseline is None:
        raise ValueError("publish needs tonight's popularity run among run_ids (the fallback lists)")
    if dry_run:
        return {"dry_run": True, "would_publish": [r["run_id"] for r in promoted]}
    history = History.load(engine, as_of)
    published = []
    for run in sorted(promoted, key=lambda r: r["model"] != "popularity"):
        lists = recommend(engine, settings, run, history, history.users, params.k, baseline)
        published.append(publish_top_k(engine, run["run_id"], lists, params.retention))
    return {"dry_run": False, "published": published}


def notify(settings: Settings, alert_ids: list[int]) -> dict:
    from recpipe import alerts

    engine = _engine(settings)
    sent = alerts.notify(alerts.fetch_alerts(engine, alert_ids), engine=engine) if alert_ids else []
    return {"alert_ids": list(alert_ids), "sent": sent}


def run_nightly(settings: Settings, as_of: datetime, epochs: int | None = None, overrides: dict | None = None,
                gate_overrides: dict | None = None, dry_run: bool = False, in_process: bool = True) -> dict:
    """The whole nightly sequence in one process: what `recpipe run` does.

    overrides: {"autoint": {...}, "gru4rec": {...}} model config overrides.
    """
    import time

    overrides = overrides or {}
    timings: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - started, 2)
        log.info("%s done in %.1fs", name, timings[name])
        return result

    encodings = timed("rebuild_encodings", rebuild_encodings, settings, as_of)
    sessions = timed("rebuild_sessions", rebuild_sessions, settings, as_of)
    trainer = train_run if in_process else train_subprocess
    run_ids = []
    for model in ("autoint", "gru4rec"):
        result = timed(f"train_{model}", trainer, settings, model, as_of, encodings_id=encodings["artifact_id"],
                       sessions_build_id=sessions["build_id"], overrides=overrides.get(model), epochs=epochs)
        run_ids.append(result["run_id"])
    evaluated = timed("evaluate", evaluate, settings, as_of, run_ids)
    decided = timed("gate", gate, settings, as_of, evaluated["run_ids"], gate_overrides)
    published = timed("publish", publish, settings, as_of, evaluated["run_ids"], dry_run)
    notified = timed("notify", notify, settings, decided["alert_ids"])
    return {"as_of": as_of.isoformat(), "encodings": encodings, "sessions": sessions, "evaluation": evaluated,
            "gate": decided, "publication": published, "notifications": notified, "timings_s": timings}
