"""recpipe_nightly: rebuild features, retrain AutoInt+ and GRU4Rec, evaluate, gate, publish.

    rebuild_encodings >> rebuild_sessions >> [train_autoint, train_gru4rec] >> evaluate >> gate >> publish >> notify

"As of" is the run's data interval end (a manual run without one: its logical date,
else its run_after). Training runs on the GPU Celery queue (RECPIPE_GPU_QUEUE, default
"gpu") in a fresh process (`python -m recpipe.cli train ...`): TensorFlow/CUDA cannot be
initialised again inside a forked worker. XCom carries ids and paths only.

Trigger-form params: epochs, autoint_overrides, gru4rec_overrides, gate_overrides, dry_run
(train and evaluate, publish nothing), as_of (ISO date-time overriding the interval end).
"""
from __future__ import annotations

from datetime import timedelta

from _recpipe_dag_utils import (
    DEFAULT_INGEST_START, airflow_context, default_args, env_datetime, gpu_queue, run_as_of, settings,
)
from airflow.sdk import CronDataIntervalTimetable, Param, dag, get_current_context, task

TRAINED_MODELS = ("autoint", "gru4rec")


@dag(
    dag_id="recpipe_nightly",
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    start_date=env_datetime("RECPIPE_NIGHTLY_START", DEFAULT_INGEST_START),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    dagrun_timeout=timedelta(hours=12),
    tags=["recpipe"],
    doc_md=__doc__,
    params={
        "epochs": Param(None, type=["null", "integer"], minimum=1,
                        description="Epochs for both models (null: each model's configured default)."),
        "autoint_overrides": Param({}, type="object", description="AutoInt+ config overrides, e.g. {\"batch_size\": 2048}."),
        "gru4rec_overrides": Param({}, type="object", description="GRU4Rec config overrides, e.g. {\"hidden\": 100}."),
        "gate_overrides": Param({}, type="object",
                                description="Gate rule overrides (recpipe/gate.yaml shape), e.g."
                                            " {\"tolerance\": 0.2, \"floors\": {\"gru4rec\": {\"ndcg_at_10\": 0.05}}}."),
        "dry_run": Param(False, type="boolean", description="Train and evaluate, publish nothing."),
        "as_of": Param(None, type=["null", "string"], format="date-time",
                       description="Override the run's \"as of\" instant (ISO 8601; default: the data interval end)."),
    },
)
def recpipe_nightly():
    @task
    def rebuild_encodings() -> dict:
        from recpipe import pipeline

        return pipeline.rebuild_encodings(settings(), run_as_of(get_current_context()))

    @task
    def rebuild_sessions(encodings: dict) -> dict:
        from recpipe import pipeline

        return pipeline.rebuild_sessions(settings(), run_as_of(get_current_context()))

    def _train(model: str, encodings: dict, sessions: dict) -> dict:
        from recpipe import pipeline

        context = get_current_context()
        params = context["params"]
        epochs = params.get("epochs")
        return pipeline.train_subprocess(
            settings(), model, run_as_of(context),
            encodings_id=encodings.get("artifact_id"),
            sessions_build_id=sessions.get("build_id"),
            overrides=dict(params.get(f"{model}_overrides") or {}) or None,
            epochs=int(epochs) if epochs is not None else None,
        )

    @task(queue=gpu_queue(), execution_timeout=timedelta(hours=6))
    def train_autoint(encodings: dict, sessions: dict) -> dict:
        return _train("autoint", encodings, sessions)

    @task(queue=gpu_queue(), execution_timeout=timedelta(hours=6))
    def train_gru4rec(encodings: dict, sessions: dict) -> dict:
        return _train("gru4rec", encodings, sessions)

    @task
    def evaluate(autoint: dict, gru4rec: dict) -> dict:
        """Fits tonight's popularity baseline and scores every run; its run_ids include popularity's."""
        from recpipe import pipeline

        result = pipeline.evaluate(settings(), run_as_of(get_current_context()), [autoint["run_id"], gru4rec["run_id"]])
        return {"run_ids": result["run_ids"], "popularity_run_id": result.get("popularity_run_id")}

    @task
    def gate(evaluation: dict) -> dict:
        from recpipe import pipeline

        context = get_current_context()
        overrides = context["params"].get("gate_overrides") or None
        result = pipeline.gate(settings(), run_as_of(context), evaluation["run_ids"], overrides,
                               context=airflow_context(context))
        return {key: result[key] for key in ("promoted", "rejected", "alert_ids")} | {
            "run_ids": result.get("run_ids") or evaluation["run_ids"]}

    @task
    def publish(decision: dict) -> dict:
        from recpipe import pipeline

        context = get_current_context()
        return pipeline.publish(
            settings(), run_as_of(context), decision["run_ids"], dry_run=bool(context["params"].get("dry_run"))
        )

    @task
    def notify(decision: dict, published: dict) -> dict:
        from recpipe import pipeline

        return pipeline.notify(settings(), list(decision.get("alert_ids") or []))

    encodings = rebuild_encodings()
    sessions = rebuild_sessions(encodings)
    evaluation = evaluate(train_autoint(encodings, sessions), train_gru4rec(encodings, sessions))
    decision = gate(evaluation)
    notify(decision, publish(decision))


recpipe_nightly()
