"""Hardening of the middle: a dry run changes nothing live, bad parameters stop before
anything runs, no command prints the database password, database outages end in one line."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import psycopg2
import pytest
import sqlalchemy as sa

from recpipe import db, pipeline, runs
from recpipe.db import read_frame
from recpipe.ingest import ingest

NIGHT = datetime(2000, 12, 1, tzinfo=timezone.utc)
PASSWORD = "Pl4nted-S3cret"
FAST = {"autoint": {"batch_size": 64, "embed_dim": 8, "dnn_units": [16]},
        "gru4rec": {"batch_size": 16, "hidden": 16, "embedding_dim": 16}}
OPEN_GATE = {"min_test_users": 1, "must_beat_baseline": False}


def recpipe(*args, env, timeout=900):
    return subprocess.run([sys.executable, "-m", "recpipe.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _env(settings, url=None) -> dict:
    return {**os.environ, "RECPIPE_DATABASE_URL": url or settings.database_url, "RECPIPE_HOME": str(settings.home),
            "RECPIPE_SOURCE_DIR": str(settings.source_dir)}


def _live_state(engine):
    with engine.connect() as conn:
        return (conn.execute(sa.text("SELECT run_id, status, artifact_path, artifact_sha256 FROM model_runs"
                                     " WHERE NOT dry_run ORDER BY run_id")).all(),
                conn.execute(sa.text("SELECT model, run_id FROM published_runs ORDER BY model")).all(),
                conn.execute(sa.text("SELECT md5(string_agg(run_id || ':' || user_id || ':' || movie_id, ','"
                                     " ORDER BY run_id, user_id, rank)) FROM recommendations")).scalar())


def test_a_dry_run_of_a_published_night_leaves_live_runs_and_lists_alone(engine, settings):
    ingest(engine, settings.source_dir)
    pipeline.run_nightly(settings, pipeline.make_plan(settings, NIGHT, epochs=1, model_overrides=FAST,
                                                      gate_overrides=OPEN_GATE))
    before = _live_state(engine)
    assert before[1], "the real night published lists"
    with engine.connect() as conn:
        alerts_before = conn.execute(sa.text("SELECT count(*) FROM alerts")).scalar()
    dry = pipeline.run_nightly(settings, pipeline.make_plan(
        settings, NIGHT, epochs=1, model_overrides=FAST, dry_run=True,
        gate_overrides={"floors": {"autoint": {"ndcg_at_10": 2.0}}}))
    assert _live_state(engine) == before
    dry_runs = [runs.get(engine, r) for r in dry["evaluation"]["run_ids"]]
    assert all(r.dry_run for r in dry_runs) and not dry["publication"]["published"]
    assert {r.run_id for r in dry_runs}.isdisjoint({row[0] for row in before[0]})
    with engine.connect() as conn:  # a dry run's rejections are recorded on its runs, never alerted
        assert conn.execute(sa.text("SELECT count(*) FROM alerts")).scalar() == alerts_before
        assert conn.execute(sa.text("SELECT count(*) FROM model_metrics_history WHERE run_id = ANY(:ids)"),
                            {"ids": [r.run_id for r in dry_runs]}).scalar() == 0


def test_bad_parameters_are_one_line_and_exit_2_before_training(engine, settings):
    ingest(engine, settings.source_dir)
    env = _env(settings)
    for args, expected in [
        (("run", "--as-of", "2000-12-01", "--gate", '{"min_test_users": "abc"}'), "min_test_users"),
        (("train", "--model", "autoint", "--as-of", "2000-12-01", "--epochs", "-1"), "epochs"),
        (("run", "--as-of", "2000-12-01", "--overrides", '{"autoint": {"embed_dimm": 4}}'), "embed_dimm"),
    ]:
        done = recpipe(*args, env=env)
        assert done.returncode == 2, (args, done.stderr[-2000:])
        assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM model_runs")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM artifacts")).scalar() == 0


def test_no_command_prints_the_database_password(engine, settings):
    """PostgreSQL here trusts local connections, so a planted password still connects."""
    ingest(engine, settings.source_dir)
    url = sa.engine.make_url(settings.database_url).set(password=PASSWORD).render_as_string(hide_password=False)
    env = _env(settings, url)
    outputs = [recpipe("db", "url", env=env), recpipe("runs", "list", env=env),
               recpipe("-v", "run", "--as-of", "2000-12-01", "--epochs", "1", "--dry-run", "--overrides",
                       '{"autoint": {"batch_size": 64, "embed_dim": 8, "dnn_units": [16]},'
                       ' "gru4rec": {"batch_size": 16, "hidden": 16, "embedding_dim": 16}}', env=env)]
    for done in outputs:
        assert done.returncode == 0, done.stderr[-2000:]
        assert PASSWORD not in done.stdout + done.stderr
    assert "***" in outputs[0].stdout
    from recpipe.main import report

    text = report(engine, settings.with_(database_url=url), NIGHT, url)
    assert PASSWORD not in text and "PGPASSWORD" in text


def test_a_stopped_database_is_one_clear_line(settings):
    env = _env(settings, "postgresql+psycopg2://postgres@127.0.0.1:1/recpipe")
    done = recpipe("runs", "list", env=env)
    assert done.returncode == 1
    assert "database is unreachable" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_artifacts_prune_removes_only_what_no_run_uses(engine, settings):
    from recpipe import artifacts

    ingest(engine, settings.source_dir)
    plan = pipeline.make_plan(settings, NIGHT, models=("popularity",))
    first = pipeline.train_model(settings, plan, "popularity", pipeline.night_inputs(None, None))
    replaced = artifacts.get(engine, settings, first["artifact_id"]).path
    second = pipeline.train_model(settings, plan, "popularity", pipeline.night_inputs(None, None))  # a rerun
    debris = artifacts.new_dir(settings, "autoint", NIGHT)  # a killed training's folder
    (debris / "autoint.keras").write_bytes(b"half written")
    env = _env(settings)
    listed = recpipe("artifacts", "prune", "--dry-run", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert sorted(json.loads(listed.stdout)) == sorted([str(replaced), str(debris)])
    assert replaced.exists() and debris.exists()
    assert recpipe("artifacts", "prune", env=env).returncode == 0
    assert not replaced.exists() and not debris.exists()
    live = runs.get(engine, second["run_id"])
    with live.open_artifact(settings) as bundle:  # the run in use still loads
        assert bundle.read_text("popularity.json")


@pytest.fixture
def engines(settings, caplog):
    """recpipe's engine on the test database, an autocommit one that ends its sessions, and
    the pool's log watched."""
    engine = db.make_engine(settings)
    admin = sa.create_engine(settings.database_url, isolation_level="AUTOCOMMIT")
    caplog.set_level(logging.WARNING, logger="sqlalchemy.pool")
    yield engine, admin
    engine.dispose()
    admin.dispose()


def _pool_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("sqlalchemy.pool")]


def test_a_connection_lost_in_a_copy_is_invalidated_not_reset(engines, caplog):
    """COPY runs on the driver's cursor, where SQLAlchemy cannot see a lost server; the
    pool must drop that connection instead of logging a failed reset beside our one line."""
    engine, admin = engines
    with engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        _terminate(admin, pid)
        with pytest.raises((psycopg2.OperationalError, psycopg2.InterfaceError)):
            read_frame(conn, "SELECT generate_series(1, 10) AS n")
        assert conn.invalidated
    assert not _pool_records(caplog), caplog.text
    with engine.connect() as conn:  # the pool hands out a fresh connection afterwards
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1


def test_a_server_shutdown_while_copy_streams_raises_once_and_prints_nothing(engines, capfd, caplog):
    """psycopg2 2.9 prints a SystemError to stderr when the server ends a COPY it is
    streaming (a fast shutdown or pg_terminate_backend), then raises: the CLI's one line
    about the lost database must stand alone."""
    engine, admin = engines
    with engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        terminate = threading.Timer(1.0, lambda: _terminate(admin, pid))
        terminate.start()
        try:
            with pytest.raises((psycopg2.OperationalError, psycopg2.InterfaceError)):
                read_frame(conn, "SELECT g, pg_sleep(0.1) FROM generate_series(1, 100) AS g")
        finally:
            terminate.join()
        assert conn.invalidated  # never reset (rolled back) by the pool: the server is gone
    assert not _pool_records(caplog), caplog.text
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == "", captured.err
    assert sys.excepthook is sys.__excepthook__  # the driver's printer is put back afterwards


def test_a_connection_whose_server_went_away_idle_is_dropped_quietly_on_return(engines, capfd, caplog):
    """The server can go between a connection's last statement and its return to the pool:
    the pool's rollback then fails. recpipe's engine drops that connection without the
    traceback SQLAlchemy's own reset logs, and hands out a fresh one next."""
    engine, admin = engines
    with engine.connect() as conn:
        with conn.connection.dbapi_connection.cursor() as cur:  # a transaction SQLAlchemy never saw
            cur.execute("SELECT pg_backend_pid()")
            pid = cur.fetchone()[0]
        _terminate(admin, pid)
        time.sleep(0.2)
    assert not _pool_records(caplog), caplog.text
    assert capfd.readouterr().err == ""
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT pg_backend_pid()").scalar() != pid


def _terminate(admin: sa.Engine, pid: int) -> None:
    with admin.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT pg_terminate_backend({pid})").scalar()
