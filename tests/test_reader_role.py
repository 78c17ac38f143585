"""The analysts' role (recpipe_reader) cannot stall the pipeline or create objects (issue #10)."""
from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from recpipe import ingest as ingest_mod
from recpipe.ingest import ingest
from recpipe import locks
from recpipe.locks import LockTimeout


@pytest.fixture
def reader(engine):
    """A session of the test's server connection switched to recpipe_reader."""
    with engine.connect() as conn:
        conn.exec_driver_sql("SET ROLE recpipe_reader")
        yield conn
        conn.rollback()


@pytest.mark.parametrize("statement", [
    "SELECT name FROM pipeline_locks WHERE name = 'ingest' FOR UPDATE",
    "LOCK TABLE pipeline_locks IN ROW SHARE MODE",
    "CREATE TEMP TABLE scratch (x integer)",
    "SELECT lo_create(0)",
    "SELECT lo_creat(-1)",
    "SELECT lo_from_bytea(0, 'x')",
])
def test_reader_cannot_lock_the_pipeline_or_create_objects(reader, statement):
    with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
        reader.exec_driver_sql(statement)


def test_reader_holding_locks_does_not_stall_an_ingest(engine, synthetic_dir, database_url, monkeypatch, reader):
    # What stalled main: the ingest's advisory key, and an open transaction that read a
    # view over ratings (it blocks the bulk path's ALTER TABLE).
    reader.exec_driver_sql("SELECT pg_advisory_lock(%s)" % 0x7265_6369)
    reader.exec_driver_sql("SELECT count(*) FROM catalogue").scalar_one()
    monkeypatch.setattr(ingest_mod, "BULK_INSERT_ROWS", 10)
    monkeypatch.setattr(ingest_mod, "BULK_DDL_LOCK_TIMEOUT_S", 0.2)
    # A server-side limit, so that a regression fails here instead of hanging the suite.
    guarded = sa.create_engine(database_url, connect_args={"options": "-c lock_timeout=20s"})
    try:
        report = ingest(guarded, synthetic_dir)
    finally:
        guarded.dispose()
    assert report.inserted == report.lines_read > 0
    with engine.connect() as conn:  # the insert kept its foreign keys in place
        assert conn.exec_driver_sql(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'ratings'::regclass AND contype = 'f'"
        ).scalar_one() == 3


def test_lock_timeout_names_the_holder(engine, monkeypatch):
    monkeypatch.setattr(locks, "LOCK_TIMEOUT_S", 0.3)
    taken, release = threading.Event(), threading.Event()

    def hold():
        with engine.begin() as conn:
            conn.exec_driver_sql("SET application_name = 'holder-under-test'")
            locks.take_lock(conn, "ingest")
            taken.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(30)
        with engine.begin() as conn:
            with pytest.raises(LockTimeout, match=r"'ingest' not free after 0.3s: held by pid \d+ .*holder-under-test"):
                locks.take_lock(conn, "ingest")
    finally:
        release.set()
        holder.join()
    with engine.begin() as conn:  # free again once the holder ends
        locks.take_lock(conn, "ingest")
