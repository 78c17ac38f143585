"""Data-aware scheduling: the nightly runs for a night only when that night's ingest succeeded.

Fast tests: the night of a run per run type (resolve_night, on Airflow's own run and
asset-event models) and the ingest ledger's coverage check (real PostgreSQL).
End to end on real Airflow (api-server, dag-processor, scheduler with the LocalExecutor,
a scratch PostgreSQL metadata database): an ingest that fails (source missing) gives no
nightly run, and a backfilled night whose ingest failed is skipped; an ingest that
succeeds triggers the nightly for the night its interval ends.
"""
from __future__ import annotations

import json
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from airflow_harness import DAGS_FOLDER, AirflowHome, free_port, http_ok, scratch_postgres_database, wait_for

UTC = timezone.utc


@pytest.fixture(scope="module")
def utils():
    sys.path.insert(0, str(DAGS_FOLDER))
    try:
        import _recpipe_dag_utils

        yield _recpipe_dag_utils
    finally:
        sys.path.remove(str(DAGS_FOLDER))


def _dag_run(run_type: str, *, start=None, end=None, run_after=None, events=()):
    from airflow.sdk.api.datamodels._generated import DagRun

    return DagRun(dag_id="recpipe_nightly", run_id=f"{run_type}__test", logical_date=start, data_interval_start=start,
                  data_interval_end=end, run_after=run_after or end or datetime(2000, 6, 1, tzinfo=UTC),
                  start_date=None, end_date=None, run_type=run_type, state="running",
                  consumed_asset_events=list(events), partition_key=None)


def _event(extra: dict, run_id: str = "backfill__x"):
    from airflow.sdk.api.datamodels._generated import AssetEventDagRunReference, AssetReferenceAssetEventDagRun

    return AssetEventDagRunReference(
        asset=AssetReferenceAssetEventDagRun(name="recpipe_ratings", uri="postgres://h:5432/d/public/ratings",
                                             extra={}),
        extra=extra, source_task_id="ingest", source_dag_id="recpipe_ingest", source_run_id=run_id,
        source_map_index=-1, source_aliases=[], timestamp=datetime(2026, 1, 1, tzinfo=UTC))


def _context(dag_run, params=None) -> dict:
    """A task context as the task runner builds it (the keys night_of reads)."""
    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor

    return {"dag_run": dag_run, "params": params or {"as_of": None},
            "data_interval_start": dag_run.data_interval_start, "data_interval_end": dag_run.data_interval_end,
            "logical_date": dag_run.logical_date,
            "triggering_asset_events": TriggeringAssetEventsAccessor.build(
                AssetEventDagRunReferenceResult.from_asset_event_dag_run_reference(e)
                for e in dag_run.consumed_asset_events)}


D1, D2, D3 = (datetime(2000, 6, d, tzinfo=UTC) for d in (1, 2, 3))


def test_night_of_an_asset_triggered_run_is_its_ingest_interval_end(utils):
    events = [_event({"interval_start": D1.isoformat(), "interval_end": D2.isoformat()}, "backfill__a"),
              _event({"interval_start": D2.isoformat(), "interval_end": D3.isoformat()}, "backfill__b")]
    night, source, interval = utils.resolve_night(_context(_dag_run("asset_triggered", events=events)))
    assert night == D3 and interval == (D2, D3)  # events queued while a night ran: the newest
    assert "recpipe_ingest/backfill__b" in source and "2 queued events" in source


def test_night_of_an_asset_event_without_interval_is_refused(utils):
    ctx = _context(_dag_run("asset_triggered", events=[_event({"interval_start": None, "interval_end": None})]))
    with pytest.raises(ValueError, match="as_of"):
        utils.resolve_night(ctx)


@pytest.mark.parametrize("run_type", ["backfill", "manual", "scheduled"])
def test_night_of_a_run_with_a_data_interval_is_its_end(utils, run_type):
    night, _, interval = utils.resolve_night(_context(_dag_run(run_type, start=D1, end=D2)))
    assert night == D2 and interval == (D1, D2)


def test_as_of_param_wins_over_every_run_type(utils):
    for dag_run in (_dag_run("backfill", start=D1, end=D2),
                    _dag_run("asset_triggered", events=[_event({"interval_start": D1.isoformat(),
                                                                 "interval_end": D2.isoformat()})])):
        night, source, interval = utils.resolve_night(_context(dag_run, {"as_of": "2003-03-01T00:00:00Z"}))
        assert night == datetime(2003, 3, 1, tzinfo=UTC) and interval is None and "as_of" in source


def test_manual_run_without_data_interval_uses_run_after(utils):
    after = datetime(2000, 12, 1, 14, 30, tzinfo=UTC)
    night, _, interval = utils.resolve_night(_context(_dag_run("manual", run_after=after)))
    assert night == after and interval is None


def test_ratings_asset_uri_names_the_recpipe_database_without_credentials(utils):
    assert utils.ratings_asset_uri("postgresql+psycopg2://u:secret@db.example:6432/recs?x=1") == \
        "postgres://db.example:6432/recs/public/ratings"
    assert utils.ratings_asset_uri(None, "postgresql://recpipe:pw@postgres:5432/recpipe") == \
        "postgres://postgres:5432/recpipe/public/ratings"
    assert utils.ratings_asset_uri(None, '{"conn_type": "postgres"}') == "postgres://postgres:5432/recpipe/public/ratings"


def _busy_days(synthetic_dir, n: int):
    """The first of the n consecutive UTC days holding the most synthetic ratings."""
    lines = (synthetic_dir / "ratings.dat").read_text(encoding="latin-1").splitlines()
    per_day = Counter(datetime.fromtimestamp(int(line.split("::")[3]), UTC).date() for line in lines)
    first = max(per_day, key=lambda d: min(per_day[d + timedelta(days=i)] for i in range(n)))
    return datetime(first.year, first.month, first.day, tzinfo=UTC)


def test_interval_ingested_reads_the_ledger(engine, synthetic_dir):
    from recpipe.ingest import ingest, interval_ingested

    day = _busy_days(synthetic_dir, 2)
    one, two = timedelta(days=1), timedelta(days=2)
    assert not interval_ingested(engine, day, day + one)  # nothing loaded yet
    ingest(engine, synthetic_dir, day, day + timedelta(hours=12))
    assert not interval_ingested(engine, day, day + one)  # half a day
    ingest(engine, synthetic_dir, day + timedelta(hours=12), day + one)
    assert interval_ingested(engine, day, day + one)  # two batches cover it together
    assert not interval_ingested(engine, day, day + two)
    ingest(engine, synthetic_dir)  # --all covers every interval
    assert interval_ingested(engine, day + one, day + two)


def test_night_of_skips_a_backfilled_night_that_was_never_ingested(utils, engine, settings, synthetic_dir,
                                                                    monkeypatch):
    from airflow.sdk.exceptions import AirflowSkipException

    from recpipe.ingest import ingest

    monkeypatch.setenv("RECPIPE_DATABASE_URL", settings.database_url)
    day = _busy_days(synthetic_dir, 2)
    ingest(engine, synthetic_dir, day, day + timedelta(days=1))
    loaded = _context(_dag_run("backfill", start=day, end=day + timedelta(days=1)))
    assert utils.night_of(loaded) == day + timedelta(days=1)
    missing = _context(_dag_run("backfill", start=day + timedelta(days=1), end=day + timedelta(days=2)))
    with pytest.raises(AirflowSkipException, match="never loaded successfully"):
        utils.night_of(missing)
    manual = _context(_dag_run("manual", start=day + timedelta(days=1), end=day + timedelta(days=2)))
    assert utils.night_of(manual) == day + timedelta(days=2)  # the operator's choice: warned, planned


# ---------------------------------------------------------------------------------------
# End to end: scheduler + dag-processor + api-server, LocalExecutor
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def airflow_local(database_url, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("schedule")
    server = sa.engine.make_url(database_url).set(database="postgres").render_as_string(hide_password=False)
    meta_url, drop_meta = scratch_postgres_database(server, prefix="airflow_schedule")
    port = free_port()
    source = tmp_path / "source"  # absent until the test writes it: the first ingest fails
    home = AirflowHome.create(
        tmp_path / "airflow",
        metadata_url=meta_url,
        recpipe_env={
            "RECPIPE_DATABASE_URL": database_url,
            "RECPIPE_SOURCE_DIR": str(source),
            "RECPIPE_HOME": str(tmp_path / "recpipe-home"),
            "RECPIPE_TASK_RETRIES": "0",
            # Start dates in the future: no scheduled ingest of today; every run here is the test's.
            "RECPIPE_INGEST_START": "2100-01-01",
            "RECPIPE_NIGHTLY_START": "2100-01-01",
        },
        extra={
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
        },
    )
    home.migrate()
    meta = sa.create_engine(meta_url)
    try:
        home.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1")
        home.start("dag-processor", "dag-processor")
        home.start("scheduler", "scheduler")
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/api/v2/monitor/health"), timeout=180,
                 what="the api-server", on_tick=home.check_running)

        def dags_parsed():
            with meta.connect() as conn:
                return conn.execute(sa.text("SELECT count(*) FROM serialized_dag")).scalar_one() >= 2

        wait_for(dags_parsed, timeout=180, what="the DAGs to be parsed", on_tick=home.check_running)
        yield home, meta, source
    finally:
        home.stop_all()
        meta.dispose()
        drop_meta()


def _runs(meta, dag_id: str) -> list:
    with meta.connect() as conn:
        return conn.execute(sa.text(
            "SELECT run_id, run_type, state, data_interval_start, data_interval_end FROM dag_run"
            " WHERE dag_id = :d ORDER BY id"), {"d": dag_id}).all()


def _finished(meta, dag_id: str, run_type: str, count: int = 1):
    runs = [r for r in _runs(meta, dag_id) if r.run_type == run_type]
    return runs if len(runs) >= count and all(r.state in ("success", "failed") for r in runs) else None


def _backfills_completed(meta, dag_id: str) -> bool:
    with meta.connect() as conn:
        return not conn.execute(sa.text("SELECT count(*) FROM backfill WHERE dag_id = :d AND completed_at IS NULL"),
                                {"d": dag_id}).scalar()


def _task_state(meta, dag_id: str, run_id: str, task_id: str) -> str | None:
    with meta.connect() as conn:
        return conn.execute(sa.text(
            "SELECT state FROM task_instance WHERE dag_id = :d AND run_id = :r AND task_id = :t"),
            {"d": dag_id, "r": run_id, "t": task_id}).scalar()


@pytest.mark.slow
def test_nightly_runs_only_for_nights_whose_ingest_succeeded(airflow_local, engine, database_url, synthetic_dir):
    home, meta, source = airflow_local
    day = _busy_days(synthetic_dir, 2)
    d1, d2 = day.date().isoformat(), (day + timedelta(days=1)).date().isoformat()
    started = time.monotonic()

    # 1. The ingest of day 1 fails: its source folder is missing.
    home.airflow("backfill", "create", "--dag-id", "recpipe_ingest", "--from-date", d1, "--to-date", d1)
    (failed,) = wait_for(lambda: _finished(meta, "recpipe_ingest", "backfill"), timeout=240, interval=3,
                         what="the failing ingest", on_tick=home.check_running)
    assert failed.state == "failed", home.log_tail("scheduler")
    failed_s = time.monotonic() - started

    # 2. A backfill of that night: the plan is skipped, nothing is trained.
    home.airflow("backfill", "create", "--dag-id", "recpipe_nightly", "--from-date", d1, "--to-date", d1)
    (skipped,) = wait_for(lambda: _finished(meta, "recpipe_nightly", "backfill"), timeout=240, interval=3,
                          what="the nightly backfill of the failed night", on_tick=home.check_running)
    assert (skipped.data_interval_start, skipped.data_interval_end) == (day, day + timedelta(days=1))
    assert _task_state(meta, "recpipe_nightly", skipped.run_id, "plan") == "skipped"
    assert _task_state(meta, "recpipe_nightly", skipped.run_id, "train_popularity") == "skipped"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM model_runs")).scalar_one() == 0
    # No ratings event, so no asset-triggered nightly run (the scheduler had the time to make one).
    with meta.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM asset_event")).scalar_one() == 0
    assert [r for r in _runs(meta, "recpipe_nightly") if r.run_type == "asset_triggered"] == []
    skipped_s = time.monotonic() - started

    # 3. The source arrives; the ingest of day 2 succeeds and triggers the nightly of its night.
    source.mkdir()
    for name in ("ratings.dat", "movies.dat", "users.dat"):
        (source / name).write_bytes((synthetic_dir / name).read_bytes())
    # Airflow allows one running backfill per DAG: the scheduler closes day 1's a loop after its run.
    wait_for(lambda: _backfills_completed(meta, "recpipe_ingest"), timeout=120, interval=2,
             what="the ingest backfill of day 1 to complete", on_tick=home.check_running)
    home.airflow("backfill", "create", "--dag-id", "recpipe_ingest", "--from-date", d2, "--to-date", d2)
    (triggered,) = wait_for(lambda: [r for r in _runs(meta, "recpipe_nightly") if r.run_type == "asset_triggered"],
                            timeout=240, interval=3, what="the asset-triggered nightly run",
                            on_tick=home.check_running)
    wait_for(lambda: _task_state(meta, "recpipe_nightly", triggered.run_id, "plan") in ("success", "failed"),
             timeout=180, interval=3, what="the triggered run's plan", on_tick=home.check_running)
    home.airflow("dags", "pause", "recpipe_nightly")  # the night's training is not under test here
    triggered_s = time.monotonic() - started
    print(f"\nfailed ingest {failed_s:.0f}s, skipped nightly backfill {skipped_s:.0f}s,"
          f" triggered nightly planned {triggered_s:.0f}s")
    assert _task_state(meta, "recpipe_nightly", triggered.run_id, "plan") == "success", home.log_tail("scheduler")
    with meta.connect() as conn:
        plan = conn.execute(sa.text(
            "SELECT value FROM xcom WHERE dag_id = 'recpipe_nightly' AND task_id = 'plan' AND run_id = :r"
            " AND key = 'return_value'"),
            {"r": triggered.run_id}).scalar_one()
        (event,) = conn.execute(sa.text(
            "SELECT a.name, a.uri, e.extra, e.source_dag_id FROM asset_event e JOIN asset a ON a.id = e.asset_id"
        )).all()
    plan = plan if isinstance(plan, dict) else json.loads(plan)
    assert plan["night"] == (day + timedelta(days=2)).isoformat()  # the end of the ingested interval
    extra = event.extra if isinstance(event.extra, dict) else json.loads(event.extra)
    assert (extra["interval_start"], extra["interval_end"]) == (
        (day + timedelta(days=1)).isoformat(), (day + timedelta(days=2)).isoformat())
    db = sa.engine.make_url(database_url)
    assert event.name == "recpipe_ratings" and event.source_dag_id == "recpipe_ingest"
    assert event.uri == f"postgres://{db.host}:{db.port or 5432}/{db.database}/public/ratings"
    with meta.connect() as conn:  # what the UI's backfill button and `backfill create` require
        periodic, allowed = conn.execute(sa.text(
            "SELECT timetable_periodic, allowed_run_types FROM dag WHERE dag_id = 'recpipe_nightly'")).one()
    allowed = allowed if isinstance(allowed, list) else json.loads(allowed)
    assert periodic and "backfill" in allowed and "scheduled" not in allowed
    # Still no run for the night whose ingest failed.
    assert [r.run_type for r in _runs(meta, "recpipe_nightly")] == ["backfill", "asset_triggered"]
    logs = "".join(p.read_text(errors="replace") for p in (home.root / "logs").glob(
        "dag_id=recpipe_nightly/**/task_id=plan/**/*.log"))
    assert f"plans the night {(day + timedelta(days=2)).isoformat()}" in logs
    assert "never loaded successfully" in logs
    ingest_logs = "".join(p.read_text(errors="replace") for p in (home.root / "logs").glob(
        "dag_id=recpipe_ingest/**/*.log"))
    assert f"loads [{(day + timedelta(days=1)).isoformat()}, {(day + timedelta(days=2)).isoformat()})" in ingest_logs
