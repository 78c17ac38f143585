"""Ingest against a real PostgreSQL: counts, idempotence, intervals, quarantine."""
from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa

from recpipe import ingest as ingest_mod
from recpipe.ingest import ingest

UTC = timezone.utc
TABLE_DIGEST = (
    "SELECT count(*) AS n, md5(string_agg(concat_ws(':', user_id, movie_id, rating,"
    " extract(epoch FROM rated_at)::bigint, source_line), ',' ORDER BY user_id, movie_id)) AS digest FROM ratings"
)


def digest(engine):
    with engine.connect() as conn:
        return tuple(conn.exec_driver_sql(TABLE_DIGEST).one())


def count(engine, table):
    with engine.connect() as conn:
        return conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()


def test_ingest_all_then_again_inserts_nothing(engine, synthetic_dir):
    first = ingest(engine, synthetic_dir)
    lines = len((synthetic_dir / "ratings.dat").read_bytes().splitlines())
    assert (first.lines_read, first.inserted, first.duplicate, first.rejected) == (lines, lines, 0, 0)
    assert count(engine, "users") == 120 and count(engine, "movies") == 90
    before = digest(engine)
    second = ingest(engine, synthetic_dir)
    assert (second.inserted, second.duplicate, second.rejected) == (0, lines, 0)
    assert second.users_changed == 0 and second.movies_changed == 0
    assert digest(engine) == before
    with engine.connect() as conn:
        ledger = conn.exec_driver_sql(
            "SELECT lines_read, inserted, duplicate, rejected FROM ingest_batches ORDER BY batch_id"
        ).all()
    assert [tuple(r) for r in ledger] == [(lines, lines, 0, 0), (lines, 0, lines, 0)]


def test_consecutive_intervals_equal_one_full_ingest(engine, synthetic_dir):
    ingest(engine, synthetic_dir)
    full = digest(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE ratings, rejected_rows, ingest_batches CASCADE")
    cuts = [None, datetime(2000, 6, 1, tzinfo=UTC), datetime(2000, 9, 1, tzinfo=UTC), None]
    reports = [ingest(engine, synthetic_dir, a, b) for a, b in zip(cuts, cuts[1:])]
    assert all(r.inserted > 0 for r in reports)
    assert sum(r.inserted for r in reports) == full[0]
    # Re-running the middle interval changes nothing.
    again = ingest(engine, synthetic_dir, cuts[1], cuts[2])
    assert again.inserted == 0 and again.duplicate == reports[1].inserted
    assert digest(engine) == full


def test_empty_interval_is_refused(engine, synthetic_dir):
    when = datetime(2000, 6, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="empty interval"):
        ingest(engine, synthetic_dir, when, when)


BAD_LINES = {
    "": "empty_line",
    "1::2::3": "field_count",
    "1::2::3::978300760::9": "field_count",
    "x::2::3::978300760": "non_numeric_id",
    "1::y::3::978300760": "non_numeric_id",
    "1::3::9::978300760": "rating_out_of_range",
    "1::4::0::978300760": "rating_out_of_range",
    "1::5::3::yesterday": "bad_timestamp",
    "1::6::3::12": "bad_timestamp",
    "9999::2::3::978300760": "unknown_user",
    "1::9999::3::978300760": "unknown_movie",
}


@pytest.fixture
def corrupted_dir(synthetic_dir, tmp_path):
    """A copy of the generated data with every kind of bad line appended."""
    dest = tmp_path / "corrupt"
    shutil.copytree(synthetic_dir, dest)
    good = (synthetic_dir / "ratings.dat").read_bytes()
    first_user, first_movie, rating, ts = good.splitlines()[0].decode().split("::")
    other_rating = 1 if rating != "1" else 2
    pairs = {tuple(line.split(b"::")[:2]) for line in good.splitlines()}
    free_user, free_movie = next((u, m) for u in range(1, 121) for m in range(1, 91)
                                 if (str(u).encode(), str(m).encode()) not in pairs)
    extra = [line.encode() for line in BAD_LINES]
    extra += [
        b"1::7::3::978300760\xff\xfe",  # undecodable bytes
        f"{first_user}::{first_movie}::{rating}::{ts}".encode(),  # exact repeat: a duplicate
        f"{first_user}::{first_movie}::{other_rating}::{ts}".encode(),  # same key, other rating
        f"{free_user}::{free_movie}::4::978300760\r".encode(),  # CRLF line: fine
    ]
    (dest / "ratings.dat").write_bytes(good + b"\n".join(extra) + b"\n")
    return dest


def test_corrupted_file_reconciles_with_reason_codes(engine, corrupted_dir):
    report = ingest(engine, corrupted_dir)
    n_good = len((corrupted_dir / "ratings.dat").read_bytes().splitlines()) - len(BAD_LINES) - 4
    assert report.lines_read == n_good + len(BAD_LINES) + 4
    assert report.reconciles
    expected = {}
    for reason in BAD_LINES.values():
        expected[reason] = expected.get(reason, 0) + 1
    expected["undecodable"] = 1
    expected["duplicate_in_file"] = 1
    assert report.reasons == expected
    assert report.duplicate == 1  # the exact repeat is the stored rating, not a new one
    assert report.inserted == n_good + 1  # + the CRLF line
    with engine.connect() as conn:
        stored = dict(conn.exec_driver_sql("SELECT reason, count(*) FROM rejected_ratings GROUP BY reason").all())
        raw = conn.exec_driver_sql("SELECT raw_line FROM rejected_ratings WHERE reason = 'undecodable'").scalar_one()
    assert stored == expected
    assert raw == "1::7::3::978300760\\xff\\xfe"

    # A second run records nothing twice and still reconciles; the in-file repeat
    # now meets its stored twin.
    again = ingest(engine, corrupted_dir)
    expected_again = {**expected, "conflicts_stored": 1}
    del expected_again["duplicate_in_file"]
    assert again.inserted == 0 and again.reconciles and again.reasons == expected_again
    assert count(engine, "rejected_rows") == sum(expected.values())


def test_conflict_with_stored_rating_is_rejected(engine, synthetic_dir, tmp_path):
    ingest(engine, synthetic_dir)
    dest = tmp_path / "changed"
    shutil.copytree(synthetic_dir, dest)
    lines = (dest / "ratings.dat").read_text().splitlines()
    u, m, r, t = lines[0].split("::")
    lines[0] = f"{u}::{m}::{1 if r != '1' else 2}::{t}"
    (dest / "ratings.dat").write_text("\n".join(lines) + "\n")
    report = ingest(engine, dest)
    assert report.reasons == {"conflicts_stored": 1}
    assert report.duplicate == len(lines) - 1


def test_failure_leaves_nothing_half_written(engine, synthetic_dir, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ingest_mod, "_classify_and_insert", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ingest(engine, synthetic_dir)
    for table in ("users", "movies", "ratings", "ingest_batches", "rejected_rows"):
        assert count(engine, table) == 0, table


def test_bulk_path_keeps_foreign_keys(engine, synthetic_dir, monkeypatch):
    monkeypatch.setattr(ingest_mod, "BULK_INSERT_ROWS", 10)
    ingest(engine, synthetic_dir)
    with engine.connect() as conn:
        fks = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'ratings'::regclass AND contype = 'f'"
        ).scalar_one()
    assert fks == 3
    with pytest.raises(sa.exc.IntegrityError):
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO ratings VALUES (99999, 1, 3, now(), 1, 1)")


def run_cli(*args, env):
    return subprocess.run([sys.executable, "-m", "recpipe.cli", *args], capture_output=True, text=True, env=env)


def test_cli_missing_source_is_one_clear_line(tmp_path, database_url):
    import os

    env = {**os.environ, "RECPIPE_DATABASE_URL": database_url, "RECPIPE_SOURCE_DIR": str(tmp_path / "nope"),
           "RECPIPE_HOME": str(tmp_path / "home")}
    done = run_cli("ingest", "--all", env=env)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "does not exist" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_ingest_prints_reconciliation(engine, synthetic_dir, database_url, tmp_path):
    import os

    env = {**os.environ, "RECPIPE_DATABASE_URL": database_url, "RECPIPE_SOURCE_DIR": str(synthetic_dir),
           "RECPIPE_HOME": str(tmp_path / "home")}
    done = run_cli("ingest", "--start", "2000-01-01", "--end", "2000-07-01", env=env)
    assert done.returncode == 0, done.stderr
    assert "read " in done.stdout and "(reconciled)" in done.stdout


@pytest.mark.ml1m
def test_full_movielens_ingest(engine, ml1m_dir):
    cuts = [datetime(2000, 4, 25, tzinfo=UTC), datetime(2000, 6, 1, tzinfo=UTC), datetime(2001, 1, 1, tzinfo=UTC), None]
    reports = [ingest(engine, ml1m_dir, a, b) for a, b in zip(cuts, cuts[1:])]
    assert all(r.rejected == 0 and r.reconciles for r in reports)
    by_interval = digest(engine)
    assert by_interval[0] == 1_000_209
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(DISTINCT user_id), count(DISTINCT movie_id) FROM ratings").one() == (
            6040, 3706)
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE ratings, rejected_rows, ingest_batches CASCADE")
    full = ingest(engine, ml1m_dir)
    assert (full.inserted, full.rejected) == (1_000_209, 0)
    assert digest(engine) == by_interval
    assert ingest(engine, ml1m_dir).inserted == 0
