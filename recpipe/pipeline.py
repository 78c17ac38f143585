"""The nightly stages. `recpipe run`, the CLI's stage commands and the Airflow DAGs call these.

Every stage takes the settings (where things are) and the night's plan (what tonight
does, recpipe.plan) explicitly, plus the ids earlier stages returned; each returns a
small JSON-able dict (ids and figures, never data), which is what Airflow's XCom carries.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime

from recpipe.config import PipelineParams, Settings
from recpipe.plan import NightInputs, NightPlan

log = logging.getLogger(__name__)


def _engine(settings: Settings):
    from recpipe.db import migrated_engine

    return migrated_engine(settings)


def make_plan(settings: Settings, night: datetime, params: PipelineParams | None = None, **choices) -> NightPlan:
    """The validated plan of the night `night` (choices: NightPlan.build's keywords)."""
    return NightPlan.build(night, params or PipelineParams.from_env(), gate_file=settings.gate_file, **choices)


def ingest_interval(settings: Settings, start: datetime | None, end: datetime | None) -> dict:
    """Load the ratings with start <= rated_at < end (None: unbounded) from settings.source_dir."""
    from recpipe.ingest import ingest

    report = ingest(_engine(settings), settings.source_dir, start, end)
    return {**report.to_dict(), "summary": report.summary()}


def rebuild_encodings(settings: Settings, plan: NightPlan) -> dict:
    """Encoders for the night: fitted on the ratings before its training cutoff."""
    from recpipe.features import build_encodings

    artifact = build_encodings(_engine(settings), settings, plan.training_cutoff)
    return {"encodings_id": artifact.artifact_id, "path": str(artifact.path), "sha256": artifact.sha256,
            "fitted_before": artifact.as_of.isoformat(), "field_dims": artifact.details["field_dims"],
            "rows": artifact.row_counts["ratings"]}


def rebuild_sessions(settings: Settings, plan: NightPlan) -> dict:
    """Training sessions for the night: the ratings before its training cutoff."""
    from recpipe.sessions import PRODUCTION, SessionParams, build_sessions

    params = SessionParams.from_dict(plan.session_params) if plan.session_params else SessionParams()
    built = build_sessions(_engine(settings), plan.training_cutoff, params, PRODUCTION)
    return {"sessions_build_id": built["build_id"], "fitted_before": built["as_of"], "stats": built["stats"]}


def night_inputs(encodings: dict | None, sessions: dict | None) -> NightInputs:
    return NightInputs(encodings_id=(encodings or {}).get("encodings_id"),
                       sessions_build_id=(sessions or {}).get("sessions_build_id"))


def train_model(settings: Settings, plan: NightPlan, model: str, inputs: NightInputs,
                fresh_process: bool = False) -> dict:
    """Train one registered model for the night; returns the TrainResponse as a dict."""
    from recpipe import registry
    from recpipe.db import resolve_database_url
    from recpipe.train import TrainRequest, train, train_in_fresh_process

    request = TrainRequest(plan, model, inputs)
    if fresh_process and registry.spec(model).accelerated:
        return train_in_fresh_process(settings, resolve_database_url(settings), request).to_dict()
    return train(_engine(settings), settings, request).to_dict()


def _fallback(run_list):
    """The last-resort baseline run: the first registered baseline (popularity), which
    serves every user."""
    from recpipe import registry

    first = registry.baseline_names()[0]
    found = [r for r in run_list if r.model == first]
    if not found:
        raise ValueError(f"the night has no {first} run (the last-resort lists): train it first")
    return found[0]


def _fallback_chain(store, run_list, compare_metric: str) -> list:
    """Loaded fallbacks for publication: the best promoted baseline tonight (by the gate's
    compare metric), then the last-resort one."""
    from recpipe.scoring import LoadedRun

    last = LoadedRun(store, _fallback(run_list))
    baselines = [r for r in run_list if r.is_baseline and r.status == "promoted" and r.run_id != last.run.run_id
                 and r.production_metrics.get(compare_metric) is not None]
    last_value = last.run.production_metrics.get(compare_metric)
    best = max(baselines, key=lambda r: r.production_metrics[compare_metric], default=None)
    if best is None or (last_value is not None and best.production_metrics[compare_metric] <= last_value):
        return [last]
    return [LoadedRun(store, best), last]


def evaluate(settings: Settings, plan: NightPlan, run_ids: list[int]) -> dict:
    """Score every run of the night on [training cutoff, night), the same users for all."""
    from recpipe import runs
    from recpipe.evaluation.production import evaluate_runs
    from recpipe.recommenders.base import Store

    engine = _engine(settings)
    run_list = runs.get_many(engine, run_ids)
    results = evaluate_runs(Store(engine, settings), run_list, _fallback(run_list), plan.training_cutoff,
                            plan.night, plan.k, plan.gate_rules.get("compare_metric", "ndcg_at_10"))
    for run_id, metrics in results.items():
        runs.add_metrics(engine, run_id, "production", metrics)
    return {"run_ids": [int(r) for r in run_ids], "metrics": {str(k): v for k, v in results.items()}}


def gate(settings: Settings, plan: NightPlan, run_ids: list[int]) -> dict:
    from recpipe.gate import GateRules, gate_runs

    engine = _engine(settings)
    decisions = gate_runs(engine, run_ids, GateRules(**plan.gate_rules), context=plan.context,
                          alert=not plan.dry_run)
    return {
        "promoted": [d.run_id for d in decisions if d.promoted],
        "rejected": [d.run_id for d in decisions if not d.promoted],
        "decisions": [d.to_dict() for d in decisions],
        "alert_ids": [a for d in decisions for a in d.alert_ids],
        "run_ids": [int(r) for r in run_ids],
    }


def publish(settings: Settings, plan: NightPlan, run_ids: list[int]) -> dict:
    """Publish the promoted runs among run_ids (baselines first) for every user known at the night."""
    from recpipe import runs
    from recpipe.publish import publish_top_k
    from recpipe.recommenders.base import History, Store
    from recpipe.scoring import LoadedRun, recommend  # noqa: F401

    engine = _engine(settings)
    run_list = runs.get_many(engine, run_ids)
    promoted = [r for r in run_list if r.status == runs.PROMOTED]
    if plan.dry_run:
        return {"dry_run": True, "would_publish": [r.run_id for r in promoted], "published": []}
    store = Store(engine, settings)
    chain = _fallback_chain(store, run_list, plan.gate_rules.get("compare_metric", "ndcg_at_10"))
    last = chain[-1]
    history = History.load(store, plan.night)
    published = []
    for run in sorted(promoted, key=lambda r: not r.is_baseline):
        loaded = next((f for f in chain if f.run.run_id == run.run_id), None) or LoadedRun(store, run)
        lists = recommend(loaded, history, history.users, plan.k, [last] if run.is_baseline else chain)
        published.append(publish_top_k(engine, run.run_id, lists, plan.retention))
    return {"dry_run": False, "published": published}


def notify(settings: Settings, plan: NightPlan, alert_ids: list[int], context=None) -> dict:
    from recpipe import airflow_bridge, alerts

    engine = _engine(settings)
    rows = alerts.fetch_alerts(engine, alert_ids)
    sent = airflow_bridge.notify(rows, context, engine=engine, settings=settings) if rows else []
    return {"alert_ids": [int(a) for a in alert_ids], "sent": sent}


def fail_night(settings: Settings, plan: NightPlan, run_ids: list[int], reason: str) -> int:
    """Mark the night's undecided candidates failed (they never reach the analysts' history as open)."""
    from recpipe import runs

    return runs.mark_failed(_engine(settings), run_ids, reason)


def run_nightly(settings: Settings, plan: NightPlan, fresh_process: bool = False) -> dict:
    """The whole nightly sequence in one process: what `recpipe run` does."""
    timings: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        started = time.perf_counter()
        result = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - started, 2)
        log.info("%s done in %.1fs", name, timings[name])
        return result

    encodings = timed("rebuild_encodings", rebuild_encodings, settings, plan)
    sessions = timed("rebuild_sessions", rebuild_sessions, settings, plan)
    inputs = night_inputs(encodings, sessions)
    run_ids: list[int] = []
    try:
        for model in plan.models:
            trained = timed(f"train_{model}", train_model, settings, plan, model, inputs, fresh_process)
            run_ids.append(trained["run_id"])
        evaluated = timed("evaluate", evaluate, settings, plan, run_ids)
        decided = timed("gate", gate, settings, plan, run_ids)
    except Exception as exc:
        fail_night(settings, plan, run_ids, f"{type(exc).__name__}: {exc}")
        raise
    try:
        published = timed("publish", publish, settings, plan, run_ids)
    finally:
        # The gate's alerts are sent even when publishing fails.
        notified = timed("notify", notify, settings, plan, decided["alert_ids"])
    return {"as_of": plan.night.isoformat(), "plan": plan.to_dict(), "encodings": encodings, "sessions": sessions,
            "evaluation": evaluated, "gate": decided, "publication": published, "notifications": notified,
            "timings_s": timings}
