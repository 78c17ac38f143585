"""Shared fixtures: a scratch PostgreSQL database per test session, generated source data.

The database server is RECPIPE_TEST_DATABASE_URL's (a server URL whose user may
CREATE DATABASE), or the system PostgreSQL at 127.0.0.1:5432 when it answers, or the
embedded PostgreSQL. A database named recpipe_test_<pid>_<random> is created for
the session and dropped at its end, so parallel runs never collide.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
import sqlalchemy as sa

from recpipe import db
from recpipe.config import Settings
from recpipe.ingest import ingest
from recpipe.synthetic import SyntheticSpec, write_movielens

ML1M_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-1m"
SYSTEM_PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def _server_url(tmp_root: Path) -> str:
    explicit = os.environ.get("RECPIPE_TEST_DATABASE_URL")
    if explicit:
        return explicit
    try:
        probe = sa.create_engine(SYSTEM_PG, connect_args={"connect_timeout": 3})
        with probe.connect():
            pass
        probe.dispose()
        return SYSTEM_PG
    except sa.exc.OperationalError:
        return db.embedded_database_url(tmp_root / "embedded")


@pytest.fixture(scope="session")
def database_url(tmp_path_factory) -> str:
    server = sa.engine.make_url(_server_url(tmp_path_factory.mktemp("pg")))
    name = f"recpipe_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = server.set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(scope="session")
def migrated_engine(database_url):
    engine = sa.create_engine(database_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


DATA_TABLES = [
    "data_checks", "alerts", "published_runs", "recommendations", "model_runs", "sessions", "session_builds",
    "artifacts", "rejected_rows", "ratings", "ingest_batches", "movies", "users",
]


@pytest.fixture
def engine(migrated_engine):
    """The session's migrated database, emptied before each test."""
    with migrated_engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {', '.join(DATA_TABLES)} RESTART IDENTITY CASCADE")
    return migrated_engine


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    return write_movielens(tmp_path_factory.mktemp("ml-synth"), SyntheticSpec())


@pytest.fixture
def settings(database_url, synthetic_dir, tmp_path) -> Settings:
    return Settings(database_url=database_url, home=tmp_path / "home", source_dir=synthetic_dir)


@pytest.fixture(scope="session")
def ml1m_dir() -> Path:
    if not (ML1M_DIR / "ratings.dat").is_file():
        pytest.skip(f"MovieLens-1M not found at {ML1M_DIR}")
    return ML1M_DIR


@pytest.fixture(scope="module")
def ingested(migrated_engine, database_url, synthetic_dir, tmp_path_factory):
    """(settings, engine) of an emptied database holding the generated data, for a module
    whose tests share one real night."""
    with migrated_engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {', '.join(DATA_TABLES)} RESTART IDENTITY CASCADE")
    settings = Settings(database_url=database_url, home=tmp_path_factory.mktemp("home"), source_dir=synthetic_dir)
    ingest(migrated_engine, synthetic_dir)
    return settings, migrated_engine
