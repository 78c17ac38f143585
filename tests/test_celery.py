"""The compose deployment brought up for real on this machine, end to end.

docker-compose.yaml's Airflow services — api-server (Airflow 3's workers run tasks
through its Execution API), scheduler, dag-processor, triggerer, and the two Celery
workers (default queue, GPU queue) — started with the commands and environment parsed
from the file, so the file cannot drift from what runs. Only the container network's
addresses are replaced: this machine's PostgreSQL (scratch metadata and recpipe
databases) and Redis (a separate database number) stand in for the `postgres` and
`redis` services. One `recpipe_nightly` run on small generated data must succeed,
with both training tasks executed by the GPU-queue worker. Everything started here is
stopped at the end.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from airflow_harness import (COMPOSE_COMPONENTS, REPO_ROOT, AirflowHome, compose_services, free_port, http_ok,
                             scratch_postgres_database, wait_for)

pytestmark = pytest.mark.slow

REDIS_URL = os.environ.get("RECPIPE_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
RUN_TIMEOUT_S = float(os.environ.get("RECPIPE_TEST_CELERY_TIMEOUT", "1200"))
AS_OF = "2000-12-01T00:00:00+00:00"


def _redis_ok(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=3).ping())
    except Exception:
        return False


def _preflight() -> None:
    """Fail early, with the fix, on the two environment problems met with this Airflow."""
    try:  # apache-airflow-providers-celery 3.26 imports `retry`, which celery 5.7 removed
        import airflow.providers.celery.executors.celery_executor_utils  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"the Celery executor does not import ({exc}): pin celery==5.6.3")
    try:  # Airflow opens an async engine on a PostgreSQL metadata DB in every process
        import asyncpg  # noqa: F401
    except ImportError:
        pytest.fail("asyncpg is missing: Airflow needs it for a PostgreSQL metadata database")


def _on_this_machine(env: dict, *, meta_sa: str, port: int, health_port: int, database_url: str,
                     home: Path, source_dir: Path) -> dict:
    """The compose file's environment with the container network's names replaced by this
    machine's addresses (the only differences from what `docker compose up` runs)."""
    local = dict(env)
    local.update({
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta_sa,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + meta_sa,  # compose's form: db+postgresql+psycopg2://
        "AIRFLOW__CELERY__BROKER_URL": REDIS_URL,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL":
            env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].replace("airflow-apiserver:8080", f"127.0.0.1:{port}"),
        "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(health_port),
        "AIRFLOW_CONN_RECPIPE_DB": database_url.replace("postgresql+psycopg2://", "postgresql://", 1),
        "RECPIPE_HOME": str(home),
        "RECPIPE_SOURCE_DIR": str(source_dir),
    })
    del local["AIRFLOW_CONFIG"]  # a path inside the image
    # The image ships the FAB provider; this venv does not: Airflow's default auth manager.
    del local["AIRFLOW__CORE__AUTH_MANAGER"]
    return local


@pytest.fixture(scope="module")
def celery_cluster(database_url, synthetic_dir, tmp_path_factory):
    """docker-compose.yaml's Airflow services, started with its commands and environment
    (parsed from the file), on this machine's PostgreSQL and Redis."""
    tmp_path = tmp_path_factory.mktemp("celery")
    if not _redis_ok(REDIS_URL):
        pytest.skip(f"no Redis at {REDIS_URL}")
    _preflight()
    services = compose_services()
    assert set(COMPOSE_COMPONENTS) <= set(services), "docker-compose.yaml lost an Airflow service"
    server = sa.engine.make_url(database_url).set(database="postgres").render_as_string(hide_password=False)
    meta_url, drop_meta = scratch_postgres_database(server, prefix="airflow_celery")
    meta_sa = meta_url.replace("postgresql://", "postgresql+psycopg2://", 1)
    port, health_port = free_port(), free_port()
    common = _on_this_machine(services["airflow-scheduler"][1], meta_sa=meta_sa, port=port,
                              health_port=health_port, database_url=database_url,
                              home=tmp_path / "recpipe-home", source_dir=synthetic_dir)
    home = AirflowHome.create(
        tmp_path / "airflow",
        metadata_url=meta_sa,
        extra={
            **common,
            # Test-only: start dates in the future, so the scheduler creates no scheduled runs
            # of its own (only what the tests trigger), and failures without retries.
            "RECPIPE_INGEST_START": "2100-01-01",
            "RECPIPE_NIGHTLY_START": "2100-01-01",
            "RECPIPE_TASK_RETRIES": "0",
            "AIRFLOW__CORE__PARALLELISM": "4",
            # A task's recorded hostname is the Celery hostname of the worker that ran it
            # (the two workers share this machine): see airflow_harness.worker_hostname.
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "airflow_harness.worker_hostname",
            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        },
    )
    home.migrate()
    meta = sa.create_engine(meta_sa)
    hostnames = {}
    try:
        for name in COMPOSE_COMPONENTS:
            args, env = services[name]
            # What this service adds to the common environment, e.g. the GPU worker's KERAS_BACKEND.
            own = {k: v for k, v in env.items() if k not in services["airflow-scheduler"][1]}
            if args == ["api-server"]:  # compose publishes the container's 8080; here a free port
                args = [*args, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
            if args[:2] == ["celery", "worker"]:
                nodename = args[args.index("--celery-hostname") + 1].replace("%h", socket.gethostname())
                hostnames[args[args.index("--queues") + 1]] = nodename
                own["RECPIPE_TEST_WORKER_HOSTNAME"] = nodename
                args = [*args, "--skip-serve-logs"]
            home.start(name, *args, env=own)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/api/v2/monitor/health"), timeout=180,
                 what="the api-server", on_tick=home.check_running)

        def dags_parsed():
            with meta.connect() as conn:
                return conn.execute(sa.text("SELECT count(*) FROM serialized_dag")).scalar_one() >= 2

        wait_for(dags_parsed, timeout=180, what="the DAGs to be parsed", on_tick=home.check_running)
        for dag_id in ("recpipe_ingest", "recpipe_nightly"):  # compose creates DAGs paused
            home.airflow("dags", "unpause", dag_id)
        yield home, meta, hostnames, port
    finally:
        home.stop_all()
        meta.dispose()
        drop_meta()


def test_ingest_backfill_on_celery(celery_cluster, engine):
    """`airflow backfill create` over three days: three runs, each ingesting its own day."""
    home, meta, hostnames, _ = celery_cluster
    started = time.monotonic()
    # Paused, the nightly gets no ratings events: they would start nights on three days of data.
    home.airflow("dags", "pause", "recpipe_nightly")
    home.airflow("backfill", "create", "--dag-id", "recpipe_ingest",
                 "--from-date", "2000-05-10", "--to-date", "2000-05-12")

    def backfill_done():
        with meta.connect() as conn:
            states = conn.execute(sa.text(
                "SELECT state FROM dag_run WHERE dag_id = 'recpipe_ingest' AND run_type = 'backfill'")).scalars().all()
        return len(states) == 3 and all(s in ("success", "failed") for s in states) and states

    states = wait_for(backfill_done, timeout=300, interval=3, what="the backfill", on_tick=home.check_running)
    home.airflow("dags", "unpause", "recpipe_nightly")
    print(f"\nbackfill of 3 ingest intervals: {time.monotonic() - started:.0f}s")
    assert states == ["success"] * 3, home.task_logs("recpipe_ingest") + home.log_tail("airflow-worker")
    with engine.connect() as conn:
        intervals = conn.execute(sa.text(
            "SELECT interval_start, interval_end FROM ingest_batches ORDER BY interval_start")).all()
    assert [(s.isoformat()[:10], e.isoformat()[:10]) for s, e in intervals] == [
        ("2000-05-10", "2000-05-11"), ("2000-05-11", "2000-05-12"), ("2000-05-12", "2000-05-13")]
    with meta.connect() as conn:
        hosts = conn.execute(sa.text(
            "SELECT DISTINCT hostname FROM task_instance WHERE dag_id = 'recpipe_ingest'")).scalars().all()
    assert hosts == [hostnames["default"]]
    with meta.connect() as conn:  # each run marked the ratings Asset as updated
        events = conn.execute(sa.text(
            "SELECT count(*) FROM asset_event e JOIN asset a ON a.id = e.asset_id"
            " WHERE a.name = 'recpipe_ratings'")).scalar_one()
    assert events == 3


def test_nightly_on_celery_trains_on_the_gpu_worker(celery_cluster, engine, database_url, synthetic_dir, tmp_path):
    from recpipe import pipeline
    from recpipe.config import Settings

    home, meta, hostnames, port = celery_cluster
    started = time.monotonic()
    pipeline.ingest_interval(
        Settings(database_url=database_url, source_dir=synthetic_dir, home=tmp_path / "recpipe-home"), None, None)
    # Routing is under test, not model quality: one epoch, the gate opened wide.
    lenient = {"must_beat_baseline": False, "min_test_users": 1, "floors": {
        "autoint": {"auc": 0.0, "ndcg_at_10": 0.0, "recall_at_10": 0.0},
        "gru4rec": {"ndcg_at_10": 0.0, "recall_at_10": 0.0}}}
    conf = {"as_of": AS_OF, "epochs": 1, "gate_overrides": lenient}
    home.airflow("dags", "trigger", "recpipe_nightly", "--run-id", "celery_test", "--conf", json.dumps(conf))
    run_started = time.monotonic()

    def run_finished():
        with meta.connect() as conn:
            state = conn.execute(sa.text(
                "SELECT state FROM dag_run WHERE dag_id = 'recpipe_nightly' AND run_id = 'celery_test'")).scalar()
        return state if state in ("success", "failed") else None

    state = wait_for(run_finished, timeout=RUN_TIMEOUT_S, interval=5, what="the recpipe_nightly run",
                     on_tick=home.check_running)
    run_s = time.monotonic() - run_started
    with meta.connect() as conn:
        tis = {r.task_id: r for r in conn.execute(sa.text(
            "SELECT task_id, state, queue, hostname, start_date, end_date FROM task_instance"
            " WHERE dag_id = 'recpipe_nightly' AND run_id = 'celery_test'"))}
    print(f"\nrecpipe_nightly run {state} in {run_s:.0f}s (ingest and trigger: {run_started - started:.0f}s)")
    for ti in sorted(tis.values(), key=lambda t: (t.start_date is None, t.start_date)):
        took = (ti.end_date - ti.start_date).total_seconds() if ti.start_date and ti.end_date else None
        print(f"  {ti.task_id:18} {ti.state:8} queue={ti.queue:8} host={ti.hostname} {took and round(took, 1)}s")
    assert state == "success", "\n".join(
        [home.log_tail("airflow-worker", 3000), home.log_tail("airflow-worker-gpu", 3000), home.log_tail("airflow-scheduler", 3000)]
    )
    for task_id in ("train_autoint", "train_gru4rec", "refit_autoint", "refit_gru4rec"):
        assert tis[task_id].queue == "gpu" and tis[task_id].hostname == hostnames["gpu"], task_id
    for task_id in ("rebuild_encodings", "rebuild_sessions", "evaluate", "gate", "publish", "notify"):
        assert tis[task_id].queue == "default" and tis[task_id].hostname == hostnames["default"], task_id
    assert all(ti.state == "success" for ti in tis.values())

    # The same, as the Airflow CLI reports it.
    states = json.loads(home.airflow(
        "tasks", "states-for-dag-run", "recpipe_nightly", "celery_test", "-o", "json").stdout)
    assert {s["task_id"]: s["state"] for s in states} == {t: "success" for t in tis}

    with engine.connect() as conn:
        runs = conn.execute(sa.text("SELECT model, status FROM model_runs ORDER BY run_id")).all()
        published = conn.execute(sa.text("SELECT model FROM published_runs ORDER BY model")).scalars().all()
    assert {r.model for r in runs} >= {"autoint", "gru4rec"}
    assert {"autoint", "gru4rec", "popularity"} <= set(published)
