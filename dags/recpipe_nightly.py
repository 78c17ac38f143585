"""recpipe_nightly: plan the night, rebuild features, train every registered model,
evaluate, gate, publish, notify.

    plan >> check_data >> [rebuild_encodings, rebuild_sessions] >> train_<model> (one per registered model;
         a model that needs others, e.g. twostage, also after their train_/refit_ tasks)
         >> evaluate >> gate >> rebuild_refit_inputs >> refit_<model> >> check_refits
         (a model that needs others refits after check_refits_for_<model> has checked theirs)
         >> prepare_publication >> score_shard (mapped: one per user shard) >> publish
         >> [learned_lists_shipped, notify]

`plan` builds the night's plan once (the night = the run's data interval end, or the
`as_of` param) and validates every trigger parameter: a bad one fails the run at
once, without retries. Every later task receives the plan through XCom. `check_data`
is the data-quality gate (gate.yaml's `data:` rules): when a rule fires it fails the
run at once (no retries), nothing trains, and `notify` sends its data_gate alerts. The Keras
models train on the accelerator queue (RECPIPE_GPU_QUEUE, default "gpu"), each in a
fresh process: TensorFlow/CUDA cannot be initialised again inside a forked worker.
After the gate, each promoted model is refitted on every rating before the night
(`refit_<model>`, same queue) and `check_refits` compares it with its gated run; the
checked refit is what `publish` ships (the gated run when the check fails, or when the
plan's `ship` is "gated").
`learned_lists_shipped` is skipped when the gate promoted no learned model, so such a
night does not look all green; `notify` is a teardown task: it runs whatever happened upstream, so the gate's alerts
are sent even when `publish` fails, and the run still ends failed then. XCom carries the plan, ids and figures only.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from _recpipe_dag_utils import RATINGS_ASSET, SETTINGS, airflow_context, default_args, night_of, settings
from airflow.sdk import (AssetOrTimeSchedule, CronDataIntervalTimetable, Param, TriggerRule, dag,
                         get_current_context, task)

from recpipe import registry

log = logging.getLogger("recpipe.nightly")

MODEL_PARAMS = {
    f"{name}_overrides": Param({}, type="object", description=f"{name} config overrides, e.g. {{\"epochs\": 2}}.")
    for name in registry.names()
}


@dag(
    dag_id="recpipe_nightly",
    # Data-aware: a run per successful ingest (its ratings Asset event names the night). The
    # midnight timetable gives backfills and manual runs the ingest's own daily intervals;
    # it never starts a run by itself (no "scheduled" run type).
    schedule=AssetOrTimeSchedule(timetable=CronDataIntervalTimetable("0 0 * * *", timezone="UTC"),
                                 assets=RATINGS_ASSET),
    allowed_run_types=["asset_triggered", "backfill", "manual", "operator_triggered"],
    start_date=SETTINGS.nightly_start,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    dagrun_timeout=timedelta(hours=12),
    tags=["recpipe"],
    doc_md=__doc__,
    params={
        "epochs": Param(None, type=["null", "integer"], minimum=1,
                        description="Epochs for every trained model (null: each model's configured default)."),
        **MODEL_PARAMS,
        "gate_overrides": Param({}, type="object", additionalProperties=False, properties={
                                    "tolerance": {"type": "number", "minimum": 0, "maximum": 1},
                                    "must_beat_baseline": {"type": "boolean"},
                                    "compare_metric": {"type": "string"},
                                    "min_test_users": {"type": "integer", "minimum": 0},
                                    "floors": {"type": "object"},
                                    "refit_min_served_ratio": {"type": "number", "minimum": 0, "maximum": 1},
                                    "refit_min_coverage_ratio": {"type": "number", "minimum": 0, "maximum": 1},
                                    "refit_min_overlap": {"type": "number", "minimum": 0, "maximum": 1},
                                    "refit_holdout_days": {"type": "integer", "minimum": 0, "maximum": 60},
                                    "refit_max_holdout_drop": {"type": "number", "minimum": 0, "maximum": 1},
                                    "data": {"type": "object", "additionalProperties": False, "properties": {
                                        "max_rejected_share": {"type": "number", "minimum": 0, "maximum": 1},
                                        "min_new_ratings": {"type": "integer", "minimum": 0},
                                        "max_vanished_user_share": {"type": "number", "minimum": 0, "maximum": 1},
                                        "max_vanished_movie_share": {"type": "number", "minimum": 0, "maximum": 1}}}},
                                description="Gate rule overrides (recpipe/gate.yaml shape), e.g."
                                            " {\"tolerance\": 0.2, \"floors\": {\"gru4rec\": {\"ndcg_at_10\": 0.05}}}."),
        "scoring_shards": Param(None, type=["null", "integer"], minimum=1, maximum=256,
                                description="User shards the lists are scored in, one mapped task each"
                                            " (null: RECPIPE_SCORING_SHARDS, default 1)."),
        "refit": Param(None, type=["null", "string"], enum=[None, "full", "warm_start"],
                       description="How promoted models are refitted on every rating before the night: from"
                                   " scratch (full) or from the gated run's weights (warm_start); null:"
                                   " RECPIPE_REFIT, default full."),
        "warm_start_epochs": Param(None, type=["null", "integer"], minimum=1, maximum=100,
                                   description="Epochs of a warm-started refit (null: RECPIPE_WARM_START_EPOCHS,"
                                               " default 2)."),
        "dry_run": Param(False, type="boolean",
                         description="Train, evaluate and gate as separate dry-run runs; publish nothing."),
        "as_of": Param(None, type=["null", "string"], format="date-time",
                       description="Override the night (ISO 8601; default: the data interval end)."),
    },
)
def recpipe_nightly():
    @task(retries=0)  # it only reads the trigger's params: a retry would fail the same way
    def plan() -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from recpipe import pipeline
        from recpipe.plan import PlanError

        context = get_current_context()
        params = context["params"]
        try:
            night = night_of(context)
            built = pipeline.make_plan(
                settings(), night, epochs=params.get("epochs"),
                model_overrides={m: params.get(f"{m}_overrides") or {} for m in registry.names()},
                gate_overrides=params.get("gate_overrides") or {}, dry_run=bool(params.get("dry_run")),
                scoring_shards=params.get("scoring_shards"), refit=params.get("refit"),
                warm_start_epochs=params.get("warm_start_epochs"), context=airflow_context(context))
        except (PlanError, ValueError) as exc:
            raise AirflowFailException(f"invalid night parameters: {exc}") from exc  # retrying cannot help
        return built.to_dict()

    @task
    def check_data(night: dict) -> dict:
        """The data-quality gate: a fired rule fails the run here, before any training
        (no retry: the data decides); `notify` sends its data_gate alerts."""
        from airflow.sdk.exceptions import AirflowFailException

        from recpipe import pipeline
        from recpipe.gate import DataGateError
        from recpipe.plan import NightPlan

        try:
            return pipeline.check_data(settings(), NightPlan.from_dict(night))
        except DataGateError as exc:
            raise AirflowFailException(str(exc)) from exc

    @task
    def rebuild_encodings(night: dict) -> dict:
        from recpipe import pipeline
        from recpipe.plan import NightPlan

        return pipeline.rebuild_encodings(settings(), NightPlan.from_dict(night))

    @task
    def rebuild_sessions(night: dict) -> dict:
        from recpipe import pipeline
        from recpipe.plan import NightPlan

        return pipeline.rebuild_sessions(settings(), NightPlan.from_dict(night))

    @task(execution_timeout=timedelta(hours=6))
    def train(night: dict, model: str, encodings: dict, sessions: dict, components: list) -> dict:
        from recpipe import pipeline
        from recpipe.plan import NightPlan

        return pipeline.train_model(settings(), NightPlan.from_dict(night), model,
                                    pipeline.night_inputs(encodings, sessions, components), fresh_process=True)

    @task
    def evaluate(night: dict, trained: list[dict]) -> dict:
        from recpipe import pipeline
        from recpipe.plan import NightPlan

        from airflow.sdk.exceptions import AirflowFailException

        from recpipe.evaluation.production import NoTestUsers

        try:
            result = pipeline.evaluate(settings(), NightPlan.from_dict(night), [t["run_id"] for t in trained])
        except NoTestUsers as exc:
            raise AirflowFailException(str(exc)) from exc  # the data decides: retrying cannot help
        return {"run_ids": result["run_ids"]}

    @task
    def gate(night: dict, evaluation: dict) -> dict:
        from recpipe import pipeline
        from recpipe.plan import NightPlan

        result = pipeline.gate(settings(), NightPlan.from_dict(night), evaluation["run_ids"])
        return {key: result[key] for key in ("promoted", "rejected", "learned_promoted", "alert_ids", "run_ids")}

    @task
    def rebuild_refit_inputs(night: dict, decision: dict) -> dict:
        from recpipe import pipeline
        from recpipe.plan import NightPlan

        return pipeline.rebuild_refit_inputs(settings(), NightPlan.from_dict(night))

    @task(execution_timeout=timedelta(hours=6))
    def refit(night: dict, model: str, trained: dict, refit_inputs: dict, components: list) -> dict | None:
        from recpipe import pipeline
        from recpipe.plan import NightPlan

        return pipeline.refit_model(settings(), NightPlan.from_dict(night), trained["run_id"], refit_inputs,
                                    fresh_process=True, components=components)

    @task
    def check_component_refits(night: dict, refits: list) -> list:
        """The refits a model is built on, checked before it refits (check_refits reports them again)."""
        from recpipe import pipeline
        from recpipe.plan import NightPlan

        pipeline.check_refits(settings(), NightPlan.from_dict(night), [r["run_id"] for r in refits if r])
        return refits

    @task
    def check_refits(night: dict, refits: list) -> dict:
        from recpipe import pipeline
        from recpipe.plan import NightPlan

        result = pipeline.check_refits(settings(), NightPlan.from_dict(night), [r["run_id"] for r in refits if r])
        return {key: result[key] for key in ("promoted", "alert_ids")} | {"run_ids": [r["run_id"] for r in refits if r]}

    @task
    def prepare_publication(night: dict, decision: dict, checked: dict) -> list[dict]:
        """One job per user shard (none on a dry run: the shards and publish are skipped)."""
        from recpipe import pipeline
        from recpipe.plan import NightPlan

        prepared = pipeline.prepare_publication(settings(), NightPlan.from_dict(night), decision["run_ids"],
                                                checked["run_ids"])
        if prepared["dry_run"]:
            log.info("dry run: would publish runs %s", prepared["would_publish"])
        return [{"shard": shard, "run_ids": prepared["run_ids"], "ship": prepared["ship"]}
                for shard in prepared["shards"]]

    @task(map_index_template="{{ shard_label }}")
    def score_shard(night: dict, job: dict) -> dict:
        from recpipe import pipeline
        from recpipe.plan import NightPlan

        plan_ = NightPlan.from_dict(night)
        get_current_context()["shard_label"] = f"shard {job['shard'] + 1} of {plan_.scoring_shards}"  # the grid's name
        return pipeline.score_shard(settings(), plan_, job["run_ids"], job["ship"], job["shard"])

    @task
    def publish(night: dict, jobs: list, shards: list) -> dict:
        """Every shipped run's lists live in one transaction, once all shards are staged."""
        from recpipe import pipeline
        from recpipe.plan import NightPlan

        return pipeline.go_live(settings(), NightPlan.from_dict(night), jobs[0]["ship"])

    @task
    def learned_lists_shipped(decision: dict) -> list[str]:
        """Skipped, visibly in the grid, on a night when the gate promoted no learned model:
        the run is not all green although nothing failed (the alert says why)."""
        from airflow.sdk.exceptions import AirflowSkipException

        if not decision.get("learned_promoted"):
            raise AirflowSkipException("no learned model was promoted tonight: their live lists stay the previous"
                                       " night's (see the gate's alerts); only the baselines were refreshed")
        return decision["learned_promoted"]

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def notify() -> dict:
        """Sends the gate's alerts whatever publish did; a night that failed before the
        gate has its candidates marked failed (each failed task already alerted). It pulls
        what it needs itself: an XCom argument from a failed `plan` would keep it from running."""
        from recpipe import pipeline
        from recpipe.plan import NightPlan

        context = get_current_context()
        night = context["ti"].xcom_pull(task_ids="plan")
        if night is None:  # the plan was refused: that task's failure alert says why
            return {"alert_ids": [], "sent": [], "skipped": "no plan"}
        plan_ = NightPlan.from_dict(night)
        decision = context["ti"].xcom_pull(task_ids="gate")
        checked = context["ti"].xcom_pull(task_ids="check_refits") or {}
        if decision is None:
            stopped = pipeline.data_gate_alerts(settings(), plan_)  # the data gate stopped the night
            if stopped:
                return pipeline.notify(settings(), plan_, stopped, context) | {"stopped_by": "check_data"}
            trained = [context["ti"].xcom_pull(task_ids=f"train_{m}") for m in plan_.models]
            failed = pipeline.fail_night(settings(), plan_, [t["run_id"] for t in trained if t],
                                         "the night failed before the gate")
            return {"alert_ids": [], "sent": [], "failed_runs": failed}
        alert_ids = [*(decision.get("alert_ids") or []), *(checked.get("alert_ids") or [])]
        sent = pipeline.notify(settings(), plan_, alert_ids, context)
        if not plan_.dry_run:
            try:  # the night report: recpipe report --night <night> prints its path too
                sent |= pipeline.report(settings(), plan_)
                log.info("night report: %s", sent["report"])
            except Exception:  # a report problem never hides the night's own outcome
                log.exception("the night report could not be written")
        return sent

    night = plan()
    encodings = rebuild_encodings(night)
    sessions = rebuild_sessions(night)
    check_data(night) >> [encodings, sessions]  # nothing is rebuilt or trained on data that failed it

    def queue(spec) -> dict:
        return {"queue": SETTINGS.gpu_queue} if spec.accelerated else {}

    # A model that needs others' runs (ModelSpec.needs) trains, and refits, after theirs.
    trained, refitted = {}, {}
    for spec in map(registry.spec, registry.training_order()):
        trained[spec.name] = train.override(task_id=f"train_{spec.name}", **queue(spec))(
            night, spec.name, encodings, sessions, [trained[m] for m in spec.needs])
    decision = gate(night, evaluate(night, list(trained.values())))
    refit_inputs = rebuild_refit_inputs(night, decision)
    for spec in map(registry.spec, registry.training_order()):
        components = [refitted[m] for m in spec.needs]
        if components:  # only component refits that passed their checks are built upon
            components = check_component_refits.override(task_id=f"check_refits_for_{spec.name}")(night, components)
        refitted[spec.name] = refit.override(task_id=f"refit_{spec.name}", **queue(spec))(
            night, spec.name, trained[spec.name], refit_inputs, components)
    refits = list(refitted.values())
    jobs = prepare_publication(night, decision, check_refits(night, refits))
    # One mapped task per user shard (the plan's scoring_shards), then one atomic switch.
    published = publish(night, jobs, score_shard.partial(night=night).expand(job=jobs))
    published >> learned_lists_shipped(decision)
    # A teardown: it runs whatever publish did, and the run's state stays publish's
    # (a plain all_done leaf would turn a failed night green).
    published >> notify().as_teardown()


recpipe_nightly()
