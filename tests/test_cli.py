"""The `recpipe` command and the README's main job, as a user runs them."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from recpipe.ingest import ingest


def recpipe(*args, env, timeout=600):
    return subprocess.run([sys.executable, "-m", "recpipe.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture
def cli_env(settings):
    return {**os.environ, "RECPIPE_DATABASE_URL": settings.database_url, "RECPIPE_HOME": str(settings.home),
            "RECPIPE_SOURCE_DIR": str(settings.source_dir)}


def test_run_then_runs_list(engine, settings, cli_env):
    ingest(engine, settings.source_dir)
    done = recpipe("run", "--as-of", "2000-12-01", "--epochs", "1", "--gate", '{"min_test_users": 1000}',
                   "--json", env=cli_env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    # Too few test users for the gate: the learned models rejected, the baselines still published.
    assert sorted(d["model"] for d in result["gate"]["decisions"] if not d["promoted"]) == [
        "autoint", "gru4rec", "twostage"]
    assert [p["model"] for p in result["publication"]["published"]] == ["popularity", "ease", "itemknn"]
    listed = recpipe("runs", "list", env=cli_env)
    assert listed.returncode == 0, listed.stderr
    assert "rejected" in listed.stdout and "promoted" in listed.stdout


def test_dry_run_publishes_nothing(engine, settings, cli_env):
    ingest(engine, settings.source_dir)
    done = recpipe("run", "--as-of", "2000-12-01", "--epochs", "1", "--dry-run", env=cli_env)
    assert done.returncode == 0, done.stderr[-3000:]
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM recommendations").scalar() == 0


def test_bad_json_override_is_a_usage_error(cli_env):
    done = recpipe("run", "--gate", "{not json", env=cli_env)
    assert done.returncode == 2 and "not JSON" in done.stderr


@pytest.mark.slow
def test_main_job_on_embedded_postgres_through_airflow(synthetic_dir, tmp_path):
    """The README's main job, minus the install: embedded PostgreSQL, real Airflow."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RECPIPE_", "AIRFLOW"))}
    env.update(RECPIPE_HOME=str(home), RECPIPE_SOURCE_DIR=str(synthetic_dir), RECPIPE_EPOCHS="1")
    try:
        done = subprocess.run([sys.executable, "-m", "recpipe.main"], capture_output=True, text=True, env=env,
                              timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "host=" in done.stdout  # the embedded server's socket, not a TCP database
        assert "nightly run as of" in done.stdout and "published lists: " in done.stdout
        assert "task train_autoint" in done.stdout and "popularity" in done.stdout
        assert "user_top10.sql" in done.stdout
        assert "night report: " in done.stdout and ".html" in done.stdout
    finally:
        subprocess.run([sys.executable, "-m", "recpipe.cli", "db", "stop"], env=env, capture_output=True)
