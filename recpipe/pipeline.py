"""The nightly stages. `recpipe run`, the CLI's stage commands and the Airflow DAGs call these.

Every stage takes the settings (where things are) and the night's plan (what tonight
does, recpipe.plan) explicitly, plus the ids earlier stages returned; each returns a
small JSON-able dict (ids and figures, never data), which is what Airflow's XCom carries.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from datetime import datetime

from recpipe import registry
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
    """Load the ratings with start <= rated_at < end (None: unbounded) from settings.source_dir
    (in settings.source_format)."""
    from recpipe.ingest import ingest

    report = ingest(_engine(settings), settings.source_dir, start, end, fmt=settings.source_format)
    return {**report.to_dict(), "summary": report.summary()}


def interval_ingested(settings: Settings, start: datetime, end: datetime) -> bool:
    """Whether the ratings of [start, end) were loaded by successful ingest batches."""
    from recpipe.ingest import interval_ingested

    return interval_ingested(_engine(settings), start, end)


def check_data(settings: Settings, plan: NightPlan) -> dict:
    """The data-quality gate, before anything trains: record the night's figures and,
    when a rule fires, a `data_gate` alert per rule, then raise DataGateError (one line)."""
    from recpipe.gate import DataGateError, GateRules, check_data as check

    rules = GateRules(**plan.gate_rules).data
    checked = check(_engine(settings), plan.night, rules, retention=plan.retention, context=plan.context,
                    dry_run=plan.dry_run)
    if not checked.passed:
        raise DataGateError(checked.message(), checked.check_id, checked.alert_ids)
    return checked.to_dict()


def data_gate_alerts(settings: Settings, plan: NightPlan) -> list[int]:
    """The alerts of the data check that stopped this night's run (plan.context), if one did."""
    from recpipe.gate import stopped_check_alerts

    return stopped_check_alerts(_engine(settings), plan.night, plan.context)


def rebuild_encodings(settings: Settings, plan: NightPlan, phase: str = "gated") -> dict:
    """Encoders for the night: fitted on the ratings before its training cutoff (gated),
    or before the night itself (refit: users and movies of the last days get codes)."""
    from recpipe.features import build_encodings

    artifact = build_encodings(_engine(settings), settings, plan.train_until(phase))
    return {"encodings_id": artifact.artifact_id, "path": str(artifact.path), "sha256": artifact.sha256,
            "fitted_before": artifact.as_of.isoformat(), "field_dims": artifact.details["field_dims"],
            "rows": artifact.row_counts["ratings"]}


def rebuild_sessions(settings: Settings, plan: NightPlan, phase: str = "gated") -> dict:
    """Training sessions for the night: the ratings before its training cutoff (gated) or
    before the night (refit)."""
    from recpipe.sessions import PRODUCTION, SessionParams, build_sessions

    params = SessionParams.from_dict(plan.session_params) if plan.session_params else SessionParams()
    built = build_sessions(_engine(settings), plan.train_until(phase), params, PRODUCTION)
    return {"sessions_build_id": built["build_id"], "fitted_before": built["as_of"], "stats": built["stats"]}


def night_inputs(encodings: dict | None, sessions: dict | None, components: list[dict | None] | None = None
                 ) -> NightInputs:
    """The training inputs; `components`: the train (or refit) results of the models a
    model needs (registry ModelSpec.needs), whose run ids it is built from."""
    return NightInputs(encodings_id=(encodings or {}).get("encodings_id"),
                       sessions_build_id=(sessions or {}).get("sessions_build_id"),
                       component_runs={c["model"]: int(c["run_id"]) for c in components or [] if c})


def train_model(settings: Settings, plan: NightPlan, model: str, inputs: NightInputs,
                fresh_process: bool = False, phase: str = "gated", gated_run_id: int | None = None) -> dict:
    """Train one registered model for the night; returns the TrainResponse as a dict."""
    from recpipe import registry
    from recpipe.db import resolve_database_url
    from recpipe.train import TrainRequest, train, train_in_fresh_process

    request = TrainRequest(plan, model, inputs, phase, gated_run_id)
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


def _fallback_chain(store, run_list, compare_metric: str, refit_of: dict | None = None) -> list:
    """Loaded fallbacks for publication: the best promoted baseline tonight (by the gate's
    compare metric), then the last-resort one; each as shipped (its refit when it has one)."""
    from recpipe.scoring import LoadedRun

    refit_of = refit_of or {}

    def shipped(run):
        return LoadedRun(store, refit_of.get(run.run_id, run))

    last = shipped(_fallback(run_list))
    baselines = [r for r in run_list if r.is_baseline and r.status == "promoted" and r.run_id != last.run.run_id
                 and r.production_metrics.get(compare_metric) is not None]
    last_value = last.run.production_metrics.get(compare_metric)
    best = max(baselines, key=lambda r: r.production_metrics[compare_metric], default=None)
    if best is None or (last_value is not None and best.production_metrics[compare_metric] <= last_value):
        return [last]
    return [shipped(best), last]


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
    """Decide every candidate; a night where no learned model passes gets one
    `all_rejected` alert besides the rejections."""
    from recpipe import alerts
    from recpipe.gate import GateRules, gate_runs

    engine = _engine(settings)
    decisions = gate_runs(engine, run_ids, GateRules(**plan.gate_rules), context=plan.context,
                          alert=not plan.dry_run)
    learned = [d for d in decisions if not registry.spec(d.model).baseline]
    alert_ids = [a for d in decisions for a in d.alert_ids]
    if learned and not any(d.promoted for d in learned) and not plan.dry_run:
        # One summary row, sent in the same message as the rejections it sums up.
        alert_ids.append(alerts.record_alert(
            engine, kind=alerts.ALL_REJECTED, severity="error", context=plan.context,
            message=f"no learned model promoted for the night of {plan.night:%Y-%m-%d}"
                    f" ({', '.join(sorted(d.model for d in learned))} rejected): their live lists stay the"
                    f" previous night's; only the baselines were refreshed"))
    return {
        "promoted": [d.run_id for d in decisions if d.promoted],
        "rejected": [d.run_id for d in decisions if not d.promoted],
        "learned_promoted": [d.model for d in learned if d.promoted],
        "decisions": [d.to_dict() for d in decisions],
        "alert_ids": alert_ids,
        "run_ids": [int(r) for r in run_ids],
    }


def rebuild_refit_inputs(settings: Settings, plan: NightPlan) -> dict:
    """The refit's encodings and sessions (as of the night); nothing when shipping gated runs."""
    if not plan.refits:
        return {}
    return {"encodings": rebuild_encodings(settings, plan, "refit"), "sessions": rebuild_sessions(settings, plan, "refit")}


def refit_model(settings: Settings, plan: NightPlan, gated_run_id: int, refit_inputs: dict,
                fresh_process: bool = False, components: list[dict | None] | None = None) -> dict | None:
    """Refit a promoted gated run's configuration on every rating before the night.

    None when the night ships gated runs, the gated run was rejected, or it is a dry run.
    `components`: the refit results of the models it needs, already checked
    (check_refits); only a component refit that passed its checks is used: one without a
    refit tonight (None), or whose refit failed or was not checked, is used as its gated run.
    """
    from recpipe import runs

    engine = _engine(settings)
    gated = runs.get(engine, gated_run_id)
    if not plan.refits or plan.dry_run or gated.status != runs.PROMOTED:
        return None
    inputs = night_inputs(refit_inputs.get("encodings"), refit_inputs.get("sessions"))
    if registry.spec(gated.model).needs:
        used = dict((gated.plan.get("inputs") or {}).get("component_runs") or {})
        for component in components or []:
            if not component:
                continue
            status = runs.get(engine, int(component["run_id"])).status
            if status == runs.PROMOTED:
                used[component["model"]] = int(component["run_id"])
            else:  # a refit that failed its checks (or was never checked) is not built upon
                log.warning("%s refit: component %s refit run %s is %s, not checked and passed: using its gated"
                            " run %s", gated.model, component["model"], component["run_id"],
                            status, used.get(component["model"]))
        inputs = inputs.with_components(used)
    return train_model(settings, plan, gated.model, inputs, fresh_process, phase="refit", gated_run_id=gated_run_id)


def check_refits(settings: Settings, plan: NightPlan, refit_run_ids: list[int]) -> dict:
    """Sanity-check each refit against its gated run; a refit that fails is not shipped
    (its gated run is) and raises an alert naming the check. A refit already checked
    tonight (a component, checked before the model built on it refitted) keeps its
    verdict, which is reported again with its alerts."""
    from recpipe import alerts, runs
    from recpipe.gate import Decision, GateRules, check_refit
    from recpipe.recommenders.base import History, Store

    engine = _engine(settings)
    store = Store(engine, settings)
    history = History.load(store, plan.night)
    rules = GateRules(**plan.gate_rules)
    decisions = []
    for run_id in refit_run_ids:
        refit = runs.get(engine, run_id)
        if refit.status in (runs.PROMOTED, runs.REJECTED):
            decisions.append(Decision(refit.run_id, refit.model, refit.status == runs.PROMOTED, refit.gate_reasons,
                                      alerts.run_alert_ids(engine, refit.run_id, alerts.GATE_REJECTED)))
            continue
        gated = runs.get(engine, refit.gated_run_id)
        decisions.append(check_refit(engine, store, history, gated, refit, rules, plan.k, context=plan.context))
    return {"decisions": [d.to_dict() for d in decisions], "alert_ids": [a for d in decisions for a in d.alert_ids],
            "promoted": [d.run_id for d in decisions if d.promoted]}


def shipped_runs(run_list, refit_list) -> list:
    """Per model, the run to publish: its promoted refit, else its promoted gated run."""
    from recpipe import runs

    refits = {r.model: r for r in refit_list if r.status == runs.PROMOTED}
    return [refits.get(r.model, r) for r in run_list if r.status == runs.PROMOTED]


def prepare_publication(settings: Settings, plan: NightPlan, run_ids: list[int],
                        refit_run_ids: list[int] | None = None) -> dict:
    """The runs tonight ships (per promoted model its checked refit, else its gated run),
    each with an empty staging table, and the user shards to score them in."""
    from recpipe import runs
    from recpipe.publish import prepare_stage

    engine = _engine(settings)
    shipped = shipped_runs(runs.get_many(engine, run_ids), runs.get_many(engine, refit_run_ids or []))
    if plan.dry_run:
        return {"dry_run": True, "would_publish": [r.run_id for r in shipped], "ship": [], "shards": [],
                "run_ids": [int(r) for r in run_ids]}
    prepare_stage(engine, [r.run_id for r in shipped])
    return {"dry_run": False, "ship": [r.run_id for r in shipped], "shards": list(range(plan.scoring_shards)),
            "run_ids": [int(r) for r in run_ids]}


def score_shard(settings: Settings, plan: NightPlan, run_ids: list[int], ship: list[int], shard: int) -> dict:
    """Lists of one user shard (every scoring_shards-th user known at the night, from
    `shard`) for each shipped run, staged: baselines first, the learned models' unserved
    users get the best baseline's list, then the last fallback's."""
    from recpipe import runs
    from recpipe.publish import stage_lists
    from recpipe.recommenders.base import History, Store
    from recpipe.scoring import LoadedRun, recommend

    started = time.perf_counter()
    engine = _engine(settings)
    shipped = runs.get_many(engine, ship)
    store = Store(engine, settings)
    chain = _fallback_chain(store, runs.get_many(engine, run_ids), plan.gate_rules.get("compare_metric", "ndcg_at_10"),
                            {r.gated_run_id: r for r in shipped if r.phase == "refit"})
    last = chain[-1]
    history = History.load(store, plan.night)
    users = history.users[shard::plan.scoring_shards]
    rows = 0
    for run in sorted(shipped, key=lambda r: not r.is_baseline):
        loaded = next((f for f in chain if f.run.run_id == run.run_id), None) or LoadedRun(store, run)
        lists = recommend(loaded, history, users, plan.k, [last] if run.is_baseline else chain)
        rows += stage_lists(engine, run.run_id, lists, users)
    result = {"shard": shard, "of": plan.scoring_shards, "users": int(len(users)), "rows": rows,
              "seconds": round(time.perf_counter() - started, 2)}
    log.info("scored shard %s", result)
    return result


def go_live(settings: Settings, plan: NightPlan, ship: list[int]) -> dict:
    """Every shipped run's staged lists live at once, if each holds every user known at
    the night (a missing shard refuses the whole publication)."""
    import sqlalchemy as sa

    from recpipe.publish import go_live as attach_and_switch

    engine = _engine(settings)
    with engine.connect() as conn:
        users = conn.execute(sa.text("SELECT count(DISTINCT user_id) FROM ratings WHERE rated_at < :night"),
                             {"night": plan.night}).scalar()
    return {"dry_run": False, "published": attach_and_switch(engine, ship, plan.retention, expected_users=users)}


def publish(settings: Settings, plan: NightPlan, run_ids: list[int], refit_run_ids: list[int] | None = None) -> dict:
    """Publish, for each model promoted tonight, its checked refit or else its gated run,
    for every user known at the night: stage the plan's shards one after the other, then
    go live (Airflow maps the shards over workers instead)."""
    prepared = prepare_publication(settings, plan, run_ids, refit_run_ids)
    if prepared["dry_run"]:
        return {"dry_run": True, "would_publish": prepared["would_publish"], "published": []}
    for shard in prepared["shards"]:
        score_shard(settings, plan, prepared["run_ids"], prepared["ship"], shard)
    return go_live(settings, plan, prepared["ship"])


def notify(settings: Settings, plan: NightPlan, alert_ids: list[int], context=None) -> dict:
    from recpipe import airflow_bridge, alerts

    engine = _engine(settings)
    alerts.record_pending(engine, settings.home)  # alerts sent while the database was down
    rows = alerts.fetch_alerts(engine, alert_ids)
    sent = airflow_bridge.notify(rows, context, engine=engine, settings=settings) if rows else []
    return {"alert_ids": [int(a) for a in alert_ids], "sent": sent}


def check_deadline(settings: Settings, day: datetime, context=None) -> dict:
    """Alert (once per day) when no run of `day`'s night (UTC) has published lists by
    the deadline: a failed or late nightly, or one that never started (no ingest)."""
    from datetime import timedelta

    import sqlalchemy as sa

    from recpipe import airflow_bridge, alerts
    from recpipe.db import statement

    day_start = day.replace(hour=0, minute=0, second=0, microsecond=0)
    key = f"night={day_start:%Y-%m-%d}"
    engine = _engine(settings)
    with engine.connect() as conn:
        published = conn.execute(statement("night_published"),
                                 {"day_start": day_start, "day_end": day_start + timedelta(days=1)}).mappings().all()
        already = conn.execute(statement("deadline_alerted"), {"context": key}).scalar()
    result = {"night": f"{day_start:%Y-%m-%d}", "deadline": (day_start + settings.publish_deadline).isoformat(),
              "published": sorted({r["model"] for r in published}), "alert_id": already, "sent": []}
    if published or already is not None:
        log.info("deadline check %s", result)
        return result
    alert_id = alerts.record_alert(
        engine, kind=alerts.DEADLINE_MISSED, severity="error", context=key,
        message=f"the night of {day_start:%Y-%m-%d} has published no lists by {result['deadline']}"
                f" (RECPIPE_PUBLISH_DEADLINE {settings.publish_deadline} after midnight UTC): check that day's"
                " recpipe_ingest and recpipe_nightly runs")
    alerts.record_pending(engine, settings.home)
    result["alert_id"] = alert_id
    result["sent"] = airflow_bridge.notify(alerts.fetch_alerts(engine, [alert_id]), context,
                                           engine=engine, settings=settings)
    return result


def report(settings: Settings, plan: NightPlan) -> dict:
    """The night's report (HTML + PNG figures), registered as an artifact."""
    from recpipe.report import write_night_report

    written = write_night_report(_engine(settings), settings, plan.night)
    return {"report": str(written.html_path), "artifact_id": written.artifact_id}


def fail_night(settings: Settings, plan: NightPlan, run_ids: list[int], reason: str) -> int:
    """Mark the night's undecided candidates failed (they never reach the analysts' history as open)."""
    from recpipe import runs

    return runs.mark_failed(_engine(settings), run_ids, reason)


@contextmanager
def stage(name: str):
    """Name the stage an error came from (`exc.recpipe_stage`, the innermost wins), so that
    the CLI's one line says where a night stopped."""
    try:
        yield
    except Exception as exc:
        if getattr(exc, "recpipe_stage", None) is None:
            try:
                exc.recpipe_stage = name
            except AttributeError:  # an exception type without __dict__: unnamed, still raised
                pass
        raise


def _cleanup_failed(what: str, exc: Exception) -> None:
    # The night's own error is the one raised; a cleanup that fails too (the same outage)
    # is one INFO line, so that the operator's stderr keeps one line.
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    log.info("%s failed as well: %s: %s", what, type(exc).__name__, first)


def run_nightly(settings: Settings, plan: NightPlan, fresh_process: bool = False) -> dict:
    """The whole nightly sequence in one process: what `recpipe run` does."""
    timings: dict[str, float] = {}

    def timed(name, fn, *args, **kwargs):
        started = time.perf_counter()
        with stage(name):
            result = fn(*args, **kwargs)
        timings[name] = round(time.perf_counter() - started, 2)
        log.info("%s done in %.1fs", name, timings[name])
        return result

    from recpipe.gate import DataGateError

    try:
        data_check = timed("check_data", check_data, settings, plan)
    except DataGateError as exc:
        notify(settings, plan, exc.alert_ids)  # nothing trains, nothing is published
        raise
    encodings = timed("rebuild_encodings", rebuild_encodings, settings, plan)
    sessions = timed("rebuild_sessions", rebuild_sessions, settings, plan)
    inputs = night_inputs(encodings, sessions)
    run_ids: list[int] = []
    trained_by_model: dict[str, dict] = {}
    try:
        for model in registry.training_order(plan.models):  # a model after those it needs
            needs = [trained_by_model[m] for m in registry.spec(model).needs]
            trained = timed(f"train_{model}", train_model, settings, plan, model,
                            night_inputs(encodings, sessions, needs) if needs else inputs, fresh_process)
            trained_by_model[model] = trained
            run_ids.append(trained["run_id"])
        evaluated = timed("evaluate", evaluate, settings, plan, run_ids)
        decided = timed("gate", gate, settings, plan, run_ids)
    except Exception as exc:
        try:
            fail_night(settings, plan, run_ids, f"{type(exc).__name__}: {exc}")
        except Exception as also:
            _cleanup_failed("marking the night's runs failed", also)
        raise
    alert_ids = list(decided["alert_ids"])
    refit_ids: list[int] = []
    try:
        refit_inputs = timed("rebuild_refit_inputs", rebuild_refit_inputs, settings, plan)
        refit_by_model: dict[str, dict | None] = {}
        for model, run_id in zip(trained_by_model, run_ids):
            needs = [refit_by_model.get(m) for m in registry.spec(model).needs]
            if any(needs):  # the components' refits pass their checks before anything is built on them
                timed(f"check_refits_for_{model}", check_refits, settings, plan, [c["run_id"] for c in needs if c])
            with stage(f"refit of run {run_id}"):
                refit = refit_model(settings, plan, run_id, refit_inputs, fresh_process, needs)
            refit_by_model[model] = refit
            if refit is not None:
                timings[f"refit_{refit['model']}"] = refit["seconds"]
                refit_ids.append(refit["run_id"])
        checked = timed("check_refits", check_refits, settings, plan, refit_ids)
        alert_ids += checked["alert_ids"]
        published = timed("publish", publish, settings, plan, run_ids, refit_ids)
    except BaseException:
        # The gate's alerts are sent even when refitting or publishing fails.
        try:
            timed("notify", notify, settings, plan, alert_ids)
        except Exception as also:
            _cleanup_failed("notify", also)
        raise
    notified = timed("notify", notify, settings, plan, alert_ids)
    reported = {} if plan.dry_run else timed("report", report, settings, plan)
    return {"report": reported.get("report"), "as_of": plan.night.isoformat(), "plan": plan.to_dict(),
            "data_check": data_check, "encodings": encodings, "sessions": sessions,
            "evaluation": evaluated, "gate": decided, "refits": checked, "publication": published,
            "notifications": notified, "timings_s": timings}
