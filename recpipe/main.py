"""The README's main job (`make run`): set up, ingest, and run the nightly pipeline once
through Airflow itself (`airflow dags test recpipe_nightly`).

With no RECPIPE_DATABASE_URL it uses the embedded PostgreSQL under RECPIPE_HOME (default
./.recpipe); with no RECPIPE_SOURCE_DIR it downloads MovieLens-1M (checksums verified).
Airflow runs from RECPIPE_HOME/airflow with its own standalone (SQLite) metadata store.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from recpipe.config import REPO_ROOT, Settings
from recpipe.source import SourceError


def ensure_source(settings: Settings) -> Settings:
    if settings.source_dir is not None:
        return settings
    from recpipe.source import download_ml1m

    print("RECPIPE_SOURCE_DIR is not set: downloading MovieLens-1M ...", flush=True)
    return settings.with_(source_dir=download_ml1m(settings.home / "data"))


def airflow_env(settings: Settings, database_url: str) -> dict[str, str]:
    home = settings.home / "airflow"
    home.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW__")},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
        "RECPIPE_DATABASE_URL": database_url,
        "RECPIPE_HOME": str(settings.home),
        "RECPIPE_SOURCE_DIR": str(settings.source_dir),
        "RECPIPE_TASK_RETRIES": "0",  # a one-off run reports its failure instead of retrying
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def run_airflow(env: dict[str, str], *args: str, log_path: Path) -> float:
    """Run the Airflow CLI, its output to log_path; raises with the log's tail on failure."""
    started = time.perf_counter()
    with open(log_path, "w") as log:
        done = subprocess.run([str(Path(sys.executable).parent / "airflow"), *args], env=env,
                              stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        tail = log_path.read_text(errors="replace")[-6000:]
        raise RuntimeError(f"airflow {' '.join(args)} failed ({done.returncode}); log {log_path}:\n{tail}")
    return time.perf_counter() - started


def nightly_through_airflow(settings: Settings, database_url: str, as_of: datetime, epochs: int | None) -> dict:
    env = airflow_env(settings, database_url)
    logs = settings.home / "airflow"
    timings = {"airflow_db_migrate": run_airflow(env, "db", "migrate", log_path=logs / "db-migrate.log")}
    conf = {"as_of": as_of.isoformat(), "epochs": epochs}
    last_check = _last_data_check(settings, database_url)
    print(f"running recpipe_nightly through Airflow as of {as_of:%Y-%m-%d %H:%M}Z"
          f" (log: {logs / 'nightly.log'}) ...", flush=True)
    try:
        timings["airflow_dags_test"] = run_airflow(
            env, "dags", "test", "recpipe_nightly", as_of.date().isoformat(), "--conf", json.dumps(conf),
            log_path=logs / "nightly.log",
        )
    except RuntimeError:
        _raise_data_gate(settings, database_url, as_of, last_check, logs / "nightly.log")
        raise
    state, tasks = last_dag_run(logs / "airflow.db", "recpipe_nightly")
    if state != "success":
        failed = [t for t, s, _ in tasks if s != "success"]
        if "check_data" in failed:
            _raise_data_gate(settings, database_url, as_of, last_check, logs / "nightly.log")
        raise RuntimeError(f"recpipe_nightly ended {state}; tasks not successful: {failed}; see {logs / 'nightly.log'}")
    timings.update({f"task {task}": seconds or 0.0 for task, _, seconds in tasks})
    return timings


def _last_data_check(settings: Settings, database_url: str) -> int:
    import sqlalchemy as sa

    from recpipe.db import make_engine

    with make_engine(settings.with_(database_url=database_url)).connect() as conn:
        return conn.execute(sa.text("SELECT coalesce(max(check_id), 0) FROM data_checks")).scalar_one()


def _raise_data_gate(settings: Settings, database_url: str, as_of: datetime, after_check: int,
                     log_path: Path) -> None:
    """When this run's data gate stopped the night, fail with its one line (not the log's tail)."""
    from recpipe.db import make_engine
    from recpipe.gate import stopped_check

    check = stopped_check(make_engine(settings.with_(database_url=database_url)), as_of, any_context=True)
    if check is not None and check.check_id > after_check:
        raise RuntimeError(f"{check.message()}; see {log_path}")


def last_dag_run(metadata_db: Path, dag_id: str) -> tuple[str, list[tuple[str, str, float]]]:
    """State of the newest run of dag_id and (task_id, state, seconds) of its tasks, in start order."""
    import sqlite3

    with sqlite3.connect(metadata_db) as conn:
        run_id, state = conn.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)).fetchone()
        tasks = conn.execute(
            "SELECT task_id, state, duration FROM task_instance WHERE dag_id = ? AND run_id = ?"
            " ORDER BY start_date", (dag_id, run_id)).fetchall()
    return state, tasks


def report(engine, settings: Settings, as_of: datetime, database_url: str) -> str:
    """What an operator reads after the run: decisions, metrics, task times, where to look."""
    import sqlalchemy as sa

    from recpipe import runs

    lines = []
    for run in runs.of_night(engine, as_of):
        m = run.production_metrics
        verdict = run.status
        if run.status == "rejected":
            verdict += ": " + "; ".join(r["message"] for r in run.gate_reasons)
        lines.append(f"  {run.model:<11} run {run.run_id:<4} ndcg@10 {m.get('ndcg_at_10', float('nan')):.4f}"
                     f"  recall@10 {m.get('recall_at_10', float('nan')):.4f}"
                     f"  hit@10 {m.get('hit_rate_at_10', float('nan')):.4f}"
                     f"  ({m.get('users', 0)} test users)  -> {verdict}")
    with engine.connect() as conn:
        live = conn.execute(sa.text(
            "SELECT model, count(DISTINCT user_id) AS users, count(*) AS rows FROM recommendations_current"
            " WHERE as_of = :t GROUP BY model ORDER BY model"), {"t": as_of}).all()
        sample = conn.execute(sa.text(
            "SELECT rank, title FROM recommendations_default WHERE user_id = 1 ORDER BY rank")).all()
    lines.append("published lists: " + (", ".join(f"{m} {u} users / {r} rows" for m, u, r in live) or "none"))
    if sample:
        lines.append("user 1's top-10 (recommendations_default): " + "; ".join(f"{r}. {t}" for r, t in sample))
    from recpipe.report import latest_report

    night_report = latest_report(engine, settings, as_of)
    lines.append(f"night report: {night_report or 'not written (see the notify task log)'}"
                 f"  (again: recpipe report --night {as_of:%Y-%m-%d})")
    url = _libpq_url(database_url)
    lines += [
        "",
        "where to look:" + (" (password hidden: give it with PGPASSWORD)" if "***" in url else ""),
        f"  psql '{url}' -v user_id=1 -f sql/queries/user_top10.sql",
        f"  psql '{url}' -f sql/queries/metric_history.sql",
        "  RECPIPE_DATABASE_URL=embedded .venv/bin/recpipe runs list   # the runs registry"
        if settings.embedded else "  .venv/bin/recpipe runs list        # the runs registry",
        f"  Airflow task logs: {settings.home / 'airflow' / 'logs'}",
    ]
    return "\n".join(lines)


def _libpq_url(url: str) -> str:
    """The URL for psql, its password masked (never printed)."""
    from recpipe.db import safe_url

    return safe_url(url).replace("postgresql+psycopg2://", "postgresql://", 1)


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    if not settings.database_url:
        settings = settings.with_(embedded=True)  # the main job asks for the embedded server
    started = time.perf_counter()
    try:
        settings = ensure_source(settings)
        from recpipe import db, pipeline
        from recpipe.cli import default_as_of

        database_url = db.resolve_database_url(settings)
        engine = db.make_engine(settings)
        applied = db.upgrade(engine)
        print(f"database: {engine.url.render_as_string(hide_password=True)} ({len(applied)} migration(s) applied)",
              flush=True)
        ingest_started = time.perf_counter()
        print(pipeline.ingest_interval(settings, None, None)["summary"], flush=True)
        timings = {"ingest": time.perf_counter() - ingest_started}
        as_of = default_as_of(settings)
        timings.update(nightly_through_airflow(settings, database_url, as_of, settings.epochs))
    except SourceError as exc:
        print(f"recpipe: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"recpipe: {exc}", file=sys.stderr)
        return 1
    print(f"\nnightly run as of {as_of:%Y-%m-%d}:")
    print(report(engine, settings, as_of, database_url))
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())
          + f"; total {time.perf_counter() - started:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
